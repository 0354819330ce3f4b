#!/usr/bin/env bash
# Builds bin/caddy with this module from the working tree, using the pinned
# xcaddy and Caddy versions. Rebuilds only when the module's sources change
# (its non-test .go files, go.mod, go.sum and the embedded ui/ files).
#
#   scripts/build-caddy.sh        # bin/caddy: the gateway users build
#   scripts/build-caddy.sh test   # bin/caddy-test: the same, plus the test
#                                 # storage modules of integration/teststorage
set -euo pipefail
cd "$(dirname "$0")/.."

CADDY_VERSION=v2.11.9
MODULE=$(go list -m)
OUT=bin/caddy
WITH=(--with "$MODULE@v0.0.0=.")
EXTRA=()
if [ "${1:-}" = test ]; then
	OUT=bin/caddy-test
	WITH+=(--with "$MODULE/integration/teststorage@v0.0.0=./integration/teststorage")
	EXTRA=(integration/teststorage)
fi
STAMP=$OUT.stamp

# One build at a time: concurrent test packages may all ask for it.
mkdir -p bin
exec 9>bin/.build-lock
flock 9

# The page's files (ui/) are embedded, so they count as sources too, and
# so do the internal packages (internal/verify) the module is built from.
sum=$( (echo "$CADDY_VERSION"; cat go.mod go.sum; ls *.go | grep -v _test.go | sort | xargs cat
	find internal -name '*.go' ! -name '*_test.go' | LC_ALL=C sort | xargs cat; find ui -type f | LC_ALL=C sort | xargs cat
	for d in "${EXTRA[@]}"; do cat "$d/go.mod" "$d/go.sum"; ls "$d"/*.go | grep -v _test.go | sort | xargs cat; done) | sha256sum | cut -d' ' -f1)
if [ -x "$OUT" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$sum" ]; then
	exit 0
fi
build_start=$(date +%s)
scripts/deps.sh
echo "build-caddy: building $OUT (Caddy $CADDY_VERSION + $MODULE${EXTRA:+ + test storages})." >&2
echo "build-caddy: the first build on a machine takes up to 5 minutes on 2 cores (Go downloads and compiles about 700 packages; 280 s measured with cold caches); later builds take about 30 s." >&2
# @v0.0.0 makes xcaddy use a replace to this directory instead of asking
# the module proxy for an unpublished path. -v has go name each package it
# compiles, which progress() turns into a line every 50 packages; the
# other flags are xcaddy's defaults, which setting XCADDY_GO_BUILD_FLAGS
# replaces.
export XCADDY_GO_BUILD_FLAGS='-v -ldflags "-w -s" -trimpath -tags nobadger,nomysql,nopgx'
progress() {
	awk -v start="$(date +%s)" '
		/^[A-Za-z0-9._~\/-]+$/ && !/^go:/ {
			n++
			if (n % 50 == 0) { printf "build-caddy: %d packages compiled, %d s so far (now %s)\n", n, systime() - start, $0; fflush() }
			next
		}
		{ print; fflush() }'
}
"$(go env GOPATH)/bin/xcaddy" build "$CADDY_VERSION" --output "$OUT" "${WITH[@]}" 2>&1 | progress >&2
echo "build-caddy: $OUT built in $(($(date +%s) - build_start)) s" >&2
echo "$sum" > "$STAMP"
