#!/usr/bin/env bash
# The deterministic companion of run_reactor_bench.sh's echo table: each echo
# server runs under callgrind, driven by the same load generator, and the
# figure is the server's user-space instructions per message. Kernel work
# (the system calls, the TCP stack), which is most of the CPU time and most of
# its noise, is not counted, so what is left is the event loop's own cost.
#
# Per server x connection count: start the server under callgrind, warm up
# for 0.5 s, zero the counters (callgrind_control -z), run the load generator
# for DURATION seconds, dump (callgrind_control -d), divide the instructions
# by the messages the load generator completed. The server runs about 50 times
# slower under callgrind, so with many connections each wait reports more
# descriptors than in the real run: compare servers with each other, not with
# run_reactor_bench.sh's nanoseconds.
#
# Environment (all optional): BUILD_DIR (default: build/bench-reactor),
# SERVERS (default: epoll,muxio,libuv,libevent,asio; the coroutine servers
# muxio-coro and asio-coro can be named too), CONNECTIONS (default: 1,64,1000),
# DURATION (default: 3), PORT_BASE (default: 30000), KEEP (a directory to keep
# the callgrind files in, for callgrind_annotate).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build_dir="${BUILD_DIR:-$root/build/bench-reactor}"
servers="${SERVERS:-epoll,muxio,libuv,libevent,asio}"
connections="${CONNECTIONS:-1,64,1000}"
duration="${DURATION:-3}"
port="${PORT_BASE:-30000}"
keep="${KEEP:-}"

for tool in valgrind callgrind_control; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 2; }
done

generator=()
if command -v ninja >/dev/null && [[ ! -f "$build_dir/CMakeCache.txt" ]]; then generator=(-G Ninja); fi
cmake -S "$here" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
    -DMUXIO_WARNINGS_AS_ERRORS=ON >/dev/null
cmake --build "$build_dir" --target reactor_echo_server reactor_echo_client -j2 >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
results="$work/results.txt"

IFS=, read -r -a server_list <<<"$servers"
IFS=, read -r -a connection_list <<<"$connections"
for n in "${connection_list[@]}"; do
    for server in "${server_list[@]}"; do
        port=$((port + 1))
        out="$work/callgrind.$server.$n"
        valgrind --tool=callgrind --callgrind-out-file="$out" \
            "$build_dir/reactor_echo_server" --impl "$server" --port "$port" 2>/dev/null &
        pid=$!
        # Connects as soon as the server listens (the client retries for 5 s).
        "$build_dir/reactor_echo_client" --port "$port" --connections "$n" --warmup 0 --duration 0.5 >/dev/null
        callgrind_control -z "$pid" >/dev/null 2>&1
        line="$("$build_dir/reactor_echo_client" --port "$port" --connections "$n" --warmup 0 --duration "$duration")"
        callgrind_control -d "$pid" >/dev/null 2>&1
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        dump="$(ls "$out".* | head -1)"
        instructions="$(sed -n 's/^summary: *//p;s/^totals: *//p' "$dump" | head -1)"
        messages="$(sed 's/.*messages=\([0-9]*\).*/\1/' <<<"$line")"
        echo "$server $n $instructions $messages" >>"$results"
        if [[ -n "$keep" ]]; then
            mkdir -p "$keep"
            cp "$dump" "$keep/callgrind.echo.$server.$n"
        fi
        echo "$server, $n connections: $((instructions / messages)) instructions per message" >&2
    done
done

python3 - "$results" <<'EOF'
import sys

rows = [line.split() for line in open(sys.argv[1])]
per = {(s, int(n)): int(i) / int(m) for s, n, i, m in rows}
conns = sorted({n for _, n in per})
order = ["epoll", "muxio", "muxio-coro", "muxio-coro-perconn", "muxio-coro-raw", "libuv", "libevent", "asio", "asio-coro"]
names = [s for s in order if any((s, n) in per for n in conns)]
peers = [s for s in ("libuv", "libevent", "asio") if s in names]
print("| user-space instructions per message | " + " | ".join(f"{n:,} conn.".replace(",", " ") for n in conns) + " |")
print("|---|" + "---:|" * len(conns))
for s in names:
    print(f"| {s} | " + " | ".join(f"{per[(s, n)]:,.0f}".replace(",", " ") if (s, n) in per else "-" for n in conns) + " |")
if "muxio" in names and "epoll" in names:
    print("| muxio - epoll | " + " | ".join(f"{per[('muxio', n)] - per[('epoll', n)]:,.0f}" for n in conns) + " |")
if "muxio" in names and peers:
    cells = []
    for n in conns:
        best = min(peers, key=lambda p: per[(p, n)])
        cells.append(f"{per[('muxio', n)] / per[(best, n)]:.2f} ({best})")
    print("| muxio / best peer | " + " | ".join(cells) + " |")
EOF
