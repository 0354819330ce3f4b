#!/usr/bin/env bash
# Side-by-side load harness for the history: two gateway processes of the
# same binary, each with one reready_verify + reverse_proxy site (B, replay
# off) in front of the same upstream, one without history (OFF) and one
# with `reready { history { bodies } }` (ON), both on file_system storage.
# They take turns being first in each round; the median per-round ratio
# ON/OFF of requests per second is what keeping the history and every
# body costs under load.
#
#   bench/load-history.sh [rounds] [seconds-per-round] [body-bytes]   # default 11 4 256
#
# Unlike bench/load.sh, whose wrk replays one signed request (one delivery
# id, so one body kept), each request here is a different delivery:
# python3 signs N distinct bodies (each its own MAC, so its own delivery id)
# and wrk's two threads send them in turn, so the ON gateway keeps a body
# per request as it would for real traffic. Ratios are also given
# speed-corrected by the upstream's CPU time per request, as in load.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

ROUNDS=${1:-11}
SECS=${2:-4}
SIZE=${3:-256}
N=${N:-60000}
SECRET=ssk_bench_5d2e8a71c9f04b36

scripts/deps.sh --bench
scripts/build-caddy.sh

start_work
UP=$(free_port); POFF=$(free_port); PON=$(free_port)
ADMIN_UP=$(free_port); ADMIN_OFF=$(free_port); ADMIN_ON=$(free_port)

cat >"$work/upstream.caddyfile" <<CF
{
	admin 127.0.0.1:$ADMIN_UP
	default_bind 127.0.0.1
}
http://127.0.0.1:$UP {
	respond "ok" 200
}
CF
gateway() { # $1 admin port, $2 site port, $3 storage dir, $4 global options
	cat <<CF
{
	admin 127.0.0.1:$1
	default_bind 127.0.0.1
	storage file_system $3
$4
}
http://127.0.0.1:$2 {
	reready_verify {
		secret $SECRET
		replay off
	}
	reverse_proxy 127.0.0.1:$UP
}
CF
}
gateway "$ADMIN_OFF" "$POFF" "$work/storage-off" "" >"$work/off.caddyfile"
gateway "$ADMIN_ON" "$PON" "$work/storage-on" $'\treready {\n\t\thistory {\n\t\t\tbodies\n\t\t}\n\t}' >"$work/on.caddyfile"

export XDG_DATA_HOME=$work/data XDG_CONFIG_HOME=$work/config
bin/caddy run --config "$work/upstream.caddyfile" --adapter caddyfile >"$work/upstream.log" 2>&1 &
UPPID=$!
pids+=($UPPID)
bin/caddy run --config "$work/off.caddyfile" --adapter caddyfile >"$work/off.log" 2>&1 &
pids+=($!)
bin/caddy run --config "$work/on.caddyfile" --adapter caddyfile >"$work/on.log" 2>&1 &
pids+=($!)
wait_ports $UP $POFF $PON

# N distinct signed deliveries, signed by python3's hmac (not the module's
# code), as a Lua table wrk loads; each thread starts at its own half.
python3 - "$SECRET" "$SIZE" "$N" >"$work/reqs.lua" <<'PY'
import hashlib, hmac, sys, time, uuid
secret, size, n = sys.argv[1].encode(), int(sys.argv[2]), int(sys.argv[3])
t = str(int(time.time()))
print("reqs = {")
for i in range(n):
    rid = str(uuid.UUID(int=i + 1))
    base = ('{"device_return_id":"%s","serial_number":null,"state":"complete","test":false,'
            '"ticket_url":null,"url":"https://www.reready.co/device_returns/%s","note":"' % (rid, rid))
    body = base + "x" * max(0, size - len(base) - 2) + '"}'
    mac = hmac.new(secret, (t + "." + body).encode(), hashlib.sha512).hexdigest()
    print('{"t=%s,v=%s",[==[%s]==]},' % (t, mac, body))
print("}")
PY
cat >"$work/many.lua" <<LUA
local threads, n = 0, 0
function setup(thread)
	thread:set("first", threads)
	threads = threads + 1
end
function init(args)
	dofile("$work/reqs.lua")
	n = #reqs
	i = (first * math.floor(n / 2)) % n
end
request = function()
	i = i % n + 1
	local r = reqs[i]
	return wrk.format("POST", "/", {["Content-Type"] = "application/json", ["X-ReReady-Signature-512"] = r[1]}, r[2])
end
local bad = 0
response = function(status) if status ~= 200 then bad = bad + 1 end end
done = function() if bad > 0 then io.stderr:write("non-200 answers: " .. bad .. "\n") end end
LUA

# Check once that both verify and forward.
sig=$(awk -F'"' 'NR==2 {print $2}' "$work/reqs.lua")
sed -n '2s/.*\[==\[\(.*\)\]==\].*/\1/p' "$work/reqs.lua" | tr -d '\n' >"$work/body.json"
check_forwards "$work/off.log $work/on.log" $POFF $PON


echo "load-history: ${ROUNDS} rounds of ${SECS}s each, ${SIZE}-byte bodies, $N distinct deliveries, wrk -t2 -c32, $(nproc) cores"
printf '%-5s %9s %9s %7s %7s\n' round OFF ON ON/OFF corr
raw=(); cor=()
run "$POFF" "$work/many.lua" >/dev/null # warm-up
run "$PON" "$work/many.lua" >/dev/null
for r in $(seq "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then
		read -r off uoff <<<"$(run "$POFF" "$work/many.lua")"; read -r on uon <<<"$(run "$PON" "$work/many.lua")"
	else
		read -r on uon <<<"$(run "$PON" "$work/many.lua")"; read -r off uoff <<<"$(run "$POFF" "$work/many.lua")"
	fi
	x=$(ratio "$off" "$on"); y=$(corr "$off" "$uoff" "$on" "$uon")
	raw+=("$x"); cor+=("$y")
	printf '%-5s %9s %9s %7s %7s\n' "$r" "$off" "$on" "$x" "$y"
done
sleep 3 # a last flush
bodies="$work/storage-on/reready_verify/history/bodies"
objects=$(find "$bodies" -type f | wc -l)
kept=$(find "$bodies" -type f -exec cat {} + | { grep -o '"delivery_id"' || true; } | wc -l)
m() { printf '%s\n' "$@" | median; }
echo "load-history: bodies kept $kept in $objects storage objects"
echo "load-history: median ON/OFF (history { bodies } on vs off) = $(m "${raw[@]}"), speed-corrected $(m "${cor[@]}")   (target >= 0.98)"
