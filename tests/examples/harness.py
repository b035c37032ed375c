"""What the example tests share: start a program, wait for a line of its
stdout against a deadline, talk to it on loopback, then stop it with a
signal and check how it exited. Every wait is bounded; none sleeps a fixed
time and hopes."""

import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time

# How long any one wait may take: generous, for sanitizer builds on a busy
# machine. A passing test never waits this long.
DEADLINE = 20.0


class TestFailure(Exception):
    pass


# What a sanitizer build prints on a finding. Its exit status may be the one a
# test expects (ASan's is 1, as an example's failure), so stderr is read too.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:", "WARNING: ThreadSanitizer")


def check_sanitizers(name, stderr):
    for marker in SANITIZER_MARKERS:
        if marker in stderr:
            fail(f"{name}: a sanitizer reported a finding:\n{stderr}")


def fail(message):
    raise TestFailure(message)


def check(condition, message):
    if not condition:
        fail(message)


class Program:
    """A program under test, its stdout read line by line."""

    def __init__(self, argv, stdin=False):
        self.name = os.path.basename(argv[0])
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._stderr)
        self._buffer = b""
        self.seen = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if exc[0] is not None:
            sys.stderr.write(f"--- {self.name} stdout so far:\n" + "\n".join(self.seen) + "\n")
            sys.stderr.write(f"--- {self.name} stderr:\n{self.stderr()}\n")
        return False

    def read_line(self, timeout=DEADLINE):
        """The next line of stdout, or None at its end."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"{self.name}: no line on stdout within {timeout} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    if self._buffer:
                        line, self._buffer = self._buffer, b""
                        self.seen.append(line.decode())
                        return self.seen[-1]
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        self.seen.append(line.decode())
        return self.seen[-1]

    def expect(self, pattern, timeout=DEADLINE):
        """Reads lines until one matches `pattern` in full; the match."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(deadline - time.monotonic(), 0.001))
            if line is None:
                fail(f"{self.name}: stdout ended before a line matching {pattern!r}")
            match = re.fullmatch(pattern, line)
            if match:
                return match

    def write(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def close_stdin(self):
        self.proc.stdin.close()

    def send_signal(self, signo):
        self.proc.send_signal(signo)

    def wait(self, timeout=DEADLINE):
        """Waits for the program to exit; its status (-N for signal N)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            fail(f"{self.name} did not exit within {timeout} s")

    def finish(self, expected_status, timeout=DEADLINE):
        """Waits for the exit, checks its status; the rest of stdout."""
        status = self.wait(timeout)
        rest = []
        while (line := self.read_line()) is not None:
            rest.append(line)
        check_sanitizers(self.name, self.stderr())
        check(status == expected_status, f"{self.name} exited with {status}, expected {expected_status}")
        return rest

    def stop(self, signo=signal.SIGTERM, expected_status=0):
        """Sends `signo`, then finish()."""
        self.send_signal(signo)
        return self.finish(expected_status)

    def stderr(self):
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")


def run(argv, timeout=DEADLINE):
    """Runs a program to its end: (status, stdout, stderr)."""
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail(f"{argv} did not exit within {timeout} s")
    check_sanitizers(os.path.basename(argv[0]), done.stderr.decode())
    return done.returncode, done.stdout.decode(), done.stderr.decode()


class LineClient:
    """A loopback TCP client that speaks lines."""

    def __init__(self, port, host="127.0.0.1", rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect(), so the window the client announces stays small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(DEADLINE)
        self.sock.connect((host, port))
        self._buffer = b""

    def send(self, text):
        self.sock.sendall(text.encode() if isinstance(text, str) else text)

    def read_line(self, timeout=DEADLINE):
        """The next line without its newline, or None once the server closed."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"no line from the server within {timeout} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                fail(f"no line from the server within {timeout} s")
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def expect(self, pattern, timeout=DEADLINE):
        """Reads lines until one matches `pattern` in full; the match."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.read_line(max(deadline - time.monotonic(), 0.001))
            if line is None:
                fail(f"the server closed before a line matching {pattern!r}")
            match = re.fullmatch(pattern, line)
            if match:
                return match

    def expect_closed(self, timeout=DEADLINE):
        """Reads until the server closes; the lines read meanwhile."""
        lines = []
        deadline = time.monotonic() + timeout
        while (line := self.read_line(max(deadline - time.monotonic(), 0.001))) is not None:
            lines.append(line)
        return lines

    def close(self):
        self.sock.close()


def main(cases):
    """Runs each case (a function) in order and reports; exit 1 on a failure."""
    for case in cases:
        name = case.__name__.replace("_", " ")
        start = time.monotonic()
        try:
            case()
        except TestFailure as failure:
            print(f"FAIL: {name}: {failure}", file=sys.stderr)
            sys.exit(1)
        print(f"ok: {name} ({time.monotonic() - start:.2f} s)")
