#!/usr/bin/env python3
"""A bounded soak of muxio's servers under a mixed, partly hostile load.

Starts muxio-echo, muxio-http, muxio-resp and muxio-daemon on loopback, then
for the given time drives them all at once:

  echo      muxio-loadgen ping-pong, every byte checked
  http      muxio-loadgen keep-alive GETs of a file
  resp      SET/GET/MGET pipelines, every reply checked
  daemon    its greeting-and-echo service, and SIGHUP reloads checked on its
            control channel
  hostile   slow readers (pipelined requests never read), slowloris heads
            (one byte at a time), connections reset mid-request (RST), on
            every server that speaks the protocol

Every second it samples each server's resident memory, open descriptors and
CPU time from /proc. It fails (exit status 1) when

  - a well-behaved client sees an error, a wrong byte or a refused connection;
  - a server dies, or does not exit 0 on SIGTERM at the end;
  - resident memory grows after the warm-up (median of the second half of the
    run above --rss-growth times the first half's, plus 4 MiB);
  - descriptors stay open once the load has gone (more than at the start);
  - a server uses CPU while idle (more than --idle-cpu of a core over 5 s).

It prints a table per server and, with --json, writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_WINDOW_S = 5.0
SETTLE_LIMIT_S = 30.0
HTTP_HEADER_TIMEOUT_S = 5
# Connections the soak holds open at once at most, per server: well-behaved
# clients, slow readers, slowloris heads, one being reset, one setting up.
PLANNED_CONNECTIONS = {"echo": 16 + 2, "http": 16 + 1 + 20 + 2, "resp": 2 + 1 + 2, "daemon": 1 + 1 + 2}
RSS_SLACK_KB = 4096


# ----- servers -------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_kb: int
    fds: int
    cpu_s: float


@dataclass
class Server:
    name: str
    argv: list[str]
    port_pattern: str
    work: Path
    proc: subprocess.Popen | None = None
    port: int = 0
    extra_lines: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    baseline_fds: int = 0

    def start(self, lines_wanted: int = 1) -> None:
        err = open(self.work / f"{self.name}.err", "wb")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                     cwd=self.work)
        deadline = time.monotonic() + 30
        lines = []
        while len(lines) < lines_wanted:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} did not start: {lines!r}; see {self.work / (self.name + '.err')}")
            line = self.proc.stdout.readline().decode(errors="replace").strip()
            if line:
                lines.append(line)
        match = re.search(self.port_pattern, lines[0])
        if not match:
            raise RuntimeError(f"{self.name}: no port in {lines[0]!r}")
        self.port = int(match.group(1))
        self.extra_lines = lines[1:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample(self, t: float) -> Sample | None:
        pid = self.proc.pid
        try:
            rss = 0
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
        except (FileNotFoundError, ProcessLookupError):
            return None
        sample = Sample(t, rss, fds, cpu)
        self.samples.append(sample)
        return sample

    def stop(self) -> int:
        if not self.alive():
            return self.proc.returncode if self.proc else -1
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


# ----- bookkeeping -----------------------------------------------------------


class Tally:
    """Counts per kind of load, and the errors of well-behaved clients."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []

    def add(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)
            if len(self.errors) <= 10:
                print(f"soak: error: {message}", file=sys.stderr, flush=True)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def reset(sock: socket.socket) -> None:
    """Closes with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            raise ConnectionError("connection closed early")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_line(sock: socket.socket, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("connection closed early")
        buffer += chunk
    end = buffer.index(b"\n") + 1
    line = bytes(buffer[:end])
    del buffer[:end]
    return line


# ----- well-behaved clients --------------------------------------------------


def run_loadgen(loadgen: str, port: int, mode: str, tally: Tally, stop: threading.Event, work: Path) -> None:
    result = work / f"loadgen-{mode}.json"
    args = [loadgen, "--port", str(port), "--mode", mode, "-c", "16", "-p", "2", "-d", "3", "-w", "0",
            "--progress", "never", "--json", str(result)]
    if mode == "http":
        args += ["--path", "/index.html"]
    while not stop.is_set():
        run = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        if run.returncode != 0:
            tally.error(f"muxio-loadgen --mode {mode} exited {run.returncode}: {run.stderr.decode()[-300:]}")
            continue
        figures = json.loads(result.read_text())
        tally.add(f"{mode} messages", int(figures.get("messages", 0)))
        if figures.get("errors", 0) or figures.get("mismatches", 0) or not figures.get("messages", 0):
            tally.error(f"muxio-loadgen --mode {mode}: {figures}")


def resp_command(*words: bytes) -> bytes:
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        out.append(b"$%d\r\n%s\r\n" % (len(word), word))
    return b"".join(out)


def resp_read(sock: socket.socket, buffer: bytearray):
    line = recv_line(sock, buffer)
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-", b":"):
        return kind + rest
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        while len(buffer) < size + 2:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("connection closed early")
            buffer += chunk
        value = bytes(buffer[:size])
        del buffer[:size + 2]
        return value
    if kind == b"*":
        return [resp_read(sock, buffer) for _ in range(int(rest))]
    raise ValueError(f"bad RESP line {line!r}")


def resp_client(port: int, tally: Tally, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with connect(port) as sock:
                buffer = bytearray()
                for _ in range(50):
                    keys = [b"soak:%d:%d" % (seed, rng.randrange(100)) for _ in range(8)]
                    values = [os.urandom(rng.randrange(1, 4096)).hex().encode() for _ in keys]
                    batch = b"".join(resp_command(b"SET", k, v) for k, v in zip(keys, values))
                    batch += b"".join(resp_command(b"GET", k) for k in keys)
                    batch += resp_command(b"MGET", *keys)
                    sock.sendall(batch)
                    for _ in keys:
                        if resp_read(sock, buffer) != b"+OK":
                            raise ValueError("SET did not answer +OK")
                    # Keys may repeat within a batch: the last SET wins.
                    latest = dict(zip(keys, values))
                    for key in keys:
                        if resp_read(sock, buffer) != latest[key]:
                            raise ValueError(f"GET {key!r} returned another value")
                    if resp_read(sock, buffer) != [latest[k] for k in keys]:
                        raise ValueError("MGET returned other values")
                    tally.add("resp commands", 2 * len(keys) + 1)
        except (OSError, ValueError) as error:
            tally.error(f"resp client: {error}")


def daemon_client(port: int, tally: Tally, stop: threading.Event, greeting: bytes) -> None:
    while not stop.is_set():
        try:
            with connect(port) as sock:
                buffer = bytearray()
                if greeting and recv_line(sock, buffer) != greeting + b"\n":
                    raise ValueError("no greeting")
                for index in range(20):
                    line = b"line %d %s\n" % (index, os.urandom(8).hex().encode())
                    sock.sendall(line)
                    if recv_line(sock, buffer) != line:
                        raise ValueError("echo mismatch")
                tally.add("daemon lines", 20)
        except (OSError, ValueError) as error:
            tally.error(f"daemon client: {error}")


def control(path: str, line: str) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(line.encode() + b"\n")
        buffer = bytearray()
        return recv_line(sock, buffer).decode().strip()


def generation(control_path: str) -> int:
    status = control(control_path, "status")
    match = re.search(r"\bgeneration=(\d+)", status)
    if not match:
        raise ValueError(f"no generation in status {status!r}")
    return int(match.group(1))


def daemon_reloads(daemon: Server, control_path: str, tally: Tally, stop: threading.Event) -> None:
    while not stop.wait(2.0):
        try:
            before = generation(control_path)
            daemon.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and generation(control_path) == before:
                time.sleep(0.05)
            after = generation(control_path)
            if after <= before:
                raise ValueError(f"SIGHUP did not reload: generation {before}, then {after}")
            tally.add("daemon reloads")
        except (OSError, ValueError) as error:
            tally.error(f"daemon reload: {error}")


# ----- hostile clients ---------------------------------------------------------
# Their connections may be closed or reset by the server at any point: that
# is the server defending itself, not an error. What counts is that the
# servers' memory, descriptors and CPU stay bounded and that well-behaved
# clients are served meanwhile.


def quietly(action) -> None:
    try:
        action()
    except OSError:
        pass


def slow_reader(port: int, request: bytes, copies: int, hold_s: float, tally: Tally, stop: threading.Event,
                what: str) -> None:
    while not stop.is_set():
        def one():
            with connect(port) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(hold_s)
                try:
                    sock.sendall(request * copies)
                except socket.timeout:
                    pass  # the server stopped reading us: back-pressure works
                stop.wait(hold_s)
        quietly(one)
        tally.add(what)


def slowloris(port: int, head: bytes, connections: int, byte_every_s: float, tally: Tally,
              stop: threading.Event) -> None:
    while not stop.is_set():
        socks = []
        for _ in range(connections):
            try:
                socks.append(connect(port))
            except OSError:
                break
        for index in range(len(head) * 4):
            if stop.wait(byte_every_s):
                break
            for sock in list(socks):
                try:
                    sock.send(head[index % len(head):index % len(head) + 1])
                except OSError:
                    socks.remove(sock)  # closed by the server: its deadline worked
                    tally.add("slowloris closed by server")
            if not socks:
                break
        for sock in socks:
            quietly(sock.close)
        tally.add("slowloris rounds")


def resetter(ports_and_requests: list[tuple[int, bytes]], tally: Tally, stop: threading.Event) -> None:
    rng = random.Random(7)
    while not stop.wait(0.01):
        port, request = rng.choice(ports_and_requests)

        def one():
            sock = connect(port)
            sock.sendall(request[:rng.randrange(1, len(request) + 1)])
            reset(sock)
        quietly(one)
        tally.add("resets")


# ----- the run ----------------------------------------------------------------------


def find_binary(args, name: str) -> str:
    explicit = getattr(args, name.replace("muxio-", ""))
    path = Path(explicit) if explicit else Path(args.bin_dir) / name
    if not path.is_file():
        sys.exit(f"soak: {path} not found (build the apps, or pass --bin-dir or --{name.replace('muxio-', '')})")
    return str(path.resolve())


def summarize(server: Server, load_start: float, warm: float, load_end: float, idle_cpu: float) -> dict:
    during = [s for s in server.samples if warm <= s.t <= load_end]
    half = len(during) // 2
    first = statistics.median(s.rss_kb for s in during[:half]) if half else 0
    second = statistics.median(s.rss_kb for s in during[half:]) if half else 0
    return {
        "rss_kb_start": server.samples[0].rss_kb if server.samples else 0,
        "rss_kb_first_half": first,
        "rss_kb_second_half": second,
        "rss_kb_max": max((s.rss_kb for s in server.samples), default=0),
        "fds_baseline": server.baseline_fds,
        "fds_max": max((s.fds for s in server.samples), default=0),
        "fds_end": server.samples[-1].fds if server.samples else 0,
        "cpu_s_load": round(next((s.cpu_s for s in reversed(server.samples) if s.t <= load_end), 0.0) -
                            next((s.cpu_s for s in server.samples if s.t >= load_start), 0.0), 2),
        "idle_cpu_fraction": round(idle_cpu, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="how long the load runs (default 300)")
    parser.add_argument("--bin-dir", default="build/release/apps", help="where the app binaries are")
    for name in ("echo", "http", "resp", "daemon", "loadgen"):
        parser.add_argument(f"--{name}", help=f"path of muxio-{name} (default: BIN_DIR/muxio-{name})")
    parser.add_argument("--rss-growth", type=float, default=1.2,
                        help="allowed ratio of the second half's median RSS to the first half's (default 1.2)")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="do not judge memory growth (for sanitizer builds, whose runtimes keep freed memory "
                             "in quarantine and grow shadow memory; LeakSanitizer checks at exit instead)")
    parser.add_argument("--idle-cpu", type=float, default=0.02,
                        help="allowed CPU while idle, as a fraction of one core (default 0.02)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    binaries = {name: find_binary(args, name) for name in
                ("muxio-echo", "muxio-http", "muxio-resp", "muxio-daemon", "muxio-loadgen")}
    work = Path(tempfile.mkdtemp(prefix="muxio-soak-"))
    root = work / "www"
    root.mkdir()
    (root / "index.html").write_bytes(b"<!doctype html><title>soak</title>" + b"x" * 2000)
    greeting = b"hello from soak"
    config = work / "daemon.conf"
    config.write_text(f'interval = 1\ngreeting = "{greeting.decode()}"\ndrain_timeout = 1\n')
    control_path = str(work / "control.sock")

    servers = {
        "echo": Server("echo", [binaries["muxio-echo"], "--port", "0"], r":(\d+) \(", work),
        # A short head deadline, so the slowloris clients meet it within a short run.
        "http": Server("http", [binaries["muxio-http"], "--port", "0", "--root", str(root), "--header-timeout",
                                str(HTTP_HEADER_TIMEOUT_S)], r"^(\d+)$", work),
        "resp": Server("resp", [binaries["muxio-resp"], "--port", "0"], r":(\d+) \(", work),
        "daemon": Server("daemon", [binaries["muxio-daemon"], "--port", "0", "--config", str(config),
                                    "--control", control_path], r":(\d+)$", work),
    }
    failures: list[str] = []
    report = None
    tally = Tally()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    start = time.monotonic()
    try:
        for name, server in servers.items():
            server.start(lines_wanted=2 if name == "daemon" else 1)
        time.sleep(0.5)
        for server in servers.values():
            server.baseline_fds = server.sample(time.monotonic() - start).fds

        ports = {name: server.port for name, server in servers.items()}
        http_get = b"GET /index.html HTTP/1.1\r\nHost: soak\r\n\r\n"
        resp_get = resp_command(b"GET", b"soak:big")
        with connect(ports["resp"]) as sock:  # a large value for the slow RESP readers
            sock.sendall(resp_command(b"SET", b"soak:big", b"v" * (256 * 1024)))
            resp_read(sock, bytearray())

        def spawn(target, *targs):
            thread = threading.Thread(target=target, args=targs, daemon=True)
            thread.start()
            threads.append(thread)

        spawn(run_loadgen, binaries["muxio-loadgen"], ports["echo"], "echo", tally, stop, work)
        spawn(run_loadgen, binaries["muxio-loadgen"], ports["http"], "http", tally, stop, work)
        for seed in range(2):
            spawn(resp_client, ports["resp"], tally, stop, seed)
        spawn(daemon_client, ports["daemon"], tally, stop, greeting)
        spawn(daemon_reloads, servers["daemon"], control_path, tally, stop)
        spawn(slow_reader, ports["http"], http_get, 2000, 2.0, tally, stop, "http slow readers")
        spawn(slow_reader, ports["resp"], resp_get, 200, 2.0, tally, stop, "resp slow readers")
        spawn(slowloris, ports["http"], b"GET / HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"a" * 64, 20, 0.5, tally, stop)
        spawn(resetter, [(ports["echo"], b"x" * 100), (ports["http"], http_get), (ports["resp"], resp_get),
                         (ports["daemon"], b"hello\n")], tally, stop)

        load_start = time.monotonic() - start
        warm = load_start + min(30.0, args.seconds / 5)
        print(f"soak: load for {args.seconds:.0f} s (warm-up {warm - load_start:.0f} s), work dir {work}", flush=True)
        while time.monotonic() - start < load_start + args.seconds:
            time.sleep(1.0)
            now = time.monotonic() - start
            for name, server in servers.items():
                if not server.alive() and f"{name} died" not in failures:
                    failures.append(f"{name} died (exit {server.proc.returncode})")
                elif server.alive():
                    server.sample(now)
            if failures:
                break
        load_end = time.monotonic() - start
        stop.set()
        for thread in threads:
            thread.join(timeout=70)

        # Descriptors back to where they started once every client is gone.
        settle_deadline = time.monotonic() + SETTLE_LIMIT_S
        while time.monotonic() < settle_deadline:
            if all(server.sample(time.monotonic() - start).fds <= server.baseline_fds
                   for server in servers.values() if server.alive()):
                break
            time.sleep(0.5)

        # Idle: no client at all for a few seconds.
        idle_before = {name: s.sample(time.monotonic() - start) for name, s in servers.items() if s.alive()}
        time.sleep(IDLE_WINDOW_S)
        idle = {}
        for name, server in servers.items():
            after = server.sample(time.monotonic() - start) if server.alive() else None
            if after and idle_before.get(name):
                idle[name] = (after.cpu_s - idle_before[name].cpu_s) / IDLE_WINDOW_S

        report = {"seconds": args.seconds, "counts": tally.counts, "errors": tally.errors[:50], "servers": {}}
        print(f"\n{'server':<8} {'RSS MiB start/half1/half2/max':>30} {'fds base/max/end':>17} "
              f"{'CPU s':>7} {'idle CPU':>9}")
        for name, server in servers.items():
            figures = summarize(server, load_start, warm, load_end, idle.get(name, 0.0))
            report["servers"][name] = figures
            mib = [figures[k] / 1024 for k in ("rss_kb_start", "rss_kb_first_half", "rss_kb_second_half",
                                               "rss_kb_max")]
            print(f"{name:<8} {' / '.join(f'{m:.1f}' for m in mib):>30} "
                  f"{figures['fds_baseline']:>5}/{figures['fds_max']}/{figures['fds_end']:<6} "
                  f"{figures['cpu_s_load']:>7.1f} {100 * figures['idle_cpu_fraction']:>8.2f}%")
            if (not args.no_memory_check and
                    figures["rss_kb_second_half"] > args.rss_growth * figures["rss_kb_first_half"] + RSS_SLACK_KB):
                failures.append(f"{name}: resident memory grew after the warm-up "
                                f"({mib[1]:.1f} MiB, then {mib[2]:.1f} MiB)")
            bound = figures["fds_baseline"] + 2 * PLANNED_CONNECTIONS[name] + 4
            if figures["fds_max"] > bound:
                failures.append(f"{name}: {figures['fds_max']} descriptors open at the peak, more than two per "
                                f"connection the soak holds (at most {bound})")
            if figures["fds_end"] > figures["fds_baseline"]:
                failures.append(f"{name}: {figures['fds_end'] - figures['fds_baseline']} descriptors still open "
                                f"{SETTLE_LIMIT_S:.0f} s after the load ended")
            if figures["idle_cpu_fraction"] > args.idle_cpu:
                failures.append(f"{name}: {100 * figures['idle_cpu_fraction']:.1f}% of a core while idle")
        print("\nload: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.counts.items())))
        needed_counts = ["echo messages", "http messages", "resp commands", "daemon lines", "daemon reloads"]
        if args.seconds >= 3 * HTTP_HEADER_TIMEOUT_S:
            needed_counts.append("slowloris closed by server")
        for needed in needed_counts:
            if not tally.counts.get(needed):
                failures.append(f"no {needed} were served")
        if tally.errors:
            failures.append(f"{len(tally.errors)} errors seen by well-behaved clients (first: {tally.errors[0]})")
    finally:
        stop.set()
        for name, server in servers.items():
            if server.proc is not None:
                status = server.stop()
                if status != 0:
                    failures.append(f"{name} exited {status} on SIGTERM; stderr in {work / (name + '.err')}")

    if args.json and report is not None:
        report["failures"] = failures
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if failures:
        print("\nsoak: FAILED", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print("\nsoak: passed")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
