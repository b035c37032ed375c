#!/usr/bin/env python3
"""muxio-echo, muxio-http and muxio-resp with --threads, driven as a user runs them.

Usage: threads_test.py CASE PATH/TO/BINARY

Each case starts the server on a port the kernel picks (--port 0, read from
its first line on stdout), connects 64 clients, checks what they get, stops
it with a signal and checks it drains and exits 0 with summed counters.
With SO_REUSEPORT the kernel picks each connection's reactor by a hash of its
addresses and ports: with 64 connections and 2 threads, all on one thread is
a chance of 2 in 2^64, so "both threads served some" is asserted, not hoped.

Bounded: every socket has a timeout, every wait a deadline, the whole run an
alarm; the server is killed on the way out whatever happens. Exit status:
0 passed, 1 failed.
"""

import re
import select
import signal
import socket
import subprocess
import sys
import time

RUN_LIMIT_S = 100
IO_LIMIT_S = 10
CLIENTS = 64


class Timeout(Exception):
    pass


def on_alarm(signum, frame):
    raise Timeout(f"the run took more than {RUN_LIMIT_S} s")


def start(argv, env=None):
    """Starts a server and returns (process, first stdout line)."""
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    ready, _, _ = select.select([server.stdout], [], [], IO_LIMIT_S)
    if not ready:
        raise RuntimeError(f"{argv[0]} printed nothing within {IO_LIMIT_S} s")
    return server, server.stdout.readline().decode()


def stop(server, signo):
    """Sends `signo`; returns (exit status, rest of stdout, stderr)."""
    server.send_signal(signo)
    out, err = server.communicate(timeout=IO_LIMIT_S * 3)
    return server.returncode, out.decode(), err.decode()


def connect(port):
    client = socket.create_connection(("127.0.0.1", port), timeout=IO_LIMIT_S)
    client.settimeout(IO_LIMIT_S)
    return client


def recv_exactly(client, size):
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"end of stream after {len(data)} of {size} bytes")
        data += chunk
    return data


def expect_eof(client):
    """The server closed this connection cleanly: end of file, no reset, nothing more."""
    assert client.recv(4096) == b"", "bytes after the stop"


def expect(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


def echo_on_two_threads(binary, mode):
    server, line = start([binary, "--port", "0", "--threads", "2", "--mode", mode])
    try:
        port = int(re.match(r"listening on [^ ]*:(\d+) ", line).group(1))
        clients = [connect(port) for _ in range(CLIENTS)]
        sent = 0
        for i, client in enumerate(clients):
            message = f"ping {i} ".encode() * (i + 1)
            client.sendall(message)
            expect(recv_exactly(client, len(message)) == message, f"connection {i} echoed")
            sent += len(message)
        status, out, err = stop(server, signal.SIGTERM)
        for client in clients:
            expect_eof(client)
            client.close()
        expect(status == 0, f"exit status 0 after SIGTERM (got {status}, stderr {err!r})")
        summary = re.search(
            r"stopped by signal 15: (\d+) connections, (\d+) bytes echoed, 0 accept errors, 0 connection errors, "
            r"accepted per thread: (\d+) (\d+)\n",
            out,
        )
        expect(summary is not None, f"the summary line: {out!r}")
        connections, echoed, first, second = (int(x) for x in summary.groups())
        expect(connections == CLIENTS and first + second == CLIENTS, "the counts add up to 64 connections")
        expect(echoed == sent, f"{echoed} bytes echoed, as sent")
        expect(first > 0 and second > 0, f"both threads accepted some ({first} and {second})")
    finally:
        server.kill()
        server.wait()


def echo_one_thread_summary(binary):
    server, line = start([binary, "--port", "0"])
    try:
        port = int(re.match(r"listening on [^ ]*:(\d+) ", line).group(1))
        client = connect(port)
        client.sendall(b"hello")
        expect(recv_exactly(client, 5) == b"hello", "echoed")
        status, out, _ = stop(server, signal.SIGINT)
        expect_eof(client)
        client.close()
        expect(status == 0, "exit status 0 after SIGINT")
        expect(
            out == "stopped by signal 2: 1 connections, 5 bytes echoed, 0 accept errors, 0 connection errors\n",
            f"the one-thread summary is unchanged: {out!r}",
        )
    finally:
        server.kill()
        server.wait()


def bad_thread_counts(binary):
    for value in ["0", "257", "-2", "many", "1e9"]:
        result = subprocess.run(
            [binary, "--port", "0", "--threads", value], capture_output=True, timeout=IO_LIMIT_S, text=True
        )
        expect(result.returncode == 2, f"--threads {value}: exit status 2 (got {result.returncode})")
        expect("--threads" in result.stderr, f"--threads {value}: the message names the option: {result.stderr!r}")


def read_http_response(client):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = client.recv(4096)
        if not chunk:
            raise AssertionError(f"end of stream in a response head: {head!r}")
        head += chunk
    head, _, body = head.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    return head, body + recv_exactly(client, length - len(body))


def http_on_two_threads(binary):
    env = {"MUXIO_LOG_LEVEL": "info"}
    server, line = start([binary, "--port", "0", "--threads", "2"], env=env)
    try:
        port = int(line)
        clients = [connect(port) for _ in range(CLIENTS)]
        for i, client in enumerate(clients):
            client.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head, _ = read_http_response(client)
            expect(head.startswith(b"HTTP/1.1 200"), f"connection {i} answered 200")
        # Every connection is open and idle, on one thread or the other.
        status, _, err = stop(server, signal.SIGTERM)
        for client in clients:
            expect_eof(client)
            client.close()
        expect(status == 0, f"exit status 0 after SIGTERM (got {status})")
        expect(len(re.findall("shutting down", err)) == 2, "each of the two servers shut down")
        per_thread = re.search(r"connections accepted per thread: (\d+) (\d+)", err)
        expect(per_thread is not None, f"the per-thread line: {err!r}")
        first, second = int(per_thread.group(1)), int(per_thread.group(2))
        expect(first + second == CLIENTS and first > 0 and second > 0, f"both threads served some ({first}, {second})")
        expect(
            f"stopped after {CLIENTS} connection(s), {CLIENTS} request(s)" in err, "the closing line adds up both"
        )
    finally:
        server.kill()
        server.wait()


def resp_command(*words):
    return b"".join([f"*{len(words)}\r\n".encode()] + [f"${len(w)}\r\n{w}\r\n".encode() for w in words])


def read_resp_line(client, buffer):
    while b"\r\n" not in buffer[0]:
        chunk = client.recv(4096)
        if not chunk:
            raise AssertionError("end of stream in a reply")
        buffer[0] += chunk
    line, _, buffer[0] = buffer[0].partition(b"\r\n")
    return line


def read_resp_reply(client, buffer):
    line = read_resp_line(client, buffer)
    if line.startswith(b"$") and line != b"$-1":
        return read_resp_line(client, buffer)
    return line


def resp_on_two_threads(binary):
    server, line = start([binary, "--port", "0", "--threads", "2"])
    try:
        port = int(re.search(r":(\d+) \(selector", line).group(1))
        clients = [connect(port) for _ in range(CLIENTS)]
        buffers = [[b""] for _ in clients]
        # One keyspace: a key set on one connection is read on the next,
        # which is served by the other thread about half the time.
        for i, client in enumerate(clients):
            client.sendall(resp_command("SET", f"key{i}", f"value{i}"))
            expect(read_resp_reply(client, buffers[i]) == b"+OK", f"SET key{i}")
            other = (i + 1) % CLIENTS
            clients[other].sendall(resp_command("GET", f"key{i}"))
            expect(read_resp_reply(clients[other], buffers[other]) == f"value{i}".encode(), f"GET key{i} elsewhere")
        # Commands from every connection at once, both threads busy: none lost.
        per_connection = 50
        for client in clients:
            client.sendall(resp_command("INCR", "counter") * per_connection)
        for i, client in enumerate(clients):
            for _ in range(per_connection):
                read_resp_reply(client, buffers[i])
        clients[0].sendall(resp_command("GET", "counter"))
        total = read_resp_reply(clients[0], buffers[0])
        expect(total == str(CLIENTS * per_connection).encode(), f"INCR from 64 connections counted {total!r}")
        clients[1].sendall(resp_command("DBSIZE"))
        expect(read_resp_reply(clients[1], buffers[1]) == f":{CLIENTS + 1}".encode(), "DBSIZE sees every key")
        status, _, err = stop(server, signal.SIGTERM)
        for client in clients:
            expect_eof(client)
            client.close()
        expect(status == 0, f"exit status 0 after SIGTERM (got {status}, stderr {err!r})")
    finally:
        server.kill()
        server.wait()


CASES = {
    "echo_callback": lambda b: echo_on_two_threads(b, "callback"),
    "echo_coroutine": lambda b: echo_on_two_threads(b, "coroutine"),
    "echo_one_thread": echo_one_thread_summary,
    "bad_thread_counts": bad_thread_counts,
    "http": http_on_two_threads,
    "resp": resp_on_two_threads,
}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in CASES:
        print(f"usage: {sys.argv[0]} {{{','.join(CASES)}}} BINARY", file=sys.stderr)
        return 2
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(RUN_LIMIT_S)
    try:
        CASES[sys.argv[1]](sys.argv[2])
    except (AssertionError, Timeout, RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        print(f"FAIL: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
