#!/usr/bin/env bash
# Interleaved A/B of echo servers, for a change too small for the full
# benchmark's noise: each round runs every contender once, back to back, and
# the figure is the median over the rounds of each contender's server CPU per
# message divided by the first contender's *in the same round*. That ratio
# cancels the drift of a shared machine between rounds, which a ratio of two
# medians keeps. Its 90% interval (bench/benchstats.py, 5 rounds or more)
# says how far this run's noise lets it move.
#
#   bench/reactor/ab_echo.sh BINARY:IMPL [BINARY:IMPL ...]
#
# BINARY is a reactor_echo_server (copy one aside before changing the tree),
# IMPL its --impl. The load generator is this tree's reactor_echo_client.
# With PERF=1 each run is also sampled by `perf record`, and the table adds
# the user-space time per message: the share of the server's samples outside
# the kernel times its CPU per message. The system calls are the same for
# every server, so this isolates the event loop's own cost.
#
# Environment (all optional): ROUNDS (default 9), CONNECTIONS (default 1000),
# SIZE (default 64), DURATION (default 2), WARMUP (default 0.5), PERF (0),
# SERVER_CPU (0), CLIENT_CPU (1), PORT_BASE (default 31000), BUILD_DIR (the
# client's build, default build/bench-reactor).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build_dir="${BUILD_DIR:-$root/build/bench-reactor}"
rounds="${ROUNDS:-9}"
connections="${CONNECTIONS:-1000}"
size="${SIZE:-64}"
duration="${DURATION:-2}"
warmup="${WARMUP:-0.5}"
use_perf="${PERF:-0}"
server_cpu="${SERVER_CPU:-0}"
client_cpu="${CLIENT_CPU:-1}"
port="${PORT_BASE:-31000}"

if [[ $# -lt 1 ]]; then
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
client="$build_dir/reactor_echo_client"
if [[ ! -x "$client" ]]; then
    generator=()
    if command -v ninja >/dev/null && [[ ! -f "$build_dir/CMakeCache.txt" ]]; then generator=(-G Ninja); fi
    cmake -S "$here" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" -DMUXIO_WARNINGS_AS_ERRORS=ON >/dev/null
    cmake --build "$build_dir" --target reactor_echo_client -j2 >/dev/null
fi
for spec in "$@"; do
    [[ -x "${spec%%:*}" && "$spec" == *:* ]] || { echo "not BINARY:IMPL with an executable BINARY: $spec" >&2; exit 2; }
done
if [[ "$use_perf" == 1 ]] && ! command -v perf >/dev/null; then
    echo "PERF=1 needs perf (Debian: linux-perf)" >&2
    exit 2
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
results="$work/results.txt"

source "$here/../round_order.sh"

for ((round = 0; round < rounds; ++round)); do
    mapfile -t order < <(seq 0 $(($# - 1)) | shuffled_for_round "$round")
    for index in "${order[@]}"; do
        spec="${@:index+1:1}"
        port=$((port + 1))
        taskset -c "$server_cpu" "${spec%%:*}" --impl "${spec#*:}" --port "$port" >/dev/null 2>&1 &
        server_pid=$!
        taskset -c "$client_cpu" "$client" --port "$port" --connections "$connections" --size "$size" \
            --warmup "$warmup" --duration "$duration" --server-pid "$server_pid" >"$work/client.txt" 2>&1 &
        client_pid=$!
        user_share=nan
        if [[ "$use_perf" == 1 ]]; then
            # Sampled inside the measured window: after the warm-up, for most of it.
            sleep "$(awk -v w="$warmup" 'BEGIN { print w + 0.2 }')"
            perf record -q -p "$server_pid" -o "$work/perf.data" -- \
                sleep "$(awk -v d="$duration" 'BEGIN { print d * 0.8 }')" >/dev/null 2>&1 || true
            user_share="$(perf report -i "$work/perf.data" --no-children --sort dso -q 2>/dev/null |
                awk '$2 !~ /kernel/ { gsub("%", "", $1); share += $1 } END { print share + 0 }')"
        fi
        wait "$client_pid" || { echo "load generator failed against $spec: $(tail -c 300 "$work/client.txt")" >&2; exit 1; }
        kill "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
        cpu="$(grep -oE 'server_cpu_ns_per_msg=[0-9.]+' "$work/client.txt" | cut -d= -f2)"
        echo "$round $index $cpu $user_share" >>"$results"
    done
done

python3 - "$here/.." "$results" "$@" <<'EOF'
import collections
import sys

sys.path.insert(0, sys.argv[1])
from benchstats import print_ab_table

cpu = collections.defaultdict(dict)
user = collections.defaultdict(list)
for line in open(sys.argv[2]):
    round_, index, ns, share = line.split()
    cpu[round_][int(index)] = float(ns)
    if share != "nan":
        user[int(index)].append(float(ns) * float(share) / 100)
print_ab_table(sys.argv[3:], cpu, "ns/msg", "user-space ns/msg", user)
EOF
