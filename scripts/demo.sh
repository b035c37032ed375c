#!/usr/bin/env bash
# Sets the machine up, builds the release preset and runs the demo: the echo
# server (muxio-echo) driven by the load generator (muxio-loadgen), once with
# the callback server and once with the coroutine one, a few seconds each,
# every echoed byte checked; each run ends with loadgen's summary table.
#
#   bash scripts/demo.sh [arguments for muxio-loadgen...]   # default: -c 64 -s 64 -d 3
#
# Environment: MUXIO_CMAKE_ARGS (more configure arguments), MUXIO_JOBS
# (build parallelism), MUXIO_SKIP_SETUP=1 (do not check or install packages).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

preset=release
bin="build/$preset/apps"
jobs="${MUXIO_JOBS:-$(nproc 2>/dev/null || echo 2)}"
read -r -a extra_cmake_args <<<"${MUXIO_CMAKE_ARGS:-}"

bash scripts/setup.sh
cmake --preset "$preset" "${extra_cmake_args[@]}"
cmake --build --preset "$preset" --parallel "$jobs" --target muxio-echo muxio-loadgen

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then kill "$server_pid"; fi
    rm -rf "$work"
}
trap cleanup EXIT

loadgen_args=("$@")
if [[ ${#loadgen_args[@]} -eq 0 ]]; then
    loadgen_args=(-c 64 -s 64 -d 3)
fi

for mode in callback coroutine; do
    "$bin/muxio-echo" --mode "$mode" --port 0 >"$work/server.out" &
    server_pid=$!
    port=""
    for _ in $(seq 100); do  # the first line names the port
        line="$(head -n1 "$work/server.out" 2>/dev/null || true)"
        if [[ "$line" == listening* ]]; then
            port="$(sed -E 's/^listening on [^ ]*:([0-9]+) .*/\1/' <<<"$line")"
            break
        fi
        sleep 0.1
    done
    [[ -n "$port" ]] || { echo "demo.sh: muxio-echo did not start" >&2; exit 1; }
    echo
    echo "==> $line"
    echo "==> $bin/muxio-loadgen --port $port ${loadgen_args[*]}"
    "$bin/muxio-loadgen" --port "$port" "${loadgen_args[@]}"
    kill -INT "$server_pid"
    wait "$server_pid"
    server_pid=""
    tail -n1 "$work/server.out"
done
