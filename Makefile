# make run   - build Caddy with this module and run Caddyfile.example in
#              front of the demo upstream app (Python) on 127.0.0.1, with
#              the deliveries page; ports: make run PORT=8080 PAGE_PORT=8081
#              APP_PORT=9000 ADMIN_PORT=2019; state in DEMO_DIR (.demo)
# make app-down / app-up / send-events - drive the running demo from a
#              second terminal (scripts/demo.sh)
# make test  - install test dependencies, then run every test (the browser
#              tests of the deliveries page too), then fuzz each fuzz target
#              for FUZZTIME seconds
# make screenshot - regenerate docs/deliveries-page.png, the README's
#              picture of the deliveries page, in headless Chromium
GO ?= go
FUZZTIME ?= 20

# integration/browser is a module of its own (it needs a browser driver the
# plugin does not), so `go test ./...` does not reach it: it is run here.
BROWSER_DIR = integration/browser
# integration/teststorage is a module of its own too: test-only Caddy storage
# modules (a faulty file_system, Redis with caddy-storage-redis's semantics)
# built into bin/caddy-test, never into bin/caddy.
TESTSTORAGE_DIR = integration/teststorage

.PHONY: run app-down app-up send-events test caddy vet fmt-check fuzz browser-test screenshot

run: caddy
	scripts/run-demo.sh

app-down:
	@scripts/demo.sh down

app-up:
	@scripts/demo.sh up

send-events:
	@scripts/demo.sh events

caddy:
	scripts/build-caddy.sh

test: fmt-check vet
	scripts/deps.sh
	scripts/build-caddy.sh
	$(GO) test -tags fullsuite -count=1 -timeout 30m ./...
	cd $(BROWSER_DIR) && $(GO) test -count=1 -timeout 15m .
	scripts/fuzz.sh $(FUZZTIME)

browser-test: caddy
	scripts/deps.sh
	cd $(BROWSER_DIR) && $(GO) test -count=1 -timeout 15m -v .

screenshot: caddy
	scripts/deps.sh
	cd $(BROWSER_DIR) && $(GO) test -count=1 -run '^TestScreenshot$$' . -args -screenshot=$(CURDIR)/docs/deliveries-page.png

fuzz:
	scripts/fuzz.sh $(FUZZTIME)

# staticcheck (pinned) also finds code that nothing uses.
STATICCHECK = honnef.co/go/tools/cmd/staticcheck@v0.8.2

vet:
	$(GO) vet -tags fullsuite ./...
	$(GO) run $(STATICCHECK) -tags fullsuite ./...
	cd $(BROWSER_DIR) && $(GO) vet .
	cd $(TESTSTORAGE_DIR) && $(GO) vet .

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
