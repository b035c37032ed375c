#!/usr/bin/env bash
# Interleaved A/B of HTTP servers under wrk, the HTTP counterpart of
# bench/reactor/ab_echo.sh: each round runs every contender once, in an order
# shuffled anew each round, and the figure is the median over the rounds of
# each contender's server CPU per request divided by the first contender's
# in the same round, with its 90% interval (bench/benchstats.py).
#
#   bench/http/ab_http.sh CONTENDER [CONTENDER ...]
#
# CONTENDER is BINARY (a muxio-http: --port P --bind 127.0.0.1) or
# BINARY:IMPL (an http_hello_server: --impl IMPL --port P). Copy a binary
# aside before changing the tree. wrk runs one thread against `GET /`.
#
# Environment (all optional): ROUNDS (default 9), CONNECTIONS (default 512),
# DURATION (whole seconds measured, default 3), WARMUP (whole seconds of wrk
# before, not counted, default 1), SERVER_CPU (0), CLIENT_CPU (1), PORT_BASE
# (default 24000; below the ephemeral range, where wrk's own ports are).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rounds="${ROUNDS:-9}"
connections="${CONNECTIONS:-512}"
duration="${DURATION:-3}"
warmup="${WARMUP:-1}"
server_cpu="${SERVER_CPU:-0}"
client_cpu="${CLIENT_CPU:-1}"
port="${PORT_BASE:-24000}"

if [[ $# -lt 1 ]]; then
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
command -v wrk >/dev/null || { echo "ab_http.sh needs wrk (bash scripts/setup.sh --bench)" >&2; exit 2; }
for spec in "$@"; do
    [[ -x "${spec%%:*}" ]] || { echo "not an executable: ${spec%%:*}" >&2; exit 2; }
done

work="$(mktemp -d)"
server_pid=""
cleanup() {
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

source "$here/../round_order.sh"

# Waits (bounded) until something accepts on the port.
wait_listening() {
    for _ in $(seq 100); do
        (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

for ((round = 0; round < rounds; ++round)); do
    mapfile -t order < <(seq 0 $(($# - 1)) | shuffled_for_round "$round")
    for index in "${order[@]}"; do
        spec="${@:index+1:1}"
        port=$((port + 1))
        if [[ "$spec" == *:* ]]; then
            command=("${spec%%:*}" --impl "${spec#*:}" --port "$port")
        else
            command=("$spec" --port "$port" --bind 127.0.0.1)
        fi
        taskset -c "$server_cpu" "${command[@]}" >/dev/null 2>&1 &
        server_pid=$!
        wait_listening "$port" || { echo "$spec did not listen on $port" >&2; exit 1; }
        if ((warmup > 0)); then
            taskset -c "$client_cpu" wrk -t1 -c "$connections" -d "${warmup}s" "http://127.0.0.1:$port/" >/dev/null
        fi
        before="$(cut -d' ' -f1 "/proc/$server_pid/schedstat")"
        taskset -c "$client_cpu" wrk -t1 -c "$connections" -d "${duration}s" "http://127.0.0.1:$port/" >"$work/wrk.txt"
        after="$(cut -d' ' -f1 "/proc/$server_pid/schedstat")"
        kill "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
        requests="$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$work/wrk.txt")"
        if grep -qE "Non-2xx|Socket errors" "$work/wrk.txt"; then
            echo "warning: $spec, round $round: $(grep -E 'Non-2xx|Socket errors' "$work/wrk.txt" | tr -s ' ')" >&2
        fi
        echo "$round $index $before $after ${requests:-0}" >>"$work/results.txt"
    done
done

python3 - "$here/.." "$work/results.txt" "$@" <<'EOF'
import collections
import sys

sys.path.insert(0, sys.argv[1])
from benchstats import print_ab_table

cpu = collections.defaultdict(dict)
requests = collections.defaultdict(list)
for line in open(sys.argv[2]):
    round_, index, before, after, count = line.split()
    if int(count) > 0:
        cpu[round_][int(index)] = (int(after) - int(before)) / int(count)
        requests[int(index)].append(int(count))
print_ab_table(sys.argv[3:], cpu, "ns/req", "requests per run", requests)
EOF
