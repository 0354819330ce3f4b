#!/usr/bin/env bash
# `make run`: builds bin/caddy with this module, starts the demo upstream
# (integration/apps/python/app.py) and runs Caddyfile.example in front of it,
# in the foreground, with the deliveries page. Ctrl-C stops both.
#
# Ports (all on 127.0.0.1; change any with `make run PORT=... ` etc.):
#   PORT=8080        the webhook gateway (http://127.0.0.1:PORT/webhooks/reready)
#   PAGE_PORT=8081   the deliveries page (basic_auth, credentials printed)
#   APP_PORT=9000    the demo app behind the gateway
#   ADMIN_PORT=2019  Caddy's admin endpoint (the CLI and `caddy stop` use it)
# State: DEMO_DIR (default .demo in the checkout) holds Caddy's storage (the
# queue), its config directory, the page's demo password and demo.env, which
# scripts/demo.sh (make app-down, app-up, send-events) reads. rm -rf it to
# start clean. REREADY_SIGNING_SECRET defaults to a demo secret when unset.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_SECRET=ssk_demo_0123456789abcdef
PORT=${PORT:-8080}
PAGE_PORT=${PAGE_PORT:-8081}
APP_PORT=${APP_PORT:-9000}
ADMIN_PORT=${ADMIN_PORT:-2019}
DEMO_DIR=${DEMO_DIR:-.demo}
for v in PORT PAGE_PORT APP_PORT ADMIN_PORT; do
	p=${!v}
	if ! [[ $p =~ ^[0-9]+$ ]] || [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then
		echo "run-demo: $v=$p is not a port number (1-65535)" >&2
		exit 2
	fi
done
if [ "$(printf '%s\n' "$PORT" "$PAGE_PORT" "$APP_PORT" "$ADMIN_PORT" | sort -u | wc -l)" -ne 4 ]; then
	echo "run-demo: PORT=$PORT PAGE_PORT=$PAGE_PORT APP_PORT=$APP_PORT ADMIN_PORT=$ADMIN_PORT: each needs a port of its own" >&2
	exit 2
fi

scripts/build-caddy.sh
command -v python3 >/dev/null || scripts/deps.sh

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for v in PORT PAGE_PORT APP_PORT ADMIN_PORT; do
	if listening "${!v}"; then
		echo "run-demo: 127.0.0.1:${!v} ($v) is already in use; stop what holds it, or pick another: make run $v=<port>" >&2
		exit 1
	fi
done

mkdir -p "$DEMO_DIR"
DEMO_DIR=$(cd "$DEMO_DIR" && pwd)
# Caddy keeps its storage (the queue) under XDG_DATA_HOME/caddy and its
# config autosave under XDG_CONFIG_HOME/caddy: both inside DEMO_DIR, not
# in your home directory.
export XDG_DATA_HOME=$DEMO_DIR/data XDG_CONFIG_HOME=$DEMO_DIR/config
export REREADY_PORT=$PORT REREADY_PAGE_PORT=$PAGE_PORT REREADY_APP_PORT=$APP_PORT REREADY_ADMIN_PORT=$ADMIN_PORT

send_secret=
if [ -z "${REREADY_SIGNING_SECRET:-}" ]; then
	export REREADY_SIGNING_SECRET=$DEMO_SECRET
	send_secret=$DEMO_SECRET
	secret_note="Signing secret: the DEMO secret $DEMO_SECRET (REREADY_SIGNING_SECRET is unset).
  Never use it for real deliveries: set REREADY_SIGNING_SECRET to your webhook's ssk_ key."
	export_line="export REREADY_SIGNING_SECRET=$DEMO_SECRET"
else
	secret_note="Signing secret: REREADY_SIGNING_SECRET from the environment."
	export_line="export REREADY_SIGNING_SECRET=ssk_...   # the same secret as this gateway's"
fi

# The page's credentials: made once per DEMO_DIR and printed below, unless
# REREADY_UI_HASH (and REREADY_UI_USER) come from the environment.
if [ -z "${REREADY_UI_HASH:-}" ]; then
	export REREADY_UI_USER=demo
	if [ ! -s "$DEMO_DIR/page-password" ]; then
		(umask 077; head -c 12 /dev/urandom | base64 | tr -d '/+=' > "$DEMO_DIR/page-password")
		rm -f "$DEMO_DIR/page-password.hash"
	fi
	page_password=$(cat "$DEMO_DIR/page-password")
	if [ ! -s "$DEMO_DIR/page-password.hash" ]; then
		bin/caddy hash-password --plaintext "$page_password" > "$DEMO_DIR/page-password.hash"
	fi
	export REREADY_UI_HASH
	REREADY_UI_HASH=$(cat "$DEMO_DIR/page-password.hash")
	page_login="user $REREADY_UI_USER, password $page_password (kept in $DEMO_DIR/page-password)"
else
	export REREADY_UI_USER=${REREADY_UI_USER:-ops}
	page_login="user $REREADY_UI_USER and the password of REREADY_UI_HASH"
fi

url=http://127.0.0.1:$PORT/webhooks/reready
cat > "$DEMO_DIR/demo.env" <<EOF
# Written by scripts/run-demo.sh for scripts/demo.sh; rewritten on every make run.
PORT=$PORT
PAGE_PORT=$PAGE_PORT
APP_PORT=$APP_PORT
ADMIN_PORT=$ADMIN_PORT
URL=$url
SEND_SECRET=$send_secret
EOF

DEMO_CONTROL=1 PORT=$APP_PORT python3 integration/apps/python/app.py &
app_pid=$!
trap 'kill "$app_pid" 2>/dev/null || true; wait "$app_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
	listening "$APP_PORT" && break
	kill -0 "$app_pid" 2>/dev/null || { echo "run-demo: the demo app exited" >&2; exit 1; }
	sleep 0.1
done
listening "$APP_PORT" || { echo "run-demo: the demo app is not listening on 127.0.0.1:$APP_PORT" >&2; exit 1; }

admin=localhost:$ADMIN_PORT
cat <<EOF

ReReady webhook gateway  $url  ->  demo app on 127.0.0.1:$APP_PORT
Deliveries page          http://127.0.0.1:$PAGE_PORT/
                         $page_login
Admin endpoint           $admin (bin/caddy reready ... --address $admin)
State                    $DEMO_DIR (Caddy's storage with the queue, the page password,
                         caddy.log); rm -rf it to start clean
$secret_note

Try it from another terminal in this directory; the demo app prints here what it receives:

  make send-events    # 3 returns x 4 states, each return's in order: the app prints all 12
  make app-down       # the app now answers 503 to every webhook
  make send-events    # the gateway answers 202 and queues them: see the page, or
                      #   bin/caddy reready queue --address $admin
  make app-up         # within seconds the queue drains: the same events, each return's in order
  bin/caddy reready deliveries --address $admin    # what the gateway saw and the app answered
  bin/caddy reready pause --address $admin         # hold every delivery in the queue (202) ...
  bin/caddy reready resume --address $admin        # ... and let them go, each return's in order
  bin/caddy reready replay --since 10m --address $admin   # send the last 10 minutes again (asks first)

The page shows all of it: click a delivery id for its body and headers, Replay, Pause.

One signed event by hand:

  $export_line
  bin/caddy reready send --url $url --state complete

or with curl and openssl instead of bin/caddy reready send:

  body='{"device_return_id":"e025d043-c41d-4167-8bd3-24cc66345696","serial_number":null,"state":"complete","test":false,"ticket_url":null,"url":"https://www.reready.co/device_returns/e025d043-c41d-4167-8bd3-24cc66345696"}'
  t=\$(date +%s); v=\$(printf '%s.%s' "\$t" "\$body" | openssl dgst -sha512 -hmac "\$REREADY_SIGNING_SECRET" -r | cut -d' ' -f1)
  curl -i -H 'Content-Type: application/json' -H "X-ReReady-Signature-512: t=\$t,v=\$v" --data-binary "\$body" $url

Test events (--test, or "test":true) are answered 202 by Caddy and never reach the app.
Ctrl-C stops the gateway and the demo app. Caddy's log (below, without the access
log) is kept whole in $DEMO_DIR/caddy.log.

EOF

# Caddy's whole log goes to DEMO_DIR/caddy.log; here, everything but its
# access log and the admin API's request lines, so the demo app's lines
# stand out.
bin/caddy run --config Caddyfile.example --adapter caddyfile 2>&1 |
	tee "$DEMO_DIR/caddy.log" | grep --line-buffered -v -e '"logger":"http.log.access' -e '"logger":"admin.api","msg":"received request"' >&2
