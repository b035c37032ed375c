#!/usr/bin/env python3
"""muxio-http over TLS (--tls-cert/--tls-key), driven by curl, `openssl
s_client` and Python's ssl module on loopback, with a self-signed
certificate for localhost and 127.0.0.1 made in a temporary directory.

    http_tls_test.py MUXIO_HTTP [CASE]

Runs every case, or only CASE (its function name). Exit status 0 if all
passed, 1 on a failure, 77 (CTest's skip) if curl or openssl is missing.
Every wait is bounded; none sleeps a fixed time and hopes.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from harness import DEADLINE, Program, check, fail, main, run  # noqa: E402

server_bin = sys.argv[1]
only = sys.argv[2] if len(sys.argv) > 2 else None

for tool in ("curl", "openssl"):
    if shutil.which(tool) is None:
        print(f"SKIP: {tool} is not installed")
        sys.exit(77)

work = tempfile.TemporaryDirectory(prefix="muxio-http-tls.")
cert = os.path.join(work.name, "cert.pem")
key = os.path.join(work.name, "key.pem")
other_key = os.path.join(work.name, "other-key.pem")
root = os.path.join(work.name, "root")

# The handshake timeout of the stall cases, and how long past it the server
# may take to close (a loaded machine, a sanitizer build).
HANDSHAKE_TIMEOUT = 0.3
CLOSE_SLACK = 3.0


def make_certificate():
    """A self-signed EC certificate for localhost and 127.0.0.1, its key, and
    a second key that matches nothing."""
    status, _, err = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                          "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                          "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
    check(status == 0, f"openssl req failed: {err}")
    status, _, err = run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                          "-out", other_key])
    check(status == 0, f"openssl genpkey failed: {err}")


def make_root():
    os.makedirs(root)
    with open(os.path.join(root, "hello.txt"), "wb") as f:
        f.write(b"plain text\n")
    # Large enough for many TLS records and the queue's back-pressure.
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(os.urandom(3_000_000))


class Server(Program):
    """muxio-http over TLS on an ephemeral port, logging at debug."""

    def __init__(self, *extra, handshake_timeout=None):
        argv = [server_bin, "--port", "0", "--root", root, "--tls-cert", cert, "--tls-key", key,
                "--idle-timeout", "5"]
        if handshake_timeout is not None:
            argv += ["--tls-handshake-timeout", str(handshake_timeout)]
        os.environ["MUXIO_LOG_LEVEL"] = "debug"
        try:
            super().__init__(argv + list(extra))
        finally:
            del os.environ["MUXIO_LOG_LEVEL"]
        line = self.read_line()
        if line is None or not line.isdigit():
            fail(f"muxio-http printed no port (got {line!r}); stderr:\n{self.stderr()}")
        self.port = int(line)

    def url(self, path="/", host="127.0.0.1"):
        return f"https://{host}:{self.port}{path}"

    def stop_and_check(self):
        """SIGTERM, a clean exit, and no sanitizer finding; its stderr."""
        self.stop(signal.SIGTERM, 0)
        return self.stderr()


def curl(*args):
    """curl with a time limit: (exit status, stdout bytes, stderr text)."""
    done = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "10", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=DEADLINE)
    return done.returncode, done.stdout, done.stderr.decode(errors="replace")


def trusted_curl(*args):
    return curl("--cacert", cert, *args)


def check_served(server):
    """The server still answers a verified GET /."""
    status, body, err = trusted_curl(server.url())
    check(status == 0 and body == b"Hello, World!", f"curl after the fact: exit {status}, {body!r}, {err}")


def client_context():
    context = ssl.create_default_context(cafile=cert)
    context.set_alpn_protocols(["http/1.1"])
    return context


def recv_until_closed(sock, timeout):
    """Everything the peer sends until it closes (or resets): (bytes, seconds
    it took). Fails if it does not close within `timeout`."""
    start = time.monotonic()
    got = b""
    sock.settimeout(timeout)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        fail(f"the server did not close the connection within {timeout} s")
    return got, time.monotonic() - start


class MemoryTls:
    """A TLS client over a plain socket through ssl.SSLObject, so a test
    decides which ciphertext bytes go out and when."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = client_context().wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def client_hello(self):
        """The first flight (the ClientHello), not sent."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.outgoing.read()

    def handshake(self):
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            self.sock.sendall(self.outgoing.read())
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = self.sock.recv(65536)
            check(data, "the server closed during the handshake")
            self.incoming.write(data)
        self.sock.sendall(self.outgoing.read())
        check(self.tls.selected_alpn_protocol() == "http/1.1",
              f"ALPN: {self.tls.selected_alpn_protocol()!r}")

    def record(self, plaintext):
        """The ciphertext of `plaintext`, not sent."""
        self.tls.write(plaintext)
        return self.outgoing.read()

    def request(self, plaintext):
        """Sends a request and reads until its whole answer (one with a
        Content-Length) came; the answer's plaintext."""
        self.sock.sendall(self.record(plaintext))
        deadline = time.monotonic() + DEADLINE
        got = b""
        while True:
            try:
                got += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                data = self.sock.recv(65536)
                check(data, f"the server closed before the answer came: {got!r}")
                self.incoming.write(data)
                continue
            head, sep, body = got.partition(b"\r\n\r\n")
            match = re.search(rb"\r\nContent-Length: (\d+)", head)
            if sep and match and len(body) >= int(match.group(1)):
                return got

    def close(self):
        self.sock.close()


# ----- cases ----------------------------------------------------------------------------------


def curl_with_the_ca_gets_get_and_head_keep_alive_a_file_byte_for_byte_and_a_404():
    with Server() as server:
        status, body, err = trusted_curl(server.url())
        check(status == 0 and body == b"Hello, World!", f"GET /: exit {status}, {body!r}, {err}")
        status, body, err = trusted_curl("--resolve", f"localhost:{server.port}:127.0.0.1",
                                         server.url(host="localhost"))
        check(status == 0 and body == b"Hello, World!", f"GET https://localhost/: exit {status}, {err}")

        status, head, err = trusted_curl("-I", server.url())
        check(status == 0, f"HEAD /: exit {status}, {err}")
        head = head.decode()
        check(head.startswith("HTTP/1.1 200") and "Content-Length: 13" in head, f"HEAD /: {head!r}")

        # One connection for three requests; curl says so in its -v trace.
        status, _, trace = trusted_curl("-v", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                                        server.url(), server.url("/hello.txt"), server.url("/big.bin"))
        check(status == 0, f"keep-alive: exit {status}, {trace}")
        check(trace.count("Re-using existing connection") == 2, f"keep-alive: curl reconnected:\n{trace}")
        check("ALPN: server accepted http/1.1" in trace, f"ALPN not agreed on:\n{trace}")

        got = os.path.join(work.name, "got.bin")
        status, _, err = trusted_curl("-o", got, server.url("/big.bin"))
        check(status == 0, f"GET /big.bin: exit {status}, {err}")
        with open(got, "rb") as a, open(os.path.join(root, "big.bin"), "rb") as b:
            check(a.read() == b.read(), "the 3 MB file came back different over TLS")

        status, code, err = trusted_curl("-o", "/dev/null", "-w", "%{http_code}", server.url("/nope.txt"))
        check(status == 0 and code == b"404", f"a missing file: exit {status}, {code!r}, {err}")
        log = server.stop_and_check()
        check("0 TLS handshake(s) failed, 0 ran out of time" in log, f"handshake counts:\n{log}")


def openssl_s_client_agrees_on_http_1_1_and_gets_an_answer_to_a_request_typed_by_hand():
    with Server() as server:
        request = b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        # -ign_eof: stdin's end does not end the session; the server's close does.
        done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}",
                               "-servername", "localhost", "-alpn", "http/1.1", "-CAfile", cert,
                               "-verify_return_error", "-ign_eof"],
                              input=request, capture_output=True, timeout=DEADLINE)
        out = done.stdout.decode(errors="replace")
        check("ALPN protocol: http/1.1" in out, f"s_client saw no ALPN http/1.1:\n{out}\n{done.stderr!r}")
        check("Verify return code: 0 (ok)" in out, f"s_client did not verify:\n{out}")
        check("HTTP/1.1 200 OK" in out and "plain text" in out, f"no answer through s_client:\n{out}")
        server.stop_and_check()


def a_handshake_that_stalls_is_closed_at_the_handshake_timeout_and_the_server_goes_on():
    with Server(handshake_timeout=HANDSHAKE_TIMEOUT) as server:
        # Nothing at all after the connect.
        silent = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
        got, took = recv_until_closed(silent, HANDSHAKE_TIMEOUT + CLOSE_SLACK)
        silent.close()
        check(got == b"", f"a silent client got {got!r}")
        check(took >= HANDSHAKE_TIMEOUT * 0.8, f"closed after {took:.3f} s, before the handshake timeout")

        # Half a ClientHello.
        client = MemoryTls(server.port)
        hello = client.client_hello()
        check(len(hello) > 100, f"a ClientHello of {len(hello)} bytes")
        client.sock.sendall(hello[:len(hello) // 2])
        got, took = recv_until_closed(client.sock, HANDSHAKE_TIMEOUT + CLOSE_SLACK)
        client.close()
        check(not got.startswith(b"\x16"), f"half a ClientHello was answered with a handshake: {got[:16]!r}")
        check(took >= HANDSHAKE_TIMEOUT * 0.8, f"closed after {took:.3f} s, before the handshake timeout")

        check_served(server)
        log = server.stop_and_check()
        check("TLS handshake not complete in time" in log, f"no debug line for the timeout:\n{log}")
        check("0 TLS handshake(s) failed, 2 ran out of time" in log, f"handshake counts:\n{log}")


def a_peer_that_drops_in_the_middle_of_a_record_leaves_the_server_serving_the_next_client():
    with Server() as server:
        client = MemoryTls(server.port)
        client.handshake()
        answer = client.request(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        check(answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"Hello, World!"), f"answer {answer!r}")
        record = client.record(b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
        client.sock.sendall(record[:len(record) // 2])
        client.close()

        # The same in the middle of a file being sent, and with a reset: the
        # first bytes of the answer say the server is sending it.
        client = MemoryTls(server.port)
        client.handshake()
        client.sock.sendall(client.record(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n"))
        client.sock.settimeout(DEADLINE)
        check(client.sock.recv(1), "the server closed instead of sending the file")
        record = client.record(b"GET / HTTP/1.1\r\n")
        client.sock.sendall(record[:len(record) - 5])
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # with unread data: a reset

        check_served(server)
        status, _, err = trusted_curl("-o", os.path.join(work.name, "again.bin"), server.url("/big.bin"))
        check(status == 0, f"GET /big.bin after the drops: exit {status}, {err}")
        log = server.stop_and_check()
        check("truncated" in log, f"the cut record is not logged as a truncated stream:\n{log}")
        check("0 TLS handshake(s) failed, 0 ran out of time" in log, f"handshake counts:\n{log}")


def curl_without_the_ca_fails_certificate_verification_and_the_server_goes_on():
    with Server() as server:
        status, _, err = curl(server.url())
        check(status == 60, f"curl without --cacert: exit {status} (expected 60, peer certificate): {err}")
        # A client that trusts the certificate but not for this name: curl
        # checks the name once its handshake is done, so on the server's side
        # it is a connection that ends without a request, not a failed handshake.
        status, _, err = trusted_curl("--resolve", f"other.example:{server.port}:127.0.0.1",
                                      server.url(host="other.example"))
        check(status == 60, f"curl for another name: exit {status} (expected 60): {err}")
        check_served(server)
        log = server.stop_and_check()
        check("TLS handshake did not complete" in log, f"no debug line for the failed handshake:\n{log}")
        check("1 TLS handshake(s) failed, 0 ran out of time" in log, f"handshake counts:\n{log}")


def plain_http_to_the_tls_port_gets_no_http_answer_and_does_not_hurt_the_server():
    with Server() as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        got, _ = recv_until_closed(sock, DEADLINE)
        sock.close()
        check(not got.startswith(b"HTTP/"), f"plain HTTP was answered as HTTP: {got!r}")
        check(got == b"" or got[0] == 0x15, f"not an alert nor nothing: {got[:16]!r}")
        check_served(server)
        log = server.stop_and_check()
        check("1 TLS handshake(s) failed" in log, f"handshake counts:\n{log}")


def a_bad_certificate_or_key_stops_the_server_at_startup_with_a_message_naming_the_file():
    # The key of another certificate.
    status, out, err = run([server_bin, "--port", "0", "--tls-cert", cert, "--tls-key", other_key])
    check(status == 1 and out == "", f"a key that does not match: exit {status}, stdout {out!r}")
    check(other_key in err and "mismatch" in err, f"a key that does not match: {err!r}")
    # The key given as the certificate.
    status, out, err = run([server_bin, "--port", "0", "--tls-cert", key, "--tls-key", key])
    check(status == 1 and out == "" and key in err, f"a key as the certificate: exit {status}, {err!r}")
    # A file that does not exist.
    missing = os.path.join(work.name, "missing.pem")
    status, out, err = run([server_bin, "--port", "0", "--tls-cert", missing, "--tls-key", key])
    check(status == 2 and out == "" and missing in err, f"a missing certificate: exit {status}, {err!r}")
    # One without the other.
    status, out, err = run([server_bin, "--port", "0", "--tls-cert", cert])
    check(status == 2 and out == "" and "--tls-key" in err, f"--tls-cert alone: exit {status}, {err!r}")
    status, out, err = run([server_bin, "--port", "0", "--tls-key", key])
    check(status == 2 and out == "" and "--tls-cert" in err, f"--tls-key alone: exit {status}, {err!r}")
    status, out, err = run([server_bin, "--port", "0", "--tls-handshake-timeout", "1"])
    check(status == 2 and out == "" and "--tls-cert" in err, f"a handshake timeout alone: exit {status}, {err!r}")


CASES = [
    curl_with_the_ca_gets_get_and_head_keep_alive_a_file_byte_for_byte_and_a_404,
    openssl_s_client_agrees_on_http_1_1_and_gets_an_answer_to_a_request_typed_by_hand,
    a_handshake_that_stalls_is_closed_at_the_handshake_timeout_and_the_server_goes_on,
    a_peer_that_drops_in_the_middle_of_a_record_leaves_the_server_serving_the_next_client,
    curl_without_the_ca_fails_certificate_verification_and_the_server_goes_on,
    plain_http_to_the_tls_port_gets_no_http_answer_and_does_not_hurt_the_server,
    a_bad_certificate_or_key_stops_the_server_at_startup_with_a_message_naming_the_file,
]

if __name__ == "__main__":
    cases = [case for case in CASES if only is None or case.__name__ == only]
    if not cases:
        print(f"no case named {only!r}", file=sys.stderr)
        sys.exit(1)
    with work:
        make_certificate()
        make_root()
        main(cases)
