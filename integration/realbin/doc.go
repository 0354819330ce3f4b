//go:build fullsuite

// Package realbin tests the reready_verify module end to end on a real
// bin/caddy built by scripts/build-caddy.sh (xcaddy, pinned Caddy, module
// from the working tree), in front of the example upstream apps in
// integration/apps (Python, Node, PHP), with requests signed by the
// independent signers in integration/signers (Ruby, openssl, Python).
//
// Every scenario asserts what the upstream app recorded, or that it recorded
// nothing. The package has only tests, behind the build tag fullsuite, so
// `go test ./...` alone runs only the fast suites; run them with
//
//	go test -tags fullsuite ./integration/realbin/
//
// (make test does). They need python3, node, php, ruby, openssl, curl and
// redis-server (scripts/deps.sh installs them) and fail, rather than skip,
// when one is missing.
package realbin
