#!/usr/bin/env bash
# Installs what the tests and the demo need, if missing: xcaddy (pinned),
# and from Debian: python3, ruby, php-cli, nodejs, openssl, curl, redis-server, wrk, and
# chromium with a font for the deliveries page's browser tests.
# Safe to run repeatedly; does nothing when all is present.
set -euo pipefail

XCADDY_VERSION=v0.4.5
GOBIN=$(go env GOPATH)/bin
if [ ! -x "$GOBIN/xcaddy" ] || ! "$GOBIN/xcaddy" version 2>/dev/null | grep -q "${XCADDY_VERSION#v}"; then
	echo "deps: installing xcaddy $XCADDY_VERSION" >&2
	go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"
fi

need=()
command -v python3 >/dev/null || need+=(python3)
command -v ruby >/dev/null || need+=(ruby)
command -v php >/dev/null || need+=(php-cli)
command -v node >/dev/null || need+=(nodejs)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ "${1:-}" = "--bench" ]; then
	command -v wrk >/dev/null || need+=(wrk)
fi
if [ ${#need[@]} -gt 0 ]; then
	echo "deps: installing ${need[*]}" >&2
	SUDO=""
	[ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
