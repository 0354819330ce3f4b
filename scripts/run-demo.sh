#!/usr/bin/env bash
# `make run`: builds bin/caddy with this module, starts the demo upstream
# (integration/apps/python/app.py) on 127.0.0.1:9000 and runs
# Caddyfile.example in front of it on http://127.0.0.1:8080, in the
# foreground. Ctrl-C stops both. REREADY_SIGNING_SECRET defaults to a demo
# secret when unset.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_SECRET=ssk_demo_0123456789abcdef
APP_PORT=9000 # Caddyfile.example: reverse_proxy ... 127.0.0.1:9000
URL=http://127.0.0.1:8080/webhooks/reready

scripts/build-caddy.sh
command -v python3 >/dev/null || scripts/deps.sh

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$APP_PORT" 8080 2019; do
	if listening "$port"; then
		echo "run-demo: 127.0.0.1:$port is already in use (Caddyfile.example needs 8080 and 2019, the demo app $APP_PORT); stop what holds it and retry" >&2
		exit 1
	fi
done

if [ -z "${REREADY_SIGNING_SECRET:-}" ]; then
	export REREADY_SIGNING_SECRET=$DEMO_SECRET
	secret_note="REREADY_SIGNING_SECRET is unset, so this gateway uses the DEMO secret $DEMO_SECRET.
Never use it for real deliveries: set REREADY_SIGNING_SECRET to your webhook's ssk_ key."
	export_line="export REREADY_SIGNING_SECRET=$DEMO_SECRET"
else
	secret_note="Using REREADY_SIGNING_SECRET from the environment."
	export_line="export REREADY_SIGNING_SECRET=ssk_...   # the same secret as this gateway's"
fi

PORT=$APP_PORT python3 integration/apps/python/app.py &
app_pid=$!
trap 'kill "$app_pid" 2>/dev/null || true; wait "$app_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
	listening "$APP_PORT" && break
	kill -0 "$app_pid" 2>/dev/null || { echo "run-demo: the demo app exited" >&2; exit 1; }
	sleep 0.1
done
listening "$APP_PORT" || { echo "run-demo: the demo app is not listening on 127.0.0.1:$APP_PORT" >&2; exit 1; }

cat <<EOF

ReReady webhook gateway: $URL -> demo app on 127.0.0.1:$APP_PORT
$secret_note

Send a signed event from another terminal; the demo app prints it here:

  $export_line
  bin/caddy reready send --url $URL --state complete

or with curl and openssl instead of bin/caddy reready send:

  body='{"device_return_id":"e025d043-c41d-4167-8bd3-24cc66345696","serial_number":null,"state":"complete","test":false,"ticket_url":null,"url":"https://www.reready.co/device_returns/e025d043-c41d-4167-8bd3-24cc66345696"}'
  t=\$(date +%s); v=\$(printf '%s.%s' "\$t" "\$body" | openssl dgst -sha512 -hmac "\$REREADY_SIGNING_SECRET" -r | cut -d' ' -f1)
  curl -i -H 'Content-Type: application/json' -H "X-ReReady-Signature-512: t=\$t,v=\$v" --data-binary "\$body" $URL

Test events (--test, or "test":true) are answered 202 by Caddy and never reach the app.
Ctrl-C stops the gateway and the demo app.

EOF

bin/caddy run --config Caddyfile.example --adapter caddyfile
