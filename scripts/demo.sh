#!/usr/bin/env bash
# Drives the `make run` demo from a second terminal:
#
#   scripts/demo.sh down     # make app-down: the demo app answers 503 to every webhook
#   scripts/demo.sh up       # make app-up: it answers 200 again
#   scripts/demo.sh events   # make send-events: 3 returns x 4 states, each return's in order
#
# It reads the ports and URL from DEMO_DIR/demo.env (default .demo), which
# `make run` writes. With REREADY_SIGNING_SECRET set, events are signed with
# it; else with the demo secret, when the demo uses it.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR=${DEMO_DIR:-.demo}
env_file=$DEMO_DIR/demo.env
if [ ! -f "$env_file" ]; then
	echo "demo: $env_file not found: start the demo first with make run (in another terminal)" >&2
	exit 1
fi
# shellcheck disable=SC1090
. "$env_file"

control() {
	python3 - "$1" <<'EOF' || { echo "demo: the demo app on 127.0.0.1:$APP_PORT did not answer; is make run still running?" >&2; exit 1; }
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b"", method="POST"), timeout=5).read()
EOF
}

case "${1:-}" in
down)
	control "http://127.0.0.1:$APP_PORT/demo/down"
	echo "the demo app answers 503 now; make send-events, then watch the queue fill:"
	echo "  http://127.0.0.1:$PAGE_PORT/   or   bin/caddy reready queue --address localhost:$ADMIN_PORT"
	;;
up)
	control "http://127.0.0.1:$APP_PORT/demo/up"
	echo "the demo app answers 200 again; the gateway redelivers the queue within seconds, each return's events in order"
	;;
events)
	secret=${REREADY_SIGNING_SECRET:-$SEND_SECRET}
	if [ -z "$secret" ]; then
		echo "demo: the gateway runs with your REREADY_SIGNING_SECRET: export the same one here" >&2
		exit 1
	fi
	run=$(date +%H%M%S)
	fail=0
	for state in pending_outbound_shipment pending_return_shipment pending_return_shipment_delivery complete; do
		for n in 1 2 3; do
			id=demo-$run-$n
			# send prints the request, then the status line and the answer.
			if out=$(REREADY_SIGNING_SECRET=$secret bin/caddy reready send --url "$URL" --state "$state" --device-return-id "$id" 2>&1); then
				answer=$(sed -n '/^HTTP\//{s/^HTTP\/[0-9.]* //;N;s/\n/: /;p;q}' <<<"$out")
				printf '%-18s %-33s %s\n' "$id" "$state" "${answer:-$out}"
			else
				printf '%-18s %-33s %s\n' "$id" "$state" "$(tr '\n' ' ' <<<"$out")"
				fail=1
			fi
		done
	done
	exit $fail
	;;
*)
	echo "usage: scripts/demo.sh down|up|events (make app-down, app-up, send-events)" >&2
	exit 2
	;;
esac
