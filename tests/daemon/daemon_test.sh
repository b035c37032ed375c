#!/usr/bin/env bash
# muxio-daemon as an operator drives it: the control socket (status, help, an
# unknown command, several clients at once), reload by command and by
# SIGHUP, a bad configuration and a FIFO kept out, the TCP service, and the three ways
# to stop: SIGTERM draining an open connection, SIGTERM with a drain that
# times out, and `stop` on the control channel.
#
#   daemon_test.sh MUXIO_DAEMON [PYTHON3]
#
# Every wait polls its condition against a deadline; none sleeps a fixed time
# and hopes.
set -euo pipefail
daemon_bin="$1"
python="${2:-python3}"
work="$(mktemp -d)"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    local f
    for f in "$work"/*.err; do
        [[ -e "$f" ]] && { echo "--- $f" >&2; cat "$f" >&2; }
    done
    exit 1
}

# wait_for DESCRIPTION SECONDS COMMAND...: runs COMMAND every 50 ms until it
# succeeds; fails the test after SECONDS.
wait_for() {
    local what="$1" limit="$2"
    shift 2
    local tries=$((limit * 20))
    while ((tries-- > 0)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
    done
    fail "timed out after ${limit} s waiting for: $what"
}

# ctl SOCKET LINE...: sends each LINE on one control connection and prints
# the one-line reply to each non-blank one.
py_ctl='
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rw", newline="\n")
for line in sys.argv[2:]:
    f.write(line + "\n")
    f.flush()
    if line.strip():
        reply = f.readline()
        if not reply:
            sys.exit("control connection closed")
        print(reply.rstrip("\n"))
'
ctl() { "$python" -c "$py_ctl" "$@"; }

# field NAME STATUS_LINE: the value of NAME= in a status line.
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }
status_of() { ctl "$1" status; }
status_has() { [[ "$(field "$2" "$(status_of "$1")")" == "$3" ]]; }
ticks_at_least() { (($(field ticks "$(status_of "$1")") >= $2)); }

# tcp_greeting PORT: the first line the service sends, then an echo check.
py_tcp='
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
f = s.makefile("rw", newline="\n")
greeting = f.readline().rstrip("\n")
f.write("ping 1 2 3\n")
f.flush()
echo = f.readline().rstrip("\n")
if echo != "ping 1 2 3":
    sys.exit("echo: got %r" % echo)
print(greeting)
'
tcp_greeting() { "$python" -c "$py_tcp" "$1"; }

py_refused='
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
except ConnectionRefusedError:
    sys.exit(0)
sys.exit(1)
'
tcp_refused() { "$python" -c "$py_refused" "$1"; }

# A TCP client that holds its connection: reads the greeting, creates
# DIR/connected, then, once DIR/release exists, sends a last line and records
# its echo in DIR/echo; or, if the daemon closes the connection first,
# creates DIR/closed. Bounded at 60 s either way.
py_holder='
import os, select, socket, sys, time
port, d = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
f = s.makefile("rw", newline="\n")
f.readline()
open(os.path.join(d, "connected"), "w").close()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if os.path.exists(os.path.join(d, "release")):
        f.write("last words\n")
        f.flush()
        with open(os.path.join(d, "echo"), "w") as out:
            out.write(f.readline())
        sys.exit(0)
    if select.select([s], [], [], 0.05)[0] and s.recv(1) == b"":
        open(os.path.join(d, "closed"), "w").close()
        sys.exit(0)
sys.exit("holder: nothing happened in 60 s")
'

# start_daemon NAME CONFIG [ARGS...]: starts the daemon on an ephemeral port
# with the control socket $work/NAME.sock; sets pid, port and sock.
start_daemon() {
    local name="$1" config="$2"
    shift 2
    sock="$work/$name.sock"
    "$daemon_bin" --port 0 --control "$sock" --config "$config" "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pid=$!
    pids+=("$pid")
    wait_for "$name to print its control line" 10 grep -q '^control on ' "$work/$name.out"
    local first second
    first="$(sed -n 1p "$work/$name.out")"
    second="$(sed -n 2p "$work/$name.out")"
    [[ "$first" =~ ^listening\ on\ 127\.0\.0\.1:([0-9]+)$ ]] || fail "first line: $first"
    port="${BASH_REMATCH[1]}"
    [[ "$second" == "control on $sock" ]] || fail "second line: $second"
}

# expect_exit PID STATUS: waits (bounded) for PID to end with STATUS.
expect_exit() {
    wait_for "process $1 to exit" 15 bash -c "! kill -0 $1"
    local status=0
    wait "$1" || status=$?
    [[ "$status" -eq "$2" ]] || fail "process $1 exited with $status, expected $2"
}

# ---- Control channel, reload and SIGHUP -----------------------------------------------
conf="$work/daemon.conf"
cat >"$conf" <<'EOF'
# the test's configuration
interval = 0.1        # seconds
greeting = hello one
log_level = info
drain_timeout = 30
EOF
start_daemon main "$conf"
main_pid="$pid" main_port="$port" main_sock="$sock"
[[ -S "$main_sock" ]] || fail "no control socket at $main_sock"

status="$(status_of "$main_sock")"
[[ "$(field pid "$status")" == "$main_pid" ]] || fail "status pid: $status"
[[ "$(field generation "$status")" == 1 ]] || fail "status generation: $status"
[[ "$(field state "$status")" == running ]] || fail "status state: $status"
[[ "$(field connections "$status")" == 0 ]] || fail "status connections: $status"
[[ "$(field control_clients "$status")" == 1 ]] || fail "status control_clients: $status"
[[ "$(field uptime "$status")" =~ ^[0-9]+\.[0-9]{3}$ ]] || fail "status uptime: $status"
wait_for "two heartbeats" 10 ticks_at_least "$main_sock" 2
wait_for "a heartbeat in the log" 10 grep -q 'heartbeat: uptime' "$work/main.err"

# An unknown command is answered and the connection stays usable.
mapfile -t replies < <(ctl "$main_sock" frobnicate "" help "status now" status)
[[ "${replies[0]}" == "error: unknown command 'frobnicate'" ]] || fail "unknown command: ${replies[0]}"
[[ "${replies[1]}" == "ok: commands: status, reload, stop, help" ]] || fail "help: ${replies[1]}"
[[ "${replies[2]}" == "error: 'status' takes no arguments" ]] || fail "arguments: ${replies[2]}"
[[ "${replies[3]}" == pid=* ]] || fail "status after an error: ${replies[3]}"
[[ "${#replies[@]}" -eq 4 ]] || fail "a blank line was answered: ${replies[*]}"

# Two control clients at once, their commands interleaved.
"$python" -c '
import socket, sys
def connect():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sys.argv[1])
    return s.makefile("rw", newline="\n")
def ask(f, line):
    f.write(line + "\n")
    f.flush()
    return f.readline().rstrip("\n")
a, b = connect(), connect()
# connect() returns once the connection is queued, not accepted: b is asked
# first, and once it is answered, a (queued before it) is accepted too.
rb = ask(b, "status")
ra = ask(a, "status")
assert "control_clients=2" in ra and "control_clients=2" in rb, (ra, rb)
assert ask(b, "nope") == "error: unknown command '"'"'nope'"'"'"
assert ask(a, "help").startswith("ok: ")
a.close()
assert ask(b, "status").startswith("pid="), "b after a closed"
' "$main_sock" || fail "two control clients"

[[ "$(tcp_greeting "$main_port")" == "hello one" ]] || fail "greeting before reload"

# reload by command.
sed -i 's/^greeting = .*/greeting = hello two/' "$conf"
[[ "$(ctl "$main_sock" reload)" == "ok: reloaded, generation=2" ]] || fail "reload command"
status_has "$main_sock" generation 2 || fail "generation after reload"
[[ "$(tcp_greeting "$main_port")" == "hello two" ]] || fail "greeting after reload"

# reload by SIGHUP.
sed -i 's/^greeting = .*/greeting = hello three/' "$conf"
kill -HUP "$main_pid"
wait_for "generation 3 after SIGHUP" 10 status_has "$main_sock" generation 3
[[ "$(tcp_greeting "$main_port")" == "hello three" ]] || fail "greeting after SIGHUP"

# A bad configuration, by command and by SIGHUP: refused, the old one kept.
good_conf="$(cat "$conf")"
printf 'greeting = never\ninterval = fast\n' >"$conf"
reply="$(ctl "$main_sock" reload)"
[[ "$reply" == "error: reload failed, generation=3 kept: $conf:2: interval: 'fast' is not a number of seconds (range 0.01 to 86400)" ]] \
    || fail "bad reload: $reply"
printf 'greeting = never\n\ncolour = blue\n' >"$conf"
kill -HUP "$main_pid"
wait_for "the bad SIGHUP reload in the log" 10 grep -q "$conf:3: unknown key 'colour'" "$work/main.err"
kill -0 "$main_pid" || fail "the daemon died on a bad configuration"
status_has "$main_sock" generation 3 || fail "generation after bad reloads"
[[ "$(tcp_greeting "$main_port")" == "hello three" ]] || fail "greeting after bad reloads"
printf '%s\n' "$good_conf" >"$conf"

# A FIFO in place of the file: refused at once, by SIGHUP and by command,
# without waiting for a writer; the daemon keeps answering.
mv "$conf" "$conf.saved"
mkfifo "$conf"
kill -HUP "$main_pid"
wait_for "the FIFO refused in the log" 10 grep -q "$conf: not a regular file but a FIFO" "$work/main.err"
reply="$(ctl "$main_sock" reload)"
[[ "$reply" == "error: reload failed, generation=3 kept: $conf: not a regular file but a FIFO" ]] \
    || fail "FIFO reload: $reply"
status_has "$main_sock" generation 3 || fail "generation after a FIFO"
[[ "$(tcp_greeting "$main_port")" == "hello three" ]] || fail "greeting after a FIFO"
rm "$conf"
mv "$conf.saved" "$conf"

# A second daemon on the same control socket is refused; the first keeps it.
status=0
"$daemon_bin" --port 0 --control "$main_sock" >"$work/second.out" 2>"$work/second.err" || status=$?
[[ "$status" -eq 1 ]] || fail "second daemon on the same control socket exited with $status"
grep -q "in use" "$work/second.err" || fail "second daemon: $(cat "$work/second.err")"
status_has "$main_sock" state running || fail "first daemon lost its control socket"

# ---- SIGTERM drains: the daemon waits for the open connection ----------------------------
mkdir "$work/hold1"
"$python" -c "$py_holder" "$main_port" "$work/hold1" &
holder_pid=$!
pids+=("$holder_pid")
wait_for "the holding client to connect" 10 test -e "$work/hold1/connected"
status_has "$main_sock" connections 1 || fail "connections with the holder: $(status_of "$main_sock")"
kill -TERM "$main_pid"
wait_for "state=draining" 10 status_has "$main_sock" state draining
wait_for "new connections to be refused" 10 tcp_refused "$main_port"
# Still there, still serving the open connection, which the drain waits for
# (drain_timeout is 30 s).
kill -0 "$main_pid" || fail "the daemon exited with a connection open"
status_has "$main_sock" connections 1 || fail "connections while draining"
[[ -S "$main_sock" ]] || fail "control socket removed while draining"
touch "$work/hold1/release"
expect_exit "$holder_pid" 0
[[ "$(cat "$work/hold1/echo")" == "last words" ]] || fail "the draining connection was not served"
expect_exit "$main_pid" 0
[[ ! -e "$main_sock" ]] || fail "control socket left behind"
grep -q "SIGTERM: stopping; draining 1 connection" "$work/main.err" || fail "no drain in the log"

# ---- A drain that times out closes the connection, still exit 0 --------------------------
short_conf="$work/short.conf"
printf 'drain_timeout = 0.3\n' >"$short_conf"
start_daemon short "$short_conf" --log-level info
short_pid="$pid"
mkdir "$work/hold2"
"$python" -c "$py_holder" "$port" "$work/hold2" &
holder_pid=$!
pids+=("$holder_pid")
wait_for "the second holder to connect" 10 test -e "$work/hold2/connected"
kill -TERM "$short_pid"
expect_exit "$short_pid" 0
expect_exit "$holder_pid" 0
[[ -e "$work/hold2/closed" ]] || fail "the held connection was not closed by the daemon"
grep -q "closing 1 connection(s) still open" "$work/short.err" || fail "no forced close in the log"
[[ ! -e "$sock" ]] || fail "control socket left behind (short drain)"

# ---- stop on the control channel ----------------------------------------------------------
start_daemon ctl "$short_conf"
ctl_pid="$pid"
[[ "$(ctl "$sock" stop)" == "ok: stopping" ]] || fail "stop command"
expect_exit "$ctl_pid" 0
[[ ! -e "$sock" ]] || fail "control socket left behind (stop command)"
# Quiet by default: nothing logged at info without --log-level or log_level.
[[ ! -s "$work/ctl.err" ]] || fail "unexpected log output: $(cat "$work/ctl.err")"

# ---- A bad configuration at start is an error naming the line ----------------------------
printf 'interval = 1\ninterval = 2\n' >"$work/bad.conf"
status=0
"$daemon_bin" --port 0 --config "$work/bad.conf" >"$work/bad.out" 2>"$work/bad.err" || status=$?
[[ "$status" -eq 1 ]] || fail "bad configuration at start exited with $status"
grep -q "bad.conf:2: interval is already set on line 1" "$work/bad.err" || fail "bad config: $(cat "$work/bad.err")"

echo "muxio-daemon: ok"
