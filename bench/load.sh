#!/usr/bin/env bash
# Side-by-side load harness: Caddy's reverse_proxy alone (A) against
# reready_verify + reverse_proxy (B), same binary, same process, same
# upstream, in rounds, and the median per-round ratio B/A of requests per
# second.
#
#   bench/load.sh [rounds] [seconds-per-round] [body-bytes]   # default 11 4 256
#   (the history's cost under load: bench/load-history.sh)
#
# B runs with `replay off`: wrk replays one pre-signed request, which replay
# suppression would (rightly) answer without forwarding. A's client sends
# the same X-ReReady-* headers B's gateway adds (the delivery id included),
# so both proxies forward the same request and the ratio is the cost of
# verification alone ("verify ratio"). A second ratio, with A's client
# sending only the signature header, includes the cost of forwarding the
# added headers ("header ratio").
# C is B with `queue` on (store-and-forward, in a file_system storage): the
# app is up, so nothing is queued, and C/B ("queue ratio") is what the queue
# costs a healthy gateway (a storage lookup of the return's line per
# delivery). D is C on Redis (bin/caddy-test's reready_test_redis storage,
# a redis-server of its own), in a second gateway process: D/B is the queue
# ratio on Redis (a network round trip per delivery), reported, not judged.
#
# On a shared machine the speed drifts by ±10% between runs of a few
# seconds, which swamps a 1-2% cost. So A, B, C and D take turns being
# first in a round, and every ratio is also given speed-corrected: the
# upstream does the same work for every request in every run, so its CPU
# time per request measures the machine's speed during that run, and
# rps x upstream-CPU-per-request is the throughput at a common speed
# (columns "corr").
# The request is signed with openssl, not with the module's code.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

ROUNDS=${1:-11}
SECS=${2:-4}
SIZE=${3:-256}
SECRET=ssk_bench_5d2e8a71c9f04b36

scripts/deps.sh --bench
scripts/build-caddy.sh
scripts/build-caddy.sh test

start_work
UP=$(free_port); PA=$(free_port); PB=$(free_port); PC=$(free_port); PD=$(free_port)
ADMIN=$(free_port); ADMIN_UP=$(free_port); ADMIN_D=$(free_port); REDIS=$(free_port)

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
$(abc_sites "$PA" "$PB" "$PC")
CF
cat >"$work/redis.caddyfile" <<CF
{
	admin 127.0.0.1:$ADMIN_D
	default_bind 127.0.0.1
	storage reready_test_redis {
		address 127.0.0.1:$REDIS
	}
}
http://127.0.0.1:$PD {
	reready_verify {
		secret $SECRET
		replay off
		queue
	}
	reverse_proxy 127.0.0.1:$UP
}
CF
export XDG_DATA_HOME=$work/data XDG_CONFIG_HOME=$work/config
redis-server --port "$REDIS" --bind 127.0.0.1 --dir "$work" --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
bin/caddy run --config "$work/upstream.caddyfile" --adapter caddyfile >"$work/upstream.log" 2>&1 &
UPPID=$!
pids+=($UPPID)
bin/caddy run --config "$work/gateway.caddyfile" --adapter caddyfile >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_ports $REDIS
bin/caddy-test run --config "$work/redis.caddyfile" --adapter caddyfile >"$work/redis-gateway.log" 2>&1 &
pids+=($!)
wait_ports $UP $PA $PB $PC $PD

signed_body

# Check once that B, C and D verify and forward (200 from the upstream).
check_forwards "$work/gateway.log $work/redis-gateway.log" $PB $PC $PD

wrk_scripts


echo "load: ${ROUNDS} rounds of ${SECS}s each, ${SIZE}-byte body, wrk -t2 -c32, replay off, $(nproc) cores"
printf '%-5s %9s %9s %9s %9s %9s %7s %7s %7s %7s %7s %7s %7s\n' round A-same A-plain B C D \
	B/A corr B/A-pl C/B corr D/B corr
verify=(); verifyc=(); header=(); queue=(); queuec=(); redis=(); redisc=()
run "$PA" "$work/same.lua" >/dev/null # warm-up
run "$PB" "$work/plain.lua" >/dev/null
run "$PC" "$work/plain.lua" >/dev/null
run "$PD" "$work/plain.lua" >/dev/null
for r in $(seq "$ROUNDS"); do
	# A, B, C and D take turns being first.
	order=(a b c d)
	k=$(((r - 1) % 4))
	order=("${order[@]:$k}" "${order[@]:0:$k}")
	for v in "${order[@]}"; do
		case $v in
		a) read -r a ua <<<"$(run "$PA" "$work/same.lua")" ;;
		b) read -r b ub <<<"$(run "$PB" "$work/plain.lua")" ;;
		c) read -r c uc <<<"$(run "$PC" "$work/plain.lua")" ;;
		d) read -r d ud <<<"$(run "$PD" "$work/plain.lua")" ;;
		esac
	done
	read -r ap uap <<<"$(run "$PA" "$work/plain.lua")"
	v=$(ratio "$a" "$b"); vc=$(corr "$a" "$ua" "$b" "$ub")
	hh=$(ratio "$ap" "$b")
	q=$(ratio "$b" "$c"); qc=$(corr "$b" "$ub" "$c" "$uc")
	dq=$(ratio "$b" "$d"); dqc=$(corr "$b" "$ub" "$d" "$ud")
	verify+=("$v"); verifyc+=("$vc"); header+=("$hh"); queue+=("$q"); queuec+=("$qc"); redis+=("$dq"); redisc+=("$dqc")
	printf '%-5s %9s %9s %9s %9s %9s %7s %7s %7s %7s %7s %7s %7s\n' "$r" "$a" "$ap" "$b" "$c" "$d" \
		"$v" "$vc" "$hh" "$q" "$qc" "$dq" "$dqc"
done
if [ -n "$(find "$work/storage" -path '*reready_verify/queue/items/*' -type f 2>/dev/null)" ]; then
	echo "load: C queued deliveries although the app was up" >&2
	exit 1
fi
m() { printf '%s\n' "$@" | median; }
echo "load: median verify ratio B/A (A sends B's headers) = $(m "${verify[@]}"), speed-corrected $(m "${verifyc[@]}")   (target >= 0.99)"
echo "load: median header ratio B/A (A sends only the signature) = $(m "${header[@]}")"
echo "load: median queue ratio C/B (queue on vs off, file_system, app up) = $(m "${queue[@]}"), speed-corrected $(m "${queuec[@]}")"
echo "load: median queue ratio D/B (queue on vs off, Redis, app up) = $(m "${redis[@]}"), speed-corrected $(m "${redisc[@]}")   (a figure, not a target)"
