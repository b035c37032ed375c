#!/usr/bin/env python3
"""muxio-resp against the real Redis client.

Usage: redis_cli_test.py PATH/TO/muxio-resp

Starts the server on a port the kernel picks (--port 0; the port is read
from its first line on stdout), drives every command through redis-cli,
observes a key expiring, pipelines through `redis-cli --pipe` and through one
raw write, sends malformed and oversized frames over a plain socket and checks
the server answers them as Redis does and survives, runs redis-benchmark
briefly if installed, and stops the server with SIGTERM.

Bounded: every client call has a timeout and the whole run an alarm; the
server is killed on the way out whatever happens. Exit status: 0 passed,
1 failed, 77 skipped (redis-cli not installed).
"""

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

SKIP = 77
RUN_LIMIT_S = 90  # the whole script
CALL_LIMIT_S = 15  # one client invocation
MAX_BULK = 4096  # --max-bulk for this run, small so the oversize case is cheap

failures = []


def check(condition, what, detail=""):
    if condition:
        print(f"ok: {what}")
    else:
        failures.append(what)
        print(f"FAIL: {what} {detail}")


class Timeout(Exception):
    pass


def on_alarm(signum, frame):
    raise Timeout(f"the run took more than {RUN_LIMIT_S} s")


def start_server(binary, *flags):
    server = subprocess.Popen(
        [binary, "--port", "0", "--max-bulk", str(MAX_BULK), *flags],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    ready, _, _ = select.select([server.stdout], [], [], 10)
    if not ready:
        raise RuntimeError("muxio-resp printed nothing within 10 s")
    line = server.stdout.readline().decode()
    print(f"server: {line.strip()}")
    # "muxio-resp: listening on 127.0.0.1:PORT (selector NAME)"
    try:
        port = int(line.split(" (")[0].rsplit(":", 1)[1])
    except (IndexError, ValueError):
        raise RuntimeError(f"no port in {line!r}")
    return server, port


def make_cli(cli, port):
    """A function running redis-cli with arguments, returning its output
    without the blanks around it, or with lines=True as the list of lines of
    an array reply (raw mode prints one element a line, nil as empty)."""

    def run(*args, stdin=None, raw=True, lines=False):
        command = [cli, "-p", str(port)] + ([] if raw else ["--no-raw"]) + list(args)
        result = subprocess.run(command, input=stdin, capture_output=True, timeout=CALL_LIMIT_S)
        out = result.stdout.decode(errors="replace")
        if lines:
            return out[:-1].split("\n") if out.endswith("\n") else out.split("\n")
        return out.strip()

    return run


def raw_exchange(port, payload, expected_size=None, wait_for_close=False):
    """Sends `payload` in one write and collects the replies: until
    `expected_size` bytes came, or until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_LIMIT_S) as s:
        s.sendall(payload)
        received = b""
        deadline = time.monotonic() + CALL_LIMIT_S
        while time.monotonic() < deadline:
            if expected_size is not None and len(received) >= expected_size and not wait_for_close:
                break
            chunk = s.recv(65536)
            if not chunk:
                return received, True
            received += chunk
        return received, False


def resp_array(*words):
    out = b"*%d\r\n" % len(words)
    for word in words:
        data = word if isinstance(word, bytes) else str(word).encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def test_commands(cli):
    check(cli("PING") == "PONG", "PING")
    check(cli("PING", "hello") == "hello", "PING message")
    check(cli("ECHO", "hi there") == "hi there", "ECHO")
    check(cli("SET", "k", "v") == "OK", "SET")
    check(cli("GET", "k") == "v", "GET")
    check(cli("GET", "missing") == "", "GET of a missing key is nil")
    check(cli("SET", "k", "w", "NX") == "", "SET NX on an existing key")
    check(cli("SET", "fresh", "1", "XX") == "", "SET XX on a missing key")
    check(cli("SET", "k", "w", "XX", "GET") == "v", "SET XX GET")
    check(cli("SET", "n", "10") == "OK", "SET a number")
    check(cli("INCR", "n") == "11", "INCR")
    check(cli("INCRBY", "n", "-20") == "-9", "INCRBY")
    check(cli("DECR", "n") == "-10", "DECR")
    check(cli("DECRBY", "n", "5") == "-15", "DECRBY")
    check(cli("INCR", "k") == "ERR value is not an integer or out of range", "INCR of a non-integer")
    check(cli("SET", "max", "9223372036854775807") == "OK", "SET INT64_MAX")
    check(cli("INCR", "max") == "ERR increment or decrement would overflow", "INCR overflow")
    check(cli("MSET", "a", "1", "b", "2") == "OK", "MSET")
    check(cli("MGET", "a", "nothing", "b", lines=True) == ["1", "", "2"], "MGET")
    check(cli("MSET", "a", "1", "b") == "ERR wrong number of arguments for 'mset' command", "MSET odd")
    check(cli("EXISTS", "a", "b", "nothing", "a") == "3", "EXISTS")
    check(cli("DEL", "a", "nothing") == "1", "DEL")
    check(cli("TTL", "b") == "-1", "TTL without expiry")
    check(cli("TTL", "nothing") == "-2", "TTL of a missing key")
    check(cli("EXPIRE", "b", "100") == "1", "EXPIRE")
    check(cli("TTL", "b") in ("100", "99"), "TTL after EXPIRE")
    check(cli("EXPIRE", "nothing", "100") == "0", "EXPIRE of a missing key")
    check(cli("EXPIRE", "b", "100", "NX") == "0", "EXPIRE NX")
    check(cli("PEXPIRE", "b", "5000") == "1", "PEXPIRE")
    pttl = cli("PTTL", "b")
    check(pttl.isdigit() and 4000 < int(pttl) <= 5000, "PTTL", pttl)
    check(cli("PERSIST", "b") == "1", "PERSIST")
    check(cli("SET", "e", "v", "EX", "50") == "OK", "SET EX")
    check(cli("TTL", "e") in ("50", "49"), "TTL after SET EX")
    check(cli("SET", "e", "v", "EX", "0") == "ERR invalid expire time in 'set' command", "SET EX 0")
    check(cli("SET", "e", "v", "EX", "soon") == "ERR value is not an integer or out of range", "SET EX soon")
    check(cli("SET", "e", "v", "PX") == "ERR syntax error", "SET PX without a value")
    check(cli("DBSIZE") == "5", "DBSIZE")  # k n max b e
    check(cli("SELECT", "0") == "OK", "SELECT 0")
    check(cli("GET") == "ERR wrong number of arguments for 'get' command", "arity error")
    check(cli("EXPIRE", "k") == "ERR wrong number of arguments for 'expire' command", "EXPIRE arity error")
    check(
        cli("foo", "bar", "baz") == "ERR unknown command 'foo', with args beginning with: 'bar' 'baz'",
        "unknown command",
    )
    check(cli("CONFIG", "GET", "save", lines=True) == ["save", ""], "CONFIG GET save")
    check(cli("CONFIG", "GET", "appendonly", lines=True) == ["appendonly", "no"], "CONFIG GET appendonly")
    check(cli("COMMAND", "COUNT").isdigit(), "COMMAND COUNT")
    check(cli("FLUSHALL") == "OK", "FLUSHALL")
    check(cli("DBSIZE") == "0", "DBSIZE after FLUSHALL")
    check(cli("QUIT") == "OK", "QUIT")
    # The formatted (tty-style) output too, as an interactive user sees it.
    check(cli("GET", "nothing", raw=False) == "(nil)", "redis-cli's formatted nil")
    # Commands read from stdin, one per line, as redis-cli takes them.
    check(cli(stdin=b"SET s 1\nINCR s\nGET s\n", lines=True) == ["OK", "2", "2"], "commands from stdin")


def test_expiry(cli):
    started = time.monotonic()
    check(cli("SET", "short", "v", "PX", "50") == "OK", "SET PX 50")
    deadline = started + 10
    ttl = None
    while time.monotonic() < deadline:
        ttl = cli("TTL", "short")
        if ttl == "-2":
            break
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    check(ttl == "-2", "the key expired", f"(TTL {ttl})")
    check(elapsed >= 0.05, "not before its 50 ms", f"({elapsed:.3f} s)")
    check(cli("GET", "short") == "", "an expired key reads as nil")


def test_pipelining(cli, port):
    check(cli("FLUSHALL") == "OK", "FLUSHALL before pipelining")
    count = 1000
    payload = b"".join(resp_array("SET", f"pk:{i}", i) for i in range(count))
    out = cli("--pipe", stdin=payload)
    check(f"errors: 0, replies: {count}" in out, "redis-cli --pipe", out)
    check(cli("GET", "pk:999") == "999", "the last pipelined SET")
    check(cli("DBSIZE") == str(count), "every pipelined SET")

    # Mixed frames in one write; every reply, in order, exact.
    payload = b"PING\r\n" + resp_array("SET", "p", "x y") + resp_array("GET", "p") + b'ECHO "a\\tb"\r\n'
    payload += resp_array("INCR", "p") + b"*0\r\n\r\n" + resp_array("EXISTS", "p", "p")
    expected = b"+PONG\r\n+OK\r\n$3\r\nx y\r\n$3\r\na\tb\r\n-ERR value is not an integer or out of range\r\n:2\r\n"
    received, _ = raw_exchange(port, payload, len(expected))
    check(received == expected, "one write of mixed requests", repr(received))


def test_malformed(cli, port):
    cases = [
        (b"*1\r\n$abc\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n:5\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
        (b'SET k "open\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
        (b"PING\r\n*1\r\n$-3\r\n", b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"),
        # Over --max-bulk: refused at the header, before any data.
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n" % (MAX_BULK + 1), b"-ERR Protocol error: invalid bulk length\r\n"),
    ]
    for payload, expected in cases:
        received, closed = raw_exchange(port, payload, wait_for_close=True)
        check(received == expected and closed, f"malformed {payload[:24]!r}", repr(received))
    # A bulk exactly at the limit is fine.
    check(cli("SET", "edge", "x" * MAX_BULK) == "OK", "a bulk string of exactly --max-bulk")

    # Garbage, a client vanishing mid-request, an abortive close: the server
    # must shrug them all off.
    raw_exchange(port, bytes(range(256)) * 4 + b"\r\n", wait_for_close=False, expected_size=1)
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_LIMIT_S) as s:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nonly a part")
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_LIMIT_S) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.sendall(resp_array("GET", "edge") * 100)
    check(cli("PING") == "PONG", "the server survives malformed input")


def test_limits(binary):
    """A second server with small limits: each closes the client that
    crosses it, as Redis does, and only that client."""
    limits = ["--max-query-buffer", "16KB", "--max-output-buffer", "64KB", "--max-clients", "3"]
    server, port = start_server(binary, *limits)
    try:
        cli = make_cli(shutil.which("redis-cli"), port)
        check(cli("CONFIG", "GET", "maxclients", lines=True) == ["maxclients", "3"], "CONFIG GET maxclients")
        check(
            cli("CONFIG", "GET", "client-query-buffer-limit", lines=True) == ["client-query-buffer-limit", "16384"],
            "CONFIG GET client-query-buffer-limit",
        )
        value = "x" * MAX_BULK
        check(cli("SET", "v", value) == "OK", "SET a value of --max-bulk")
        # 20 copies of it: over --max-output-buffer, refused before it is built.
        received, closed = raw_exchange(port, resp_array("MGET", *(["v"] * 20)), wait_for_close=True)
        check(received == b"" and closed, "an MGET over --max-output-buffer closes the client", repr(received[:64]))
        check(len(cli("MGET", "v", "v", lines=True)[0]) == MAX_BULK, "an MGET within it is answered")
        # Five values of nearly --max-bulk in one request: over --max-query-buffer.
        received, closed = raw_exchange(port, resp_array("MSET", *(["k", value] * 5)), wait_for_close=True)
        check(received == b"" and closed, "a request over --max-query-buffer closes the client", repr(received))
        check(cli("EXISTS", "k") == "0", "the refused request did nothing")

        # --max-clients: three are served, the fourth is told and closed.
        held = [socket.create_connection(("127.0.0.1", port), timeout=CALL_LIMIT_S) for _ in range(3)]
        try:
            for s in held:
                s.sendall(b"PING\r\n")
                check(s.recv(64) == b"+PONG\r\n", "a client within --max-clients is served")
            received, closed = raw_exchange(port, b"", wait_for_close=True)
            check(
                received == b"-ERR max number of clients reached\r\n" and closed,
                "the client over --max-clients gets Redis's error",
                repr(received),
            )
        finally:
            for s in held:
                s.close()
        # The server may see the next connection before the three closes.
        deadline = time.monotonic() + CALL_LIMIT_S
        while cli("PING") != "PONG" and time.monotonic() < deadline:
            time.sleep(0.01)
        check(cli("PING") == "PONG", "a slot freed is served again")
        check(server.poll() is None, "the server with small limits is still running")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=CALL_LIMIT_S)

    result = subprocess.run(
        [binary, "--port", "0", "--max-bulk", "1MB", "--max-query-buffer", "64KB"],
        capture_output=True,
        timeout=CALL_LIMIT_S,
    )
    message = result.stderr.decode(errors="replace")
    check(result.returncode == 2 and "--max-query-buffer" in message, "inconsistent limits are refused", message)


def test_benchmark(port):
    bench = shutil.which("redis-benchmark")
    if not bench:
        print("note: redis-benchmark not installed; skipping that part")
        return
    result = subprocess.run(
        [bench, "-p", str(port), "-n", "2000", "-c", "4", "-P", "4", "-q", "-t", "set,get,incr,mset"],
        capture_output=True,
        timeout=60,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    check(result.returncode == 0, "redis-benchmark ran", output[-500:])
    check("Could not fetch server CONFIG" not in output, "redis-benchmark's CONFIG GET", output[-500:])
    check("ERR" not in output, "redis-benchmark saw no error", output[-500:])


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    cli_path = shutil.which("redis-cli")
    if not cli_path:
        print("SKIP: redis-cli is not installed (Debian: redis-tools)")
        return SKIP
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(RUN_LIMIT_S)
    server = None
    try:
        server, port = start_server(sys.argv[1])
        cli = make_cli(cli_path, port)
        test_commands(cli)
        test_expiry(cli)
        test_pipelining(cli, port)
        test_malformed(cli, port)
        test_limits(sys.argv[1])
        test_benchmark(port)
        check(server.poll() is None, "the server is still running")
        server.send_signal(signal.SIGTERM)
        status = server.wait(timeout=CALL_LIMIT_S)
        check(status == 0, "SIGTERM stops the server cleanly", f"(exit status {status})")
    except (Timeout, RuntimeError, subprocess.TimeoutExpired, OSError) as error:
        failures.append(str(error))
        print(f"FAIL: {error}")
    finally:
        signal.alarm(0)
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
    if failures:
        print(f"{len(failures)} check(s) failed: {failures}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
