#!/usr/bin/env python3
"""example-coroutine-client against small servers of the test's own on
loopback: replies read, the deadline on a reply, the stop by SIGTERM, SIGINT
and --run-for (a pending read cancelled cleanly), and bad input.

    coroutine_client_test.py EXAMPLE_COROUTINE_CLIENT
"""

import signal
import socket
import sys
import threading

from harness import Program, check, main, run

client = sys.argv[1]


class Server:
    """A loopback TCP server in a thread. `mode`: "echo" answers each line with
    "echo: LINE"; "silent" reads and never answers; "close" closes after the
    first line; "flood" answers with an endless line. `got_request` is set when
    the first line arrives."""

    def __init__(self, mode):
        self.mode = mode
        self.got_request = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection):
        buffer = b""
        try:
            while chunk := connection.recv(4096):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.got_request.set()
                    if self.mode == "echo":
                        connection.sendall(b"echo: " + line + b"\n")
                    elif self.mode == "close":
                        connection.close()
                        return
                    elif self.mode == "flood":
                        connection.sendall(b"x" * (256 * 1024))
        except OSError:
            pass

    def close(self):
        self.listener.close()
        for connection in self.connections:
            connection.close()


def sends_each_request_and_prints_each_reply():
    server = Server("echo")
    with Program([client, "--port", str(server.port), "--count", "3"]) as program:
        program.expect(rf"connected to 127\.0\.0\.1:{server.port}")
        for n in (1, 2, 3):
            program.expect(rf"reply {n}: echo: ping {n}")
        rest = program.finish(0)
        check(rest == ["done: 3 replies"], f"unexpected end: {rest}")
    server.close()


def sigterm_stops_a_client_that_runs_until_stopped():
    server = Server("echo")
    with Program([client, "--port", str(server.port), "--count", "0", "--message", "hello"]) as program:
        program.expect(r"reply 2: echo: hello 2")
        program.send_signal(signal.SIGTERM)
        last = [line for line in program.finish(0) if not line.startswith("reply ")]
        check(len(last) == 1 and last[0].startswith("stopped by signal 15: "), f"unexpected end: {last}")
    server.close()


def sigint_cancels_a_pending_read_at_once():
    server = Server("silent")
    with Program([client, "--port", str(server.port), "--timeout", "600"]) as program:
        program.expect(r"connected to .*")
        check(server.got_request.wait(20), "the server never got the request")
        rest = program.stop(signal.SIGINT, 0)
        check(rest == ["stopped by signal 2: 0 replies"], f"unexpected end: {rest}")
    server.close()


def run_for_requests_the_stop_through_the_token():
    server = Server("silent")
    with Program([client, "--port", str(server.port), "--timeout", "600", "--run-for", "0.2"]) as program:
        # Stopped while connecting or, far more likely, while waiting for the reply.
        rest = program.finish(0)
        check(rest[-1] == "stopped after --run-for: 0 replies", f"unexpected end: {rest}")
    server.close()


def a_reply_that_misses_its_deadline_is_an_error():
    server = Server("silent")
    status, out, err = run([client, "--port", str(server.port), "--timeout", "0.2"])
    check(status == 1, f"exit status {status}")
    check("no reply to request 1 within 200 ms" in err, f"stderr: {err!r}")
    server.close()


def a_server_that_closes_before_replying_is_an_error():
    server = Server("close")
    status, out, err = run([client, "--port", str(server.port)])
    check(status == 1, f"exit status {status}")
    check("closed the connection before replying to request 1" in err, f"stderr: {err!r}")
    server.close()


def an_endless_reply_line_is_refused():
    server = Server("flood")
    status, out, err = run([client, "--port", str(server.port)])
    check(status == 1, f"exit status {status}")
    check("a reply line is longer than 65536 bytes" in err, f"stderr: {err!r}")
    server.close()


def a_refused_connection_is_an_error():
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    port = unused.getsockname()[1]  # bound, never listening: connections are refused
    status, out, err = run([client, "--port", str(port)])
    unused.close()
    check(status == 1, f"exit status {status}")
    check(f"127.0.0.1:{port}" in err and "refused" in err, f"stderr: {err!r}")


def bad_command_lines_are_refused():
    for argv, needle in (([], "--port is required"), (["--port", "0"], "--port"),
                         (["--port", "7", "--message", "a\nb"], "--message must be one line"),
                         (["--port", "7", "--timeout", "0"], "--timeout"),
                         (["--port", "7", "--bogus"], "--bogus")):
        status, out, err = run([client] + argv)
        check(status == 2, f"{argv}: exit status {status}")
        check(needle in err, f"{argv}: stderr {err!r}")
    status, out, err = run([client, "--help"])
    check(status == 0 and "--timeout" in out and "stop_token" in out, f"--help: {status} {out!r}")


main([sends_each_request_and_prints_each_reply, sigterm_stops_a_client_that_runs_until_stopped,
      sigint_cancels_a_pending_read_at_once, run_for_requests_the_stop_through_the_token,
      a_reply_that_misses_its_deadline_is_an_error, a_server_that_closes_before_replying_is_an_error,
      an_endless_reply_line_is_refused, a_refused_connection_is_an_error, bad_command_lines_are_refused])
