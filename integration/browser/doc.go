// Package browser drives the deliveries page (reready_ui) in headless
// Chromium against a real bin/caddy, built by scripts/build-caddy.sh.
//
// It is a module of its own so that the plugin's go.mod does not carry the
// browser driver; `go test ./...` at the root does not descend into it, so
// `make test` runs it explicitly.
package browser
