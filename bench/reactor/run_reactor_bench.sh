#!/usr/bin/env bash
# Builds bench/reactor (Release, -O2, its own build directory) and runs every
# reactor benchmark in interleaved rounds: in each round every job runs once,
# as its own processes, in an order shuffled anew each round. A job is one
# echo server x one connection count (server pinned to one core, the load
# generator to the other), or one library x one loop benchmark (timers,
# call_soon, call_soon_threadsafe throughput and latency). Prints the medians
# over the rounds as Markdown tables (docs/BENCHMARKS.md), with ratios against
# raw epoll and against the best of libuv, libevent and asio.
#
# SECTIONS=coro measures the coroutine layer (not in the default set): the
# coroutine echo servers (muxio-coro, muxio-coro-perconn, asio-coro) next to the callback ones
# (CORO_SERVERS), a readable() round trip (reactor_coro_bench --bench
# readable: muxio-coro, asio-coro and the callback versions muxio, asio) and
# task spawn + completion (--bench spawn: muxio-coro, asio-coro). With
# SECTIONS=echo,coro an echo job both sections name runs once per round.
#
# Environment (all optional):
#   BUILD_DIR     build directory                    (default: build/bench-reactor)
#   ROUNDS        interleaved rounds                 (default: 7: with three peers the verdicts need 6; see bench/benchstats.py)
#   SECTIONS      which benchmarks                   (default: echo,timers,soon,threadsafe,latency; also: coro)
#   SERVERS       echo servers                       (default: epoll,muxio,libuv,libevent,asio)
#   LIBS          libraries of the loop benchmarks   (default: muxio,libuv,libevent,asio)
#   CONNECTIONS   echo connection counts             (default: 1,64,1000)
#   DURATION      echo measurement window, seconds   (default: 3)
#   WARMUP        echo warm-up, seconds              (default: 0.5)
#   SIZE          echo message size, bytes           (default: 64)
#   TIMERS        timers per timer run               (default: 1000000)
#   MAX_DELAY_MS  timer delays are 1..MAX_DELAY_MS   (default: 100)
#   CALLBACKS     callbacks per call_soon / threadsafe run (default: 1000000)
#   SAMPLES       latency samples per run            (default: 20000)
#   REPS          repetitions inside one loop-benchmark process; it reports their median (default: 3)
#   CORO_SERVERS  echo servers of the coro section   (default: epoll,muxio,muxio-coro,muxio-coro-perconn,asio,asio-coro)
#   CORO_IMPLS    readable round-trip contenders     (default: muxio-coro,muxio,asio-coro,asio; empty: none)
#   ROUND_TRIPS   round trips per readable run       (default: 100000)
#   SPAWN_TASKS   task counts of the spawn benchmark (default: 1000,100000; empty: none)
#   CORO_REPS     repetitions inside one reactor_coro_bench process; it reports their median (default: 5)
#   SERVER_CPU    core of the echo server and of the loop thread (default: 0)
#   CLIENT_CPU    core of the load generator and of the producer thread (default: 1)
#   PORT_BASE     first TCP port used                (default: 20000)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build_dir="${BUILD_DIR:-$root/build/bench-reactor}"
rounds="${ROUNDS:-7}"
sections="${SECTIONS:-echo,timers,soon,threadsafe,latency}"
servers="${SERVERS:-epoll,muxio,libuv,libevent,asio}"
libs="${LIBS:-muxio,libuv,libevent,asio}"
connections="${CONNECTIONS:-1,64,1000}"
duration="${DURATION:-3}"
warmup="${WARMUP:-0.5}"
size="${SIZE:-64}"
timers="${TIMERS:-1000000}"
max_delay_ms="${MAX_DELAY_MS:-100}"
callbacks="${CALLBACKS:-1000000}"
samples="${SAMPLES:-20000}"
reps="${REPS:-3}"
server_cpu="${SERVER_CPU:-0}"
client_cpu="${CLIENT_CPU:-1}"
port="${PORT_BASE:-20000}"
coro_servers="${CORO_SERVERS:-epoll,muxio,muxio-coro,muxio-coro-perconn,asio,asio-coro}"
coro_impls="${CORO_IMPLS-muxio-coro,muxio,asio-coro,asio}"
round_trips="${ROUND_TRIPS:-100000}"
spawn_tasks="${SPAWN_TASKS-1000,100000}"
coro_reps="${CORO_REPS:-5}"

generator=()
if command -v ninja >/dev/null && [[ ! -f "$build_dir/CMakeCache.txt" ]]; then generator=(-G Ninja); fi
cmake -S "$here" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
    -DMUXIO_WARNINGS_AS_ERRORS=ON >/dev/null
cmake --build "$build_dir" --target reactor_echo_server reactor_echo_client reactor_loop_bench reactor_coro_bench \
    -j2 >/dev/null
server_bin="$build_dir/reactor_echo_server"
client_bin="$build_dir/reactor_echo_client"
loop_bin="$build_dir/reactor_loop_bench"
coro_bin="$build_dir/reactor_coro_bench"

# Every job is one line: "echo SERVER CONNECTIONS", "loop BENCH LIB ARGS..."
# or "coro BENCH IMPL ARGS...".
jobs=()
add_job() {
    local job
    for job in "${jobs[@]}"; do
        if [[ "$job" == "$1" ]]; then return; fi
    done
    jobs+=("$1")
}
IFS=, read -r -a section_list <<<"$sections"
IFS=, read -r -a server_list <<<"$servers"
IFS=, read -r -a lib_list <<<"$libs"
IFS=, read -r -a connection_list <<<"$connections"
for section in "${section_list[@]}"; do
    case "$section" in
    echo)
        for n in "${connection_list[@]}"; do
            for s in "${server_list[@]}"; do add_job "echo $s $n"; done
        done
        ;;
    coro)
        IFS=, read -r -a coro_server_list <<<"$coro_servers"
        IFS=, read -r -a coro_impl_list <<<"$coro_impls"
        IFS=, read -r -a spawn_list <<<"$spawn_tasks"
        for n in "${connection_list[@]}"; do
            for s in "${coro_server_list[@]}"; do add_job "echo $s $n"; done
        done
        for i in "${coro_impl_list[@]}"; do add_job "coro readable $i --count $round_trips"; done
        for t in "${spawn_list[@]}"; do
            for i in muxio-coro asio-coro; do add_job "coro spawn $i --count $t"; done
        done
        ;;
    timers)
        for l in "${lib_list[@]}"; do jobs+=("loop timers $l --count $timers --max-delay-ms $max_delay_ms"); done
        ;;
    soon)
        for chains in 1000 1; do
            for l in "${lib_list[@]}"; do jobs+=("loop soon $l --count $callbacks --chains $chains"); done
        done
        ;;
    threadsafe)
        for l in "${lib_list[@]}"; do jobs+=("loop threadsafe $l --count $callbacks"); done
        ;;
    latency)
        for l in "${lib_list[@]}"; do jobs+=("loop latency $l --samples $samples"); done
        ;;
    *)
        echo "unknown section: $section" >&2
        exit 2
        ;;
    esac
done

mkdir -p "$root/bench/results"
results="$root/bench/results/reactor_bench-$(date +%Y%m%d-%H%M%S).txt"
{
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# nproc: $(nproc); kernel: $(uname -r); cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    cxx="$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build_dir/CMakeCache.txt")"
    echo "# compiler: $("$cxx" --version | head -1) (-O2); libuv $(pkg-config --modversion libuv);" \
        "libevent $(pkg-config --modversion libevent_core); asio $(sed -n 's/^#define ASIO_VERSION \([0-9]*\).*/\1/p' \
        /usr/include/asio/version.hpp)"
    echo "# rounds: $rounds; echo: ${duration} s after ${warmup} s warm-up, ${size}-byte messages;" \
        "server/loop on cpu $server_cpu, client/producer on cpu $client_cpu; loop benchmarks: median of $reps repetitions;" \
        "coroutine benchmarks: median of $coro_reps repetitions"
    echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$results"

run_echo() {
    local server="$1" n="$2" round="$3"
    port=$((port + 1))
    if ((port > 60000)); then port=20000; fi
    taskset -c "$server_cpu" "$server_bin" --impl "$server" --port "$port" &
    local pid=$!
    local line status=0
    line="$(taskset -c "$client_cpu" "$client_bin" --port "$port" --connections "$n" --size "$size" \
        --warmup "$warmup" --duration "$duration" --server-pid "$pid")" || status=$?
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if ((status != 0)); then
        echo "echo server $server with $n connections failed" >&2
        return 1
    fi
    echo "round=$round bench=echo impl=$server $line"
}

run_loop() {
    local round="$1" bench="$2" lib="$3"
    shift 3
    # Both cores are given: the loop benchmarks pin their own threads.
    local line
    line="$(taskset -c "$server_cpu,$client_cpu" "$loop_bin" --bench "$bench" --impl "$lib" --reps "$reps" \
        --loop-core "$server_cpu" --producer-core "$client_cpu" "$@")"
    echo "round=$round $line"
}

run_coro() {
    local round="$1" bench="$2" impl="$3"
    shift 3
    local line
    line="$(taskset -c "$server_cpu" "$coro_bin" --bench "$bench" --impl "$impl" --reps "$coro_reps" \
        --loop-core "$server_cpu" "$@")"
    echo "round=$round $line"
}

source "$here/../round_order.sh"

start=$SECONDS
for ((round = 0; round < rounds; round++)); do
    mapfile -t order < <(printf '%s\n' "${jobs[@]}" | shuffled_for_round "$round")
    for line in "${order[@]}"; do
        read -r -a job <<<"$line"
        if [[ "${job[0]}" == echo ]]; then
            run_echo "${job[1]}" "${job[2]}" "$round" >>"$results"
        elif [[ "${job[0]}" == coro ]]; then
            run_coro "$round" "${job[@]:1}" >>"$results"
        else
            run_loop "$round" "${job[@]:1}" >>"$results"
        fi
    done
    echo "round $((round + 1))/$rounds done ($((SECONDS - start)) s)" >&2
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$results"

echo "raw results: ${results#"$root"/}" >&2
echo
sed -n 's/^# //p' "$results"
echo
python3 "$here/summarize_reactor_bench.py" "$results"
