#!/usr/bin/env python3
"""The figures of docs/RELIABILITY.md, measured on the apps as a user runs them.

  reliability.py connections [N]   N concurrent echo connections (default: what
                                   the descriptor limit allows), every byte checked
  reliability.py fd-table-full     each server's CPU while its descriptor table
                                   is full and clients keep knocking
  reliability.py slow-readers [K]  server memory per client that pipelines
                                   requests and never reads (http, resp)
  reliability.py announced [K]     muxio-resp's memory per client that announces
                                   a 64 MiB bulk string and sends one byte
  reliability.py all               everything, as one table

Binaries come from --bin-dir (default build/release/apps). Each command prints
its figures as rows of a Markdown table; every row says what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Server:
    """One app started on port 0; the port is read from its first line."""

    PATTERNS = {"muxio-echo": r":(\d+) \(", "muxio-http": r"^(\d+)$", "muxio-resp": r":(\d+) \(",
                "muxio-daemon": r":(\d+)$"}

    def __init__(self, bin_dir: Path, name: str, *args: str, nofile: int | None = None):
        argv = [str(bin_dir / name), "--port", "0", *args]
        self.name = name
        self.work = Path(tempfile.mkdtemp(prefix="muxio-reliability-"))

        def limit():
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(self.work / "stderr", "wb"),
                                     stdin=subprocess.DEVNULL, preexec_fn=limit)
        line = self.proc.stdout.readline().decode().strip()
        match = re.search(self.PATTERNS[name], line)
        if not match:
            self.stop()
            raise RuntimeError(f"{name} did not start: {line!r}")
        self.port = int(match.group(1))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def row(*cells) -> None:
    print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)


def header() -> None:
    row("what", "measured", "command")
    row("---", "---", "---")


# ----- the measurements --------------------------------------------------------------


def connections(bin_dir: Path, count: int | None) -> None:
    limit = raise_fd_limit()
    count = count or (limit - 100) // 100 * 100
    for mode in ("callback", "coroutine"):
        with Server(bin_dir, "muxio-echo", "--mode", mode) as server:
            result = Path(server.work) / "loadgen.json"
            run = subprocess.run([str(bin_dir / "muxio-loadgen"), "--port", str(server.port), "-c", str(count),
                                  "-s", "64", "-p", "1", "-n", "20", "-d", "300", "-w", "0", "--progress", "never",
                                  "--json", str(result)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            figures = json.loads(result.read_text()) if result.exists() else {}
            ok = (run.returncode == 0 and figures.get("messages") == 20 * count and
                  figures.get("mismatches") == 0 and figures.get("errors") == 0)
            row(f"muxio-echo ({mode}): concurrent connections, each echoing 20 × 64 B checked byte for byte",
                f"{figures.get('connected', '?')} of {count} held; {figures.get('messages', 0)} messages, "
                f"{figures.get('mismatches', '?')} mismatches, {figures.get('errors', '?')} errors"
                + ("" if ok else " — FAILED"),
                f"`scripts/reliability.py connections {count}`")


def fd_table_full(bin_dir: Path) -> None:
    nofile = 64
    root = Path(tempfile.mkdtemp(prefix="muxio-reliability-www-"))
    (root / "index.html").write_text("hello\n")
    servers = [("muxio-echo", ["--mode", "callback"]), ("muxio-echo", ["--mode", "coroutine"]),
               ("muxio-http", ["--root", str(root), "--max-connections", "1000"]), ("muxio-resp", []),
               ("muxio-daemon", [])]
    for name, args in servers:
        with Server(bin_dir, name, *args, nofile=nofile) as server:
            clients = []
            for _ in range(3 * nofile):  # the server runs out of descriptors well before this
                try:
                    clients.append(connect(server.port))
                except OSError:
                    break
            time.sleep(1.0)  # let it reach the limit and pause
            before = cpu_s(server.pid)
            window = 5.0
            time.sleep(window)
            busy = (cpu_s(server.pid) - before) / window
            held = fds(server.pid)
            for sock in clients:
                sock.close()
            # Served again once descriptors are free: a new client gets an answer.
            served = False
            deadline = time.monotonic() + 10
            while not served and time.monotonic() < deadline:
                try:
                    with connect(server.port) as sock:
                        sock.settimeout(2)
                        request = {"muxio-echo": b"ping\n", "muxio-http": b"GET / HTTP/1.0\r\n\r\n",
                                   "muxio-resp": b"PING\r\n", "muxio-daemon": b""}[name]
                        if request:
                            sock.sendall(request)
                        served = bool(sock.recv(64))
                except OSError:
                    time.sleep(0.2)
            label = f"{name} {' '.join(a for a in args if a.startswith('call') or a.startswith('coro'))}".strip()
            row(f"{label}: CPU while its descriptor table is full ({nofile} descriptors, {len(clients)} clients "
                "knocking)", f"{100 * busy:.1f}% of a core, {held} descriptors open; "
                f"{'served again' if served else 'NOT served'} once clients left",
                "`scripts/reliability.py fd-table-full`")


def slow_readers(bin_dir: Path, count: int) -> None:
    raise_fd_limit()
    root = Path(tempfile.mkdtemp(prefix="muxio-reliability-www-"))
    (root / "index.html").write_bytes(b"x" * 16384)
    cases = [
        ("muxio-http", ["--root", str(root)], b"GET /index.html HTTP/1.1\r\nHost: r\r\n\r\n" * 2000, None),
        ("muxio-resp", [], b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 2000,
         b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$65536\r\n" + b"v" * 65536 + b"\r\n"),
    ]
    for name, args, request, setup in cases:
        with Server(bin_dir, name, *args) as server:
            if setup:
                with connect(server.port) as sock:
                    sock.sendall(setup)
                    sock.recv(64)
            time.sleep(0.5)
            base_rss, base_fds = rss_kb(server.pid), fds(server.pid)
            clients = []
            for _ in range(count):
                sock = connect(server.port)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                try:
                    sock.send(request)
                except BlockingIOError:
                    pass
                clients.append(sock)
            time.sleep(3.0)
            grown = rss_kb(server.pid) - base_rss
            extra_fds = fds(server.pid) - base_fds
            for sock in clients:
                sock.close()
            row(f"{name}: memory per slow reader ({count} clients pipelining 2,000 requests, never reading)",
                f"{grown / count:.0f} KiB resident each; {extra_fds / count:.1f} descriptors each",
                f"`scripts/reliability.py slow-readers {count}`")


def announced(bin_dir: Path, count: int) -> None:
    raise_fd_limit()
    with Server(bin_dir, "muxio-resp") as server:
        time.sleep(0.5)
        base = rss_kb(server.pid)
        clients = []
        for _ in range(count):
            sock = connect(server.port)
            sock.sendall(b"*2\r\n$3\r\nGET\r\n$67108864\r\nx")
            clients.append(sock)
        time.sleep(2.0)
        grown = rss_kb(server.pid) - base
        for sock in clients:
            sock.close()
        row(f"muxio-resp: memory per client announcing a 64 MiB bulk string and sending 1 byte ({count} clients)",
            f"{grown / count:.1f} KiB resident each", f"`scripts/reliability.py announced {count}`")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", default="build/release/apps")
    parser.add_argument("command", choices=["connections", "fd-table-full", "slow-readers", "announced", "all"])
    parser.add_argument("count", nargs="?", type=int)
    args = parser.parse_args()
    bin_dir = Path(args.bin_dir).resolve()
    header()
    if args.command in ("connections", "all"):
        connections(bin_dir, args.count if args.command == "connections" else None)
    if args.command in ("fd-table-full", "all"):
        fd_table_full(bin_dir)
    if args.command in ("slow-readers", "all"):
        slow_readers(bin_dir, args.count if args.command == "slow-readers" and args.count else 200)
    if args.command in ("announced", "all"):
        announced(bin_dir, args.count if args.command == "announced" and args.count else 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
