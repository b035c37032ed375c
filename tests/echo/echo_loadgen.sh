#!/usr/bin/env bash
# muxio-echo under muxio-loadgen, as a user runs them: start the server on an
# ephemeral port, drive it (every echoed byte is checked by the load
# generator), stop it with SIGTERM, and expect both to exit 0; then expect
# the load generator to fail, saying why, against the port now closed.
#
#   echo_loadgen.sh MUXIO_ECHO MUXIO_LOADGEN MODE
set -euo pipefail
echo_bin="$1" loadgen_bin="$2" mode="$3"
work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid"; fi
    rm -rf "$work"
}
trap cleanup EXIT

"$echo_bin" --mode "$mode" --port 0 >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
port=""
for _ in $(seq 100); do  # the first line names the port; at most 10 s
    if line="$(head -n1 "$work/server.out" 2>/dev/null)" && [[ "$line" == listening* ]]; then
        port="$(sed -E 's/^listening on [^ ]*:([0-9]+) .*/\1/' <<<"$line")"
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.err" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$port" ]] || { echo "muxio-echo did not start" >&2; exit 1; }

# connections, size, pipeline, messages per connection: a fixed amount of
# work, with the duration only as an upper bound, so a slow build (TSan) on a
# loaded machine does the same work, just later.
for run in "1 64 1 200" "32 64 4 40" "8 4096 2 20" "4 1000000 1 3"; do
    read -r connections size pipeline count <<<"$run"
    timeout 100 "$loadgen_bin" --port "$port" -c "$connections" -s "$size" -p "$pipeline" -n "$count" -d 60 \
        --progress never --json "$work/result.json"
    grep -q "\"messages\": $((connections * count))," "$work/result.json" ||
        { echo "expected $((connections * count)) messages:" >&2; cat "$work/result.json" >&2; exit 1; }
    grep -q '"mismatches": 0' "$work/result.json"
    grep -q '"errors": 0' "$work/result.json"
done

kill -TERM "$server_pid"
status=0
timeout 10 tail --pid="$server_pid" -f /dev/null || status=$?
wait "$server_pid" || status=$?
server_pid=""
[[ "$status" -eq 0 ]] || { echo "muxio-echo exited with $status" >&2; cat "$work/server.err" >&2; exit 1; }
grep -q "stopped by signal 15" "$work/server.out"

# The server is gone: every connection is refused. A run that never
# connected is a failure (exit 1) that says so, not "0 messages, 0 errors".
status=0
timeout 20 "$loadgen_bin" --port "$port" -c 2 -d 0.2 --progress never --json "$work/refused.json" \
    >"$work/refused.out" || status=$?
[[ "$status" -eq 1 ]] || { echo "muxio-loadgen exited with $status against a closed port" >&2; exit 1; }
grep -q "connect phase: 0 of 2 connected; 2 never connected (2 failed, 0 still connecting" "$work/refused.out" ||
    { cat "$work/refused.out" >&2; exit 1; }
grep -q '"errors": 2,' "$work/refused.json" || { cat "$work/refused.json" >&2; exit 1; }
grep -q '"connect_failed": 2,' "$work/refused.json"
echo "muxio-echo ($mode) under muxio-loadgen: ok"
