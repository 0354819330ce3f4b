#!/usr/bin/env bash
# Fuzzes each Go native fuzz target of the module (fuzz_test.go and
# internal/verify/fuzz_test.go) for a
# bounded time, one after the other, and prints the executions counted.
#
#   scripts/fuzz.sh [seconds-per-target]     # default 20
#
# Fails if any target fails; the failing input is then saved by Go under
# <package>/testdata/fuzz/<Target>/ and replays with:
#   go test -run '<Target>/<file>' <package>
set -uo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
secs=${1:-20}
if ! [[ $secs =~ ^[1-9][0-9]*$ ]]; then
	echo "usage: $0 [seconds-per-target]" >&2
	exit 2
fi

# Targets as package:name pairs.
targets=""
for pkg in . ./internal/verify; do
	names=$("$GO" test -list '^Fuzz' "$pkg" | grep '^Fuzz') || {
		echo "fuzz: no fuzz targets found in $pkg (does the package build?)" >&2
		exit 1
	}
	for n in $names; do targets+="$pkg:$n "; done
done

total=0
count=0
failed=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for pt in $targets; do
	pkg=${pt%%:*} t=${pt#*:}
	count=$((count + 1))
	echo "fuzz: $t ($pkg) for ${secs}s" >&2
	"$GO" test -run '^$' -fuzz "^${t}\$" -fuzztime "${secs}s" "$pkg" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	# Progress lines read "fuzz: elapsed: 20s, execs: 123456 (6172/sec), ...";
	# the last one holds the target's total.
	execs=$(sed -n 's/^fuzz: elapsed: .*, execs: \([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
	execs=${execs:-0}
	total=$((total + execs))
	if [ "$rc" -ne 0 ]; then
		failed+=("$t")
		echo "fuzz: $t FAILED after $execs execs" >&2
	else
		echo "fuzz: $t ok, $execs execs" >&2
	fi
done

echo "fuzz: $count targets, $total execs"
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzz: failed: ${failed[*]}" >&2
	exit 1
fi
