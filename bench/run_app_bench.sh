#!/usr/bin/env bash
# The application benchmark suite (issue 5): builds what it needs (Release,
# warnings as errors, its own build directory) and runs, in interleaved
# rounds, four sections; then prints the medians over the rounds as Markdown
# tables with ratios against the best peer (bench/summarize_app_bench.py).
#
#   echo  bench/reactor's reactor_echo_server (--impl muxio, muxio-coro, muxio-coro-perconn,
#         libuv, libevent, asio, asio-coro, epoll) under reactor_echo_client:
#         ping-pong of 64-byte and 4 KiB messages over 1, 64 and 1 000
#         connections; messages/s, p99, server CPU per message, server VmHWM.
#   http  wrk (1 thread, --latency) against muxio-http `GET /` and the same
#         minimal keep-alive hello server on muxio's reactor, libuv,
#         libevent, asio and raw epoll (bench/http/, byte-identical
#         responses; the muxio one separates the loop from the app) and nginx (one
#         process, `return 200 "Hello, World!"`); 64 and 512 connections;
#         requests/s, p50/p99, server CPU per request, server VmHWM.
#   resp  redis-benchmark -t set / -t get, -c 50, -P 1 and -P 16, against
#         muxio-resp and redis-server (no persistence); requests/s, p50/p99,
#         server CPU per request.
#   idle  the echo servers (muxio, libuv, libevent, asio, epoll) with 10 000
#         idle connections (and, for reference, none) beside a few active
#         ping-pong ones: server CPU per message, messages/s, p99, VmHWM.
#
# In each round every job (one server x one configuration, its own processes)
# runs once, in an order shuffled anew each round. Servers run on
# SERVER_CPU, load generators on CLIENT_CPU (taskset). Server CPU time is read
# from /proc/PID/schedstat over the measured window, VmHWM from
# /proc/PID/status at its end. Every process the script starts is stopped by
# it (also on Ctrl-C); everything listens on 127.0.0.1 only. Raw rows go to
# bench/results/app_bench-*.txt.
#
# wrk, redis-benchmark, redis-server and nginx come from Debian (wrk,
# redis-tools, redis-server, nginx-light: `bash scripts/setup.sh --bench`);
# a contender whose program is missing is skipped with a warning.
#
# Environment (all optional):
#   BUILD_DIR         build directory                     (default: build/h-appbench)
#   ROUNDS            interleaved rounds                  (default: 7, the fewest for verdicts: see benchstats.py)
#   SECTIONS          which sections                      (default: echo,http,resp,idle)
#   SERVER_CPU        core of every server                (default: 0)
#   CLIENT_CPU        core of every load generator        (default: 1)
#   PORT_BASE         first TCP port tried                (default: 23000)
#   WAIT_LOAD         wait (after the build) until the 1-minute load average is below this; empty: no wait (default: 1.0)
#   WAIT_LOAD_MAX_S   ... but at most this many seconds   (default: 600)
#   ECHO_SERVERS      (default: muxio,muxio-coro,muxio-coro-perconn,libuv,libevent,asio,asio-coro,epoll)
#   ECHO_SIZES        message sizes, bytes                (default: 64,4096)
#   ECHO_CONNECTIONS  connection counts                   (default: 1,64,1000)
#   ECHO_DURATION     measured seconds per echo run       (default: 2)
#   ECHO_WARMUP       warm-up seconds per echo/idle run   (default: 0.5)
#   HTTP_SERVERS      (default: muxio-http,muxio,libuv,libevent,asio,epoll,nginx)
#   HTTP_CONNECTIONS  wrk connection counts               (default: 64,512)
#   HTTP_DURATION     wrk seconds (whole)                 (default: 3)
#   HTTP_WARMUP       wrk warm-up run, seconds; 0: none   (default: 1)
#   RESP_SERVERS      (default: muxio-resp,redis-server)
#   RESP_PIPELINES    redis-benchmark -P values           (default: 1,16)
#   RESP_CLIENTS      redis-benchmark -c                  (default: 50)
#   RESP_REQUESTS     -n per pipeline depth, DEPTH:N,...  (default: 1:100000,16:1200000)
#   IDLE_SERVERS      (default: muxio,libuv,libevent,asio,epoll)
#   IDLE_COUNTS       idle connection counts              (default: 0,10000)
#   IDLE_ACTIVE       active ping-pong connections        (default: 4)
#   IDLE_DURATION     measured seconds per idle run       (default: 3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
build_dir="${BUILD_DIR:-$root/build/h-appbench}"
rounds="${ROUNDS:-7}"
sections="${SECTIONS:-echo,http,resp,idle}"
server_cpu="${SERVER_CPU:-0}"
client_cpu="${CLIENT_CPU:-1}"
port="${PORT_BASE:-23000}"
wait_load="${WAIT_LOAD-1.0}"
wait_load_max_s="${WAIT_LOAD_MAX_S:-600}"
echo_servers="${ECHO_SERVERS:-muxio,muxio-coro,muxio-coro-perconn,libuv,libevent,asio,asio-coro,epoll}"
echo_sizes="${ECHO_SIZES:-64,4096}"
echo_connections="${ECHO_CONNECTIONS:-1,64,1000}"
echo_duration="${ECHO_DURATION:-2}"
echo_warmup="${ECHO_WARMUP:-0.5}"
http_servers="${HTTP_SERVERS:-muxio-http,muxio,libuv,libevent,asio,epoll,nginx}"
http_connections="${HTTP_CONNECTIONS:-64,512}"
http_duration="${HTTP_DURATION:-3}"
http_warmup="${HTTP_WARMUP:-1}"
resp_servers="${RESP_SERVERS:-muxio-resp,redis-server}"
resp_pipelines="${RESP_PIPELINES:-1,16}"
resp_clients="${RESP_CLIENTS:-50}"
resp_requests="${RESP_REQUESTS:-1:100000,16:1200000}"
idle_servers="${IDLE_SERVERS:-muxio,libuv,libevent,asio,epoll}"
idle_counts="${IDLE_COUNTS:-0,10000}"
idle_active="${IDLE_ACTIVE:-4}"
idle_duration="${IDLE_DURATION:-3}"

# ----- Processes: every one started here is stopped here ---------------------

tmp="$(mktemp -d "${TMPDIR:-/tmp}/app_bench.XXXXXX")"
live_pids=()

forget_pid() {
    local pid="$1" kept=() p
    for p in "${live_pids[@]}"; do
        if [[ "$p" != "$pid" ]]; then kept+=("$p"); fi
    done
    live_pids=("${kept[@]}")
}

stop_pid() {
    local pid="$1"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local waited=0
        while kill -0 "$pid" 2>/dev/null && ((waited < 50)); do
            sleep 0.1
            waited=$((waited + 1))
            # A child that exited is a zombie until waited for: reap it.
            if [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == Z* ]]; then break; fi
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

cleanup() {
    local pid
    for pid in "${live_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${live_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    live_pids=()
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a load generator in the background (so a signal reaches the trap at
# once) and waits for it; its stdout goes to $1. Returns its status.
run_client() {
    local out="$1"
    shift
    "$@" >"$out" 2>"$out.err" &
    local pid=$!
    live_pids+=("$pid")
    local status=0
    wait "$pid" || status=$?
    forget_pid "$pid"
    if ((status != 0)); then
        echo "warning: '$*' failed ($status): $(head -c 300 "$out.err")" >&2
    fi
    return "$status"
}

# ----- Build -----------------------------------------------------------------

generator=()
if command -v ninja >/dev/null && [[ ! -f "$build_dir/CMakeCache.txt" ]]; then generator=(-G Ninja); fi
# CMake's Release flags (-O3), as the release preset builds the applications.
# (With -O2, g++ 12 reports -Wnull-dereference inside std::string in
# apps/http/main.cpp and apps/resp/main.cpp, which -Werror turns fatal.)
cmake -S "$root" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DMUXIO_BUILD_BENCH=ON -DMUXIO_BUILD_APPS=ON -DMUXIO_BUILD_TESTS=OFF -DMUXIO_WARNINGS_AS_ERRORS=ON >/dev/null
cmake --build "$build_dir" --target reactor_echo_server reactor_echo_client http_hello_server muxio-http muxio-resp \
    -j2 >/dev/null
echo_server_bin="$build_dir/bench/reactor/reactor_echo_server"
echo_client_bin="$build_dir/bench/reactor/reactor_echo_client"
hello_bin="$build_dir/bench/http/http_hello_server"
http_bin="$build_dir/apps/muxio-http"
resp_bin="$build_dir/apps/muxio-resp"

have() { command -v "$1" >/dev/null 2>&1; }
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
redis_server_bin="$(command -v redis-server || echo /usr/bin/redis-server)"

# Servers need one descriptor per connection (10 000 idle ones and more).
hard_limit="$(ulimit -Hn)"
if [[ "$hard_limit" == unlimited ]] || ((hard_limit > 20000)); then hard_limit=20000; fi
if (($(ulimit -Sn) < hard_limit)); then ulimit -Sn "$hard_limit"; fi

# ----- Jobs ------------------------------------------------------------------
# One line each: "echo SERVER SIZE CONNECTIONS", "http SERVER CONNECTIONS",
# "resp SERVER PIPELINE", "idle SERVER IDLE".

skip_missing() {
    local name="$1" program="$2"
    if [[ ! -x "$program" ]] && ! have "$program"; then
        echo "warning: $program not found: $name is skipped (bash scripts/setup.sh --bench installs it)" >&2
        return 0
    fi
    return 1
}

jobs=()
IFS=, read -r -a section_list <<<"$sections"
for section in "${section_list[@]}"; do
    case "$section" in
    echo)
        IFS=, read -r -a servers <<<"$echo_servers"
        IFS=, read -r -a sizes <<<"$echo_sizes"
        IFS=, read -r -a counts <<<"$echo_connections"
        for size in "${sizes[@]}"; do
            for n in "${counts[@]}"; do
                for s in "${servers[@]}"; do jobs+=("echo $s $size $n"); done
            done
        done
        ;;
    http)
        if skip_missing "the HTTP section" wrk; then continue; fi
        IFS=, read -r -a servers <<<"$http_servers"
        IFS=, read -r -a counts <<<"$http_connections"
        for n in "${counts[@]}"; do
            for s in "${servers[@]}"; do
                if [[ "$s" == nginx ]] && skip_missing nginx "$nginx_bin"; then continue; fi
                jobs+=("http $s $n")
            done
        done
        ;;
    resp)
        if skip_missing "the RESP section" redis-benchmark; then continue; fi
        IFS=, read -r -a servers <<<"$resp_servers"
        IFS=, read -r -a pipelines <<<"$resp_pipelines"
        for p in "${pipelines[@]}"; do
            for s in "${servers[@]}"; do
                if [[ "$s" == redis-server ]] && skip_missing redis-server "$redis_server_bin"; then continue; fi
                jobs+=("resp $s $p")
            done
        done
        ;;
    idle)
        IFS=, read -r -a servers <<<"$idle_servers"
        IFS=, read -r -a counts <<<"$idle_counts"
        for k in "${counts[@]}"; do
            for s in "${servers[@]}"; do jobs+=("idle $s $k"); done
        done
        ;;
    *)
        echo "unknown section: $section" >&2
        exit 2
        ;;
    esac
done

# ----- Helpers -----------------------------------------------------------------

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The next port nothing listens on.
next_port() {
    for ((;;)); do
        port=$((port + 1))
        if ((port > 60000)); then port=23000; fi
        if ! listening "$port"; then return; fi
    done
}

# Waits until 127.0.0.1:$1 accepts connections while pid $2 lives (10 s).
wait_listening() {
    local i
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$2" 2>/dev/null; then return 1; fi
        if listening "$1"; then return 0; fi
        sleep 0.05
    done
    return 1
}

cpu_ns() { cut -d' ' -f1 "/proc/$1/schedstat" 2>/dev/null || echo nan; }
status_kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status" 2>/dev/null || echo nan; }

# Starts server $1 (a name) on $port, pinned; sets server_pid.
start_server() {
    local name="$1" log="$tmp/server.log"
    local command=()
    case "$name" in
    echo:*) command=("$echo_server_bin" --impl "${name#echo:}" --port "$port") ;;
    hello:muxio-http) command=("$http_bin" --port "$port" --bind 127.0.0.1) ;;
    hello:nginx)
        local prefix="$tmp/nginx-$port"
        mkdir -p "$prefix/logs" "$prefix/temp"
        cat >"$prefix/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log $prefix/logs/error.log warn;
pid $prefix/nginx.pid;
events {
    worker_connections 4096;
}
http {
    access_log off;
    server_tokens off;
    default_type "text/plain; charset=utf-8";
    keepalive_requests 1000000000;
    keepalive_timeout 75s;
    client_body_temp_path $prefix/temp/body;
    proxy_temp_path $prefix/temp/proxy;
    fastcgi_temp_path $prefix/temp/fastcgi;
    uwsgi_temp_path $prefix/temp/uwsgi;
    scgi_temp_path $prefix/temp/scgi;
    server {
        listen 127.0.0.1:$port;
        location / {
            return 200 "Hello, World!";
        }
    }
}
EOF
        command=("$nginx_bin" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log")
        ;;
    hello:*) command=("$hello_bin" --impl "${name#hello:}" --port "$port") ;;
    resp:muxio-resp) command=("$resp_bin" --port "$port" --bind 127.0.0.1) ;;
    resp:redis-server)
        mkdir -p "$tmp/redis-$port"
        command=("$redis_server_bin" --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no
            --dir "$tmp/redis-$port" --logfile "")
        ;;
    *)
        echo "unknown server $name" >&2
        return 1
        ;;
    esac
    taskset -c "$server_cpu" "${command[@]}" >"$log" 2>&1 &
    server_pid=$!
    live_pids+=("$server_pid")
}

# ----- Runs ------------------------------------------------------------------------

run_echo() { # round bench server size connections idle
    local round="$1" bench="$2" server="$3" size="$4" n="$5" idle="$6" duration="$7"
    next_port
    start_server "echo:$server"
    local out="$tmp/client.out"
    if run_client "$out" taskset -c "$client_cpu" "$echo_client_bin" --port "$port" --connections "$n" \
        --size "$size" --warmup "$echo_warmup" --duration "$duration" --server-pid "$server_pid" --idle "$idle"; then
        echo "round=$round bench=$bench impl=$server size=$size $(cat "$out")"
    else
        echo "warning: $bench $server size $size, $n connections, $idle idle: no row" >&2
    fi
    stop_pid "$server_pid"
}

# wrk's latency with a unit (1.23us, 4.56ms, 1.2s) in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1000000; else f = -1;
        if (f < 0) print "nan"; else printf "%.3f\n", n * f }'
}

run_http() { # round server connections
    local round="$1" server="$2" n="$3"
    next_port
    start_server "hello:$server"
    if ! wait_listening "$port" "$server_pid"; then
        echo "warning: http server $server did not listen on $port: $(head -c 300 "$tmp/server.log")" >&2
        stop_pid "$server_pid"
        return 0
    fi
    local url="http://127.0.0.1:$port/" out="$tmp/wrk.out"
    if ((http_warmup > 0)); then
        run_client "$out" taskset -c "$client_cpu" wrk -t1 -c "$n" -d "${http_warmup}s" "$url" || true
    fi
    local before after
    before="$(cpu_ns "$server_pid")"
    if run_client "$out" taskset -c "$client_cpu" wrk -t1 -c "$n" -d "${http_duration}s" --latency "$url"; then
        after="$(cpu_ns "$server_pid")"
        local requests rps p50 p99 non2xx errors
        requests="$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$out")"
        rps="$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$out")"
        p50="$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")"
        p99="$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")"
        non2xx="$(sed -n 's/^ *Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$out")"
        errors="$(sed -n 's/^ *Socket errors: *\(.*\)/\1/p' "$out" | tr -d ' ,')"
        local per_request=nan
        if [[ -n "$requests" && "$requests" != 0 && "$before" != nan && "$after" != nan ]]; then
            per_request="$(awk -v a="$after" -v b="$before" -v r="$requests" 'BEGIN { printf "%.1f", (a - b) / r }')"
        fi
        echo "round=$round bench=http impl=$server connections=$n requests=${requests:-0} rps=${rps:-nan}" \
            "p50_us=$p50 p99_us=$p99 server_cpu_ns_per_req=$per_request" \
            "server_vmhwm_kb=$(status_kb "$server_pid" VmHWM) non2xx=${non2xx:-0} socket_errors=${errors:-none}"
    fi
    stop_pid "$server_pid"
}

run_resp() { # round server pipeline
    local round="$1" server="$2" pipeline="$3"
    local requests=""
    local item
    for item in ${resp_requests//,/ }; do
        if [[ "${item%%:*}" == "$pipeline" ]]; then requests="${item#*:}"; fi
    done
    requests="${requests:-$((100000 * pipeline))}"
    next_port
    start_server "resp:$server"
    if ! wait_listening "$port" "$server_pid"; then
        echo "warning: resp server $server did not listen on $port: $(head -c 300 "$tmp/server.log")" >&2
        stop_pid "$server_pid"
        return 0
    fi
    local test out="$tmp/rb.out"
    for test in set get; do
        local before after
        before="$(cpu_ns "$server_pid")"
        if run_client "$out" taskset -c "$client_cpu" redis-benchmark -h 127.0.0.1 -p "$port" -c "$resp_clients" \
            -n "$requests" -P "$pipeline" -t "$test" --csv; then
            after="$(cpu_ns "$server_pid")"
            # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
            local row
            row="$(grep -i "^\"$test\"" "$out" | tail -1 | tr -d '"')"
            local rps p50 p99
            rps="$(cut -d, -f2 <<<"$row")"
            p50="$(cut -d, -f5 <<<"$row")"
            p99="$(cut -d, -f7 <<<"$row")"
            local per_request=nan
            if [[ "$before" != nan && "$after" != nan ]]; then
                per_request="$(awk -v a="$after" -v b="$before" -v r="$requests" 'BEGIN { printf "%.1f", (a - b) / r }')"
            fi
            echo "round=$round bench=resp impl=$server pipeline=$pipeline test=$test clients=$resp_clients" \
                "requests=$requests rps=${rps:-nan} p50_ms=${p50:-nan} p99_ms=${p99:-nan}" \
                "server_cpu_ns_per_req=$per_request server_vmhwm_kb=$(status_kb "$server_pid" VmHWM)"
        fi
    done
    stop_pid "$server_pid"
}

# ----- Header, load, rounds --------------------------------------------------------

mkdir -p "$root/bench/results"
results="$root/bench/results/app_bench-$(date +%Y%m%d-%H%M%S).txt"

if [[ -n "$wait_load" ]]; then
    waited=0
    while awk -v l="$(cut -d' ' -f1 /proc/loadavg)" -v t="$wait_load" 'BEGIN { exit !(l >= t) }' &&
        ((waited < wait_load_max_s)); do
        if ((waited == 0)); then echo "waiting for the load average to fall below $wait_load ..." >&2; fi
        sleep 10
        waited=$((waited + 10))
    done
fi

{
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# nproc: $(nproc); kernel: $(uname -r); cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    cxx="$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build_dir/CMakeCache.txt")"
    echo "# compiler: $("$cxx" --version | head -1) ($(sed -n 's/^CMAKE_CXX_FLAGS_RELEASE:[A-Z]*=//p' \
        "$build_dir/CMakeCache.txt")); libuv $(pkg-config --modversion libuv);" \
        "libevent $(pkg-config --modversion libevent_core); asio $(sed -n 's/^#define ASIO_VERSION \([0-9]*\).*/\1/p' \
            /usr/include/asio/version.hpp)"
    echo "# tools: $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2 || true);" \
        "$(redis-benchmark --version 2>/dev/null | head -1 || true);" \
        "$("$redis_server_bin" --version 2>/dev/null | cut -d' ' -f1-3 || true);" \
        "$("$nginx_bin" -v 2>&1 || true)"
    echo "# rounds: $rounds; sections: $sections; server on cpu $server_cpu, clients on cpu $client_cpu;" \
        "echo ${echo_duration} s after ${echo_warmup} s warm-up; http ${http_duration} s after a ${http_warmup} s wrk run;" \
        "resp -c $resp_clients, -n $resp_requests; idle: $idle_active active, ${idle_duration} s"
    echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$results"

source "$here/round_order.sh"

start=$SECONDS
for ((round = 0; round < rounds; round++)); do
    mapfile -t order < <(printf '%s\n' "${jobs[@]}" | shuffled_for_round "$round")
    for line in "${order[@]}"; do
        read -r -a job <<<"$line"
        case "${job[0]}" in
        echo) run_echo "$round" echo "${job[1]}" "${job[2]}" "${job[3]}" 0 "$echo_duration" >>"$results" ;;
        idle) run_echo "$round" idle "${job[1]}" 64 "$idle_active" "${job[2]}" "$idle_duration" >>"$results" ;;
        http) run_http "$round" "${job[1]}" "${job[2]}" >>"$results" ;;
        resp) run_resp "$round" "${job[1]}" "${job[2]}" >>"$results" ;;
        esac
    done
    echo "round $((round + 1))/$rounds done ($((SECONDS - start)) s)" >&2
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$results"

echo "raw results: ${results#"$root"/}" >&2
echo
sed -n 's/^# //p' "$results"
echo
python3 "$here/summarize_app_bench.py" "$results"
