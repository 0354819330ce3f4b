# make run   - build Caddy with this module and run Caddyfile.example in
#              front of the demo upstream app (Python) on 127.0.0.1
# make test  - install test dependencies, then run every test, then fuzz
#              each fuzz target for FUZZTIME seconds
GO ?= go
FUZZTIME ?= 20

.PHONY: run test caddy vet fmt-check fuzz

run: caddy
	scripts/run-demo.sh

caddy:
	scripts/build-caddy.sh

test: fmt-check vet
	scripts/deps.sh
	scripts/build-caddy.sh
	$(GO) test -count=1 -timeout 30m ./...
	scripts/fuzz.sh $(FUZZTIME)

fuzz:
	scripts/fuzz.sh $(FUZZTIME)

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
