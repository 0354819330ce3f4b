#!/usr/bin/env bash
# Side-by-side load harness: Caddy's reverse_proxy alone (A) against
# reready_verify + reverse_proxy (B), same binary, same process, same
# upstream, alternating A B A B, and the median per-round ratio B/A of
# requests per second.
#
#   bench/load.sh [rounds] [seconds-per-round] [body-bytes]   # default 5 4 256
#
# B runs with `replay off`: wrk replays one pre-signed request, which replay
# suppression would (rightly) answer without forwarding. A's client sends
# the same X-ReReady-* headers B's gateway adds (the delivery id included),
# so both proxies forward the same request and the ratio is the cost of
# verification alone ("verify ratio"). A second ratio, with A's client sending only the signature
# header, includes the cost of forwarding the added headers ("header ratio").
# C is B with `queue` on (store-and-forward, in a file_system storage): the
# app is up, so nothing is queued, and C/B ("queue ratio") is what the queue
# costs a healthy gateway (a storage lookup of the return's line per
# delivery, and staging the app's answer headers).
# The request is signed with openssl, not with the module's code.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-5}
SECS=${2:-4}
SIZE=${3:-256}
SECRET=ssk_bench_5d2e8a71c9f04b36

scripts/deps.sh --bench
scripts/build-caddy.sh

work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); PA=$(free_port); PB=$(free_port); PC=$(free_port); ADMIN=$(free_port); ADMIN_UP=$(free_port)

cat >"$work/upstream.caddyfile" <<CF
{
	admin 127.0.0.1:$ADMIN_UP
	default_bind 127.0.0.1
}
http://127.0.0.1:$UP {
	respond "ok" 200
}
CF
cat >"$work/gateway.caddyfile" <<CF
{
	admin 127.0.0.1:$ADMIN
	default_bind 127.0.0.1
	storage file_system $work/storage
}
http://127.0.0.1:$PA {
	reverse_proxy 127.0.0.1:$UP
}
http://127.0.0.1:$PB {
	reready_verify {
		secret $SECRET
		replay off
	}
	reverse_proxy 127.0.0.1:$UP
}
http://127.0.0.1:$PC {
	reready_verify {
		secret $SECRET
		replay off
		queue
	}
	reverse_proxy 127.0.0.1:$UP
}
CF
bin/caddy run --config "$work/upstream.caddyfile" --adapter caddyfile >"$work/upstream.log" 2>&1 &
pids+=($!)
bin/caddy run --config "$work/gateway.caddyfile" --adapter caddyfile >"$work/gateway.log" 2>&1 &
pids+=($!)
for port in $UP $PA $PB $PC; do
	for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done

# A vendor-shaped body padded to SIZE bytes, signed by openssl.
id=e025d043-c41d-4167-8bd3-24cc66345696
base="{\"device_return_id\":\"$id\",\"serial_number\":null,\"state\":\"complete\",\"test\":false,\"ticket_url\":null,\"url\":\"https://www.reready.co/device_returns/$id\",\"note\":\""
pad=$((SIZE - ${#base} - 2)); [ $pad -lt 0 ] && pad=0
body="$base$(head -c $pad /dev/zero | tr '\0' x)\"}"
printf '%s' "$body" >"$work/body.json"
t=$(date +%s)
mac=$( (printf '%s.' "$t"; cat "$work/body.json") | openssl dgst -sha512 -hmac "$SECRET" -r | cut -d' ' -f1)
sig="t=$t,v=$mac"

# Check once that B and C verify and forward (200 from the upstream).
for port in $PB $PC; do
	code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Content-Type: application/json" \
		-H "X-ReReady-Signature-512: $sig" --data-binary @"$work/body.json" "http://127.0.0.1:$port/")
	if [ "$code" != 200 ]; then
		echo "load: gateway on port $port answered $code to a valid request" >&2
		cat "$work/gateway.log" >&2
		exit 1
	fi
done

lua() { # $1 = with the headers B adds (1) or not (0)
	cat <<LUA
wrk.method = "POST"
local f = io.open("$work/body.json", "rb"); wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-ReReady-Signature-512"] = "$sig"
if $1 == 1 then
	wrk.headers["X-ReReady-State"] = "complete"
	wrk.headers["X-ReReady-Device-Return-Id"] = "$id"
	wrk.headers["X-ReReady-Test"] = "false"
	wrk.headers["X-ReReady-Url"] = "https://www.reready.co/device_returns/$id"
	wrk.headers["X-ReReady-Timestamp"] = "$t"
	wrk.headers["X-ReReady-Verified"] = "hmac"
	wrk.headers["X-ReReady-Delivery-Id"] = "$t-0123456789abcdef0123456789abcdef"
end
local bad = 0
response = function(status) if status ~= 200 then bad = bad + 1 end end
done = function() if bad > 0 then io.stderr:write("non-200 answers: " .. bad .. "\n") end end
LUA
}
lua 1 >"$work/same.lua"
lua 0 >"$work/plain.lua"

rps() { # $1 port, $2 script
	out=$(wrk -t2 -c32 -d"${SECS}s" -s "$2" "http://127.0.0.1:$1/" 2>&1)
	if grep -q "non-200" <<<"$out"; then echo "load: $out" >&2; exit 1; fi
	awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "load: ${ROUNDS} rounds of ${SECS}s each, ${SIZE}-byte body, wrk -t2 -c32, replay off, $(nproc) cores"
printf '%-6s %12s %12s %12s %12s %8s %8s %8s\n' round A-same A-plain B C B/A-same B/A-plain C/B
verify=(); header=(); queue=()
rps "$PA" "$work/same.lua" >/dev/null # warm-up
rps "$PB" "$work/plain.lua" >/dev/null
rps "$PC" "$work/plain.lua" >/dev/null
for r in $(seq "$ROUNDS"); do
	# C and B swap places every round, so neither always runs second.
	if [ $((r % 2)) = 1 ]; then
		a=$(rps "$PA" "$work/same.lua"); b=$(rps "$PB" "$work/plain.lua"); c=$(rps "$PC" "$work/plain.lua")
	else
		a=$(rps "$PA" "$work/same.lua"); c=$(rps "$PC" "$work/plain.lua"); b=$(rps "$PB" "$work/plain.lua")
	fi
	ap=$(rps "$PA" "$work/plain.lua")
	v=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", b/a}')
	hh=$(awk -v a="$ap" -v b="$b" 'BEGIN {printf "%.3f", b/a}')
	q=$(awk -v b="$b" -v c="$c" 'BEGIN {printf "%.3f", c/b}')
	verify+=("$v"); header+=("$hh"); queue+=("$q")
	printf '%-6s %12s %12s %12s %12s %8s %8s %8s\n' "$r" "$a" "$ap" "$b" "$c" "$v" "$hh" "$q"
done
if [ -n "$(find "$work/storage" -path '*reready_verify/queue/items/*' -type f 2>/dev/null)" ]; then
	echo "load: C queued deliveries although the app was up" >&2
	exit 1
fi
mv=$(printf '%s\n' "${verify[@]}" | median)
mh=$(printf '%s\n' "${header[@]}" | median)
mq=$(printf '%s\n' "${queue[@]}" | median)
echo "load: median verify ratio B/A (A sends B's headers) = $mv   (target >= 0.98)"
echo "load: median header ratio B/A (A sends only the signature) = $mh"
echo "load: median queue ratio C/B (queue on vs off, app up) = $mq   (target >= 0.97)"
