#!/usr/bin/env bash
# Before/after load harness: two gateway binaries (say, built from a base
# commit and from the working tree) measured in the same rounds, so a
# change's effect is read as a ratio of one run rather than across runs on
# a machine whose speed drifts.
#
#   bench/load-ab.sh OLD-BIN NEW-BIN [rounds] [seconds-per-round] [body-bytes]
#
# Each binary runs one gateway process with load.sh's three sites: A
# (reverse_proxy alone; its client sends the X-ReReady-* headers B adds),
# B (reready_verify + reverse_proxy, replay off) and C (B with queue on,
# file_system storage, app up). One upstream serves both. In every round
# the six runs take turns being first. Reported per binary: B/A and C/A
# (verify and queue-on ratios against a plain proxy in the same process),
# C/B; and across binaries, new/old for A, B and C. Ratios are given raw
# and speed-corrected as load.sh does (rps x upstream CPU per request).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

OLD=$(realpath "$1")
NEW=$(realpath "$2")
ROUNDS=${3:-11}
SECS=${4:-4}
SIZE=${5:-256}
SECRET=ssk_bench_5d2e8a71c9f04b36

start_work
UP=$(free_port); ADMIN_UP=$(free_port)
cat >"$work/upstream.caddyfile" <<CF
{
	admin 127.0.0.1:$ADMIN_UP
	default_bind 127.0.0.1
}
http://127.0.0.1:$UP {
	respond "ok" 200
}
CF
declare -A PORT
gateway() { # $1 = old|new, $2 = binary
	local pa pb pc admin
	pa=$(free_port); pb=$(free_port); pc=$(free_port); admin=$(free_port)
	PORT[$1a]=$pa; PORT[$1b]=$pb; PORT[$1c]=$pc
	cat >"$work/$1.caddyfile" <<CF
{
	admin 127.0.0.1:$admin
	default_bind 127.0.0.1
	storage file_system $work/storage-$1
}
$(abc_sites "$pa" "$pb" "$pc")
CF
	XDG_DATA_HOME=$work/data-$1 XDG_CONFIG_HOME=$work/config-$1 \
		"$2" run --config "$work/$1.caddyfile" --adapter caddyfile >"$work/$1.log" 2>&1 &
	pids+=($!)
}
XDG_DATA_HOME=$work/data XDG_CONFIG_HOME=$work/config \
	"$NEW" run --config "$work/upstream.caddyfile" --adapter caddyfile >"$work/upstream.log" 2>&1 &
UPPID=$!
pids+=($UPPID)
gateway old "$OLD"
gateway new "$NEW"
wait_ports $UP "${PORT[@]}"

signed_body
check_forwards "$work/old.log $work/new.log" "${PORT[oldb]}" "${PORT[oldc]}" "${PORT[newb]}" "${PORT[newc]}"

wrk_scripts

script() { case $1 in *a) echo "$work/same.lua" ;; *) echo "$work/plain.lua" ;; esac; }

echo "load-ab: old=$OLD new=$NEW; ${ROUNDS} rounds of ${SECS}s, ${SIZE}-byte body, wrk -t2 -c32, replay off, $(nproc) cores"
for v in olda oldb oldc newa newb newc; do run "${PORT[$v]}" "$(script $v)" >/dev/null; done # warm-up
cols=(oldB/A oldC/A oldC/B newB/A newC/A newC/B nA/oA nB/oB nC/oC)
printf '%-5s %8s %8s %8s %8s %8s %8s' round olda oldb oldc newa newb newc
printf ' %7s' "${cols[@]}"; echo
declare -A R U S SC
order=(olda newa oldb newb oldc newc)
for r in $(seq "$ROUNDS"); do
	k=$(((r - 1) % 6))
	o=("${order[@]:$k}" "${order[@]:0:$k}")
	for v in "${o[@]}"; do read -r R[$v] U[$v] <<<"$(run "${PORT[$v]}" "$(script $v)")"; done
	pairs=("olda oldb" "olda oldc" "oldb oldc" "newa newb" "newa newc" "newb newc" "olda newa" "oldb newb" "oldc newc")
	printf '%-5s %8s %8s %8s %8s %8s %8s' "$r" "${R[olda]}" "${R[oldb]}" "${R[oldc]}" "${R[newa]}" "${R[newb]}" "${R[newc]}"
	for i in "${!pairs[@]}"; do
		read -r x y <<<"${pairs[$i]}"
		q=$(ratio "${R[$x]}" "${R[$y]}"); qc=$(corr "${R[$x]}" "${U[$x]}" "${R[$y]}" "${U[$y]}")
		S[$i]+="$q "; SC[$i]+="$qc "
		printf ' %7s' "$q"
	done
	echo
done
echo "load-ab: medians over $ROUNDS rounds (raw / speed-corrected):"
for i in "${!cols[@]}"; do
	printf '  %-7s %s / %s\n' "${cols[$i]}" "$(printf '%s\n' ${S[$i]} | median)" "$(printf '%s\n' ${SC[$i]} | median)"
done
