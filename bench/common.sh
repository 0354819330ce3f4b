# Shared by bench/load.sh, bench/load-ab.sh and bench/load-history.sh
# (sourced), so that they measure the same sites with the same request.

# start_work makes $work, a temporary directory removed at exit, after the
# processes whose pids are added to pids are killed.
start_work() {
	work=$(mktemp -d)
	pids=()
	trap cleanup EXIT
}

cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}

# free_port prints a free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_ports waits up to 10 s for each of the ports to accept connections.
wait_ports() {
	local port
	for port in "$@"; do
		for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
	done
}

# check_forwards "LOG..." PORT... sends the signed $work/body.json ($sig)
# once to each port and ends the script, printing the logs, unless each
# answers 200 (verified and forwarded to the upstream).
check_forwards() {
	local logs=$1 port code
	shift
	for port in "$@"; do
		code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Content-Type: application/json" \
			-H "X-ReReady-Signature-512: $sig" --data-binary @"$work/body.json" "http://127.0.0.1:$port/")
		if [ "$code" != 200 ]; then
			echo "$(basename "$0" .sh): gateway on port $port answered $code to a valid request" >&2
			# shellcheck disable=SC2086
			cat $logs >&2
			exit 1
		fi
	done
}

# upcpu prints the upstream's CPU time so far ($UPPID), in clock ticks.
upcpu() { awk '{print $14+$15}' "/proc/$UPPID/stat"; }

# run port script prints "rps upstream-ticks-per-1e6-requests" of a wrk run
# of $SECS seconds against port with script; a non-200 answer ends it.
run() {
	local c0 c1 out
	c0=$(upcpu)
	out=$(timeout $((SECS + 20)) wrk -t2 -c32 -d"${SECS}s" -s "$2" "http://127.0.0.1:$1/" 2>&1)
	c1=$(upcpu)
	if grep -q "non-200" <<<"$out"; then echo "$(basename "$0" .sh): $out" >&2; exit 1; fi
	awk -v c0="$c0" -v c1="$c1" '/^Requests\/sec:/ {r=$2} /requests in/ {n=$1} END {printf "%s %.1f\n", r, (c1-c0)*1e6/n}' <<<"$out"
}

# ratio x y prints y/x; corr rps_x up_x rps_y up_y the speed-corrected
# ratio of y over x, (rps_y * up_y) / (rps_x * up_x); median the median of
# the numbers on stdin.
ratio() { awk -v x="$1" -v y="$2" 'BEGIN {printf "%.3f", y/x}'; }
corr() { awk -v rx="$1" -v ux="$2" -v ry="$3" -v uy="$4" 'BEGIN {printf "%.3f", (ry*uy)/(rx*ux)}'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# abc_sites prints the sites A (reverse_proxy alone), B (reready_verify +
# reverse_proxy, replay off) and C (B with queue on) on ports $1 $2 $3, in
# front of the upstream on $UP.
abc_sites() {
	cat <<CF
http://127.0.0.1:$1 {
	reverse_proxy 127.0.0.1:$UP
}
http://127.0.0.1:$2 {
	reready_verify {
		secret $SECRET
		replay off
	}
	reverse_proxy 127.0.0.1:$UP
}
http://127.0.0.1:$3 {
	reready_verify {
		secret $SECRET
		replay off
		queue
	}
	reverse_proxy 127.0.0.1:$UP
}
CF
}

# signed_body writes a vendor-shaped body padded to $SIZE bytes to
# $work/body.json and signs it with openssl: sets id, t and sig.
signed_body() {
	id=e025d043-c41d-4167-8bd3-24cc66345696
	local base pad body mac
	base="{\"device_return_id\":\"$id\",\"serial_number\":null,\"state\":\"complete\",\"test\":false,\"ticket_url\":null,\"url\":\"https://www.reready.co/device_returns/$id\",\"note\":\""
	pad=$((SIZE - ${#base} - 2)); [ $pad -lt 0 ] && pad=0
	body="$base$(head -c $pad /dev/zero | tr '\0' x)\"}"
	printf '%s' "$body" >"$work/body.json"
	t=$(date +%s)
	mac=$( (printf '%s.' "$t"; cat "$work/body.json") | openssl dgst -sha512 -hmac "$SECRET" -r | cut -d' ' -f1)
	sig="t=$t,v=$mac"
}

# wrk_scripts writes the wrk scripts that send the signed request:
# $work/same.lua with the headers reready_verify adds (A's client:
# "header-fair") and $work/plain.lua with the signature only.
wrk_scripts() {
	lua 1 >"$work/same.lua"
	lua 0 >"$work/plain.lua"
}

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
