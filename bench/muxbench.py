#!/usr/bin/env python3
"""muxbench: muxio against its peers (libuv, libevent, asio, and two floors:
a raw epoll loop and a raw liburing loop), in interleaved rounds, with the medians, their 90%
intervals and the verdicts of bench/benchstats.py.

    muxbench.py echo     ping-pong through every echo server (bench-echo-client)
    muxbench.py http     wrk against muxio-http, the hello servers and nginx
    muxbench.py resp     redis-benchmark against muxio-resp and redis-server
    muxbench.py loop     timers, call_soon, call_soon_threadsafe and its latency
    muxbench.py coro     a readable() round trip and a task spawn
    muxbench.py select   one select() among K idle descriptors, and Python's selectors
    muxbench.py ab       echo or http, the same server from two builds (A/B)
    muxbench.py callgrind  user-space instructions per echo message
    muxbench.py summary  the tables of earlier results files, pooled

In each round every job (one server in one configuration, its own processes)
runs once, in an order shuffled anew each round (seeded by the round, so a
rerun has the same orders). Servers run on --server-cpu, load generators on
--client-cpu. Server CPU time is read from /proc/PID/schedstat over the
measured window. Each run writes bench/results/COMMAND-DATE.json (the schema
is in bench/charts.py) and prints the tables. `muxbench.py COMMAND --help`
lists a command's options.
"""
import argparse
import datetime
import glob
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from benchstats import Comparison, median_interval, verdict_against_floor, verdict_against_peers  # noqa: E402

# The per-library programs (bench/peers/) and their variants, by server name.
PROGRAMS = {"epoll": ("epoll", None), "uring": ("uring", None), "muxio": ("muxio", None), "muxio-coro": ("muxio-coro", None),
            "muxio-coro-perconn": ("muxio-coro", "perconn"), "muxio-coro-raw": ("muxio-coro", "raw"),
            "libuv": ("libuv", None), "libevent": ("libevent", None), "asio": ("asio", None),
            "asio-coro": ("asio", "coro")}

# Who is measured (subjects), against whom (peers: the verdict; floor: the
# tolerance; floors: more floors, a ratio each but no verdict), and which
# other within-round ratios each table shows. uring is the completion floor:
# a raw liburing loop (bench/peers/uring.cpp), epoll the readiness one.
ROLES = {
    "echo": dict(subjects=("muxio", "muxio-coro"), peers=("libuv", "libevent", "asio", "asio-coro"), floor="epoll",
                 floors=("uring",),
                 pairs=(("uring", "epoll"), ("muxio-coro", "muxio"), ("muxio-coro-perconn", "muxio"), ("muxio-coro-raw", "muxio"),
                        ("asio-coro", "asio"), ("muxio-echo@io_uring", "uring"), ("muxio-echo@io_uring", "epoll"),
                        ("muxio-echo@io_uring", "muxio-echo"), ("muxio-coro-perconn@io_uring", "uring"))),
    "http": dict(subjects=("muxio-http", "muxio"), peers=("libuv", "libevent", "asio", "nginx"), floor="epoll",
                 pairs=(("muxio-http", "muxio"),)),
    "resp": dict(subjects=("muxio-resp",), peers=("redis-server",), floor=None, pairs=()),
    "loop": dict(subjects=("muxio",), peers=("libuv", "libevent", "asio"), floor=None, pairs=()),
    "coro": dict(subjects=("muxio-coro",), peers=("asio-coro",), floor=None,
                 pairs=(("muxio-coro", "muxio"), ("muxio-coro-raw", "muxio"), ("asio-coro", "asio"))),
    "select": dict(subjects=("muxio-epoll", "muxio-io_uring", "muxio-poll", "muxio-select"), peers=(),
                   floor="raw-epoll", pairs=(("muxio-epoll", "raw-epoll_pwait2"), ("python-epoll", "muxio-epoll"),
                                              ("python-poll", "muxio-poll"), ("python-select", "muxio-select"))),
    "callgrind": dict(subjects=("muxio", "muxio-coro"), peers=("libuv", "libevent", "asio", "asio-coro"),
                      floor="epoll", floors=("uring",),
                      pairs=(("uring", "epoll"), ("muxio-echo@io_uring", "uring"), ("muxio-echo@io_uring", "muxio-echo")),
                      verdicts=False),  # one deterministic count: no noise to judge
}

# Per results row: its table, group within the table, the metric the
# verdicts use (lower is better), its unit, and the other figures shown.
LOOP_METRICS = {"timers": ("cpu_ns_per_op", "CPU ns/op", (("cpu_ns_per_timer", "CPU ns/timer"), ("wall_ms", "wall ms"))),
                "soon": ("cpu_ns_per_callback", "CPU ns/callback", (("wall_ns_per_callback", "wall ns/callback"),)),
                "threadsafe": ("wall_ns_per_callback", "wall ns/callback",
                               (("cpu_ns_per_callback", "CPU ns/callback, both threads"),)),
                "latency": ("p50_us", "p50 µs", (("p99_us", "p99 µs"),)),
                "readable": ("cpu_ns_per_round_trip", "CPU ns/round trip", (("wall_ns_per_round_trip", "wall ns"),)),
                "spawn": ("cpu_ns_per_task", "CPU ns/task", (("wall_ns_per_task", "wall ns/task"),))}
LOOP_TITLES = {"timers": "Timers: schedule, cancel half, run until the rest fired",
               "soon": "call_soon: callbacks scheduling callbacks, one thread",
               "threadsafe": "call_soon_threadsafe: throughput from another thread",
               "latency": "call_soon_threadsafe: latency, call to callback",
               "readable": "Coroutines: one readable() round trip (socket-pair ping-pong)",
               "spawn": "Coroutines: spawn a trivial task and run it to completion"}


def describe(run):
    """(table, group, metric, unit, figures) of one results row."""
    kind = run["bench"]
    if kind == "echo":
        group = f"{run['connections']} conn." + (f", {run['idle']} idle" if run.get("idle") else "")
        syscalls = (("syscalls_per_msg", "syscalls/msg"),) if "syscalls_per_msg" in run else ()
        return (f"Echo: ping-pong, {run['size']}-byte messages", group, "server_cpu_ns_per_msg", "server CPU ns/msg",
                (("msgs_per_s", "messages/s"), ("p99_us", "p99 µs"), ("server_vmhwm_kb", "VmHWM KiB")) + syscalls)
    if kind == "http":
        return ("HTTP hello: wrk, 1 thread, keep-alive GET /", f"{run['connections']} conn.", "server_cpu_ns_per_req",
                "server CPU ns/req", (("rps", "requests/s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs"),
                                      ("server_vmhwm_kb", "VmHWM KiB")))
    if kind == "resp":
        return (f"RESP: redis-benchmark -c {run['clients']}", f"-P {run['pipeline']}, {run['test'].upper()}",
                "server_cpu_ns_per_req", "server CPU ns/req",
                (("rps", "requests/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")))
    if kind == "select":
        return ("select() with one active descriptor among K idle ones", f"K = {run['k']}", "ns_per_select",
                "ns per select()", (("min_ns", "fastest repetition ns"),))
    if kind == "callgrind":
        return ("User-space instructions per echo message (callgrind)", f"{run['connections']} conn.",
                "instructions_per_msg", "instructions/msg", ())
    if kind.startswith("ab-"):
        unit = "server CPU ns/msg" if kind == "ab-echo" else "server CPU ns/req"
        figures = (("user_ns_per_msg", "user-space ns/msg"),) if kind == "ab-echo" else (("rps", "requests/s"),)
        return (f"A/B, {kind[3:]}", run["config"], run["metric"], unit, figures)
    metric, unit, figures = LOOP_METRICS[kind]
    group = {"soon": f"{run.get('chains')} chains", "spawn": f"{run.get('tasks')} tasks"}.get(kind, kind)
    return LOOP_TITLES[kind], group, metric, unit, figures


# ----- Statistics and tables ------------------------------------------------------------------


def number(value):
    return value if isinstance(value, (int, float)) and value == value else None


def summarize(runs, command, tolerance=0.05):
    """The rows of the results: per table, group and server the per-round
    values of the metric, their median and 90% interval, the medians of the
    other figures, the within-round ratios and the verdicts."""
    rounds = sorted({str(r["round"]) for r in runs}, key=lambda k: [int(x) for x in k.split(":")])
    cells, order = {}, []
    for run in sorted(runs, key=lambda r: r.get("job", 0)):  # tables and groups in the order of the jobs
        table, group, metric, unit, figures = describe(run)
        key = (table, group)
        if key not in cells:
            cells[key] = dict(metric=metric, unit=unit, figures=figures, servers={})
            order.append(key)
        per = cells[key]["servers"].setdefault(run["server"], {})
        per[str(run["round"])] = run
    roles = ROLES.get(command, dict(subjects=(), peers=(), floor=None, pairs=()))
    rows = []
    for table, group in order:
        cell = cells[(table, group)]
        servers = cell["servers"]
        metric = cell["metric"]
        series = {s: [number(by_round[k].get(metric)) if k in by_round else None for k in rounds]
                  for s, by_round in servers.items()}

        def ratio(a, b):
            return Comparison([x / y for x, y in zip(series[a], series[b]) if x is not None and y])

        def median(values):
            values = [v for v in values if v is not None]
            return statistics.median(values) if values else None

        peers = [p for p in roles["peers"] if p in servers and median(series[p]) is not None]
        floors = [f for f in [roles["floor"]] + list(roles.get("floors", ())) if f]
        known = list(roles["subjects"]) + floors + list(roles["peers"])
        ordered = [s for s in known if s in servers] + sorted(s for s in servers if s not in known)
        if command == "ab":
            ordered = sorted(servers, key=lambda s: next(iter(servers[s].values()))["index"])
        for server in ordered:
            values = series[server]
            middle = median(values)
            ratios, verdicts = [], {}
            if server in roles["subjects"] and peers:
                versus = {p: ratio(server, p) for p in peers}
                best = min(peers, key=lambda p: median(series[p]))
                ratios.append(("best peer " + best, versus[best]))
                verdicts["peers"] = verdict_against_peers(versus) if roles.get("verdicts", True) else None
            floor = roles["floor"]
            if server in roles["subjects"] and floor in servers:
                ratios.append((floor, ratio(server, floor)))
                verdicts[floor] = verdict_against_floor(ratios[-1][1], tolerance) if roles.get("verdicts", True) else None
            for other in roles.get("floors", ()):
                if server in roles["subjects"] and other in servers:
                    ratios.append((other, ratio(server, other)))
            for a, b in roles["pairs"]:
                if a == server and b in servers:
                    ratios.append((b, ratio(a, b)))
            if command == "ab" and server != ordered[0]:
                ratios.append((ordered[0], ratio(server, ordered[0])))
            present = [v for v in values if v is not None]
            interval = median_interval(present)
            verdicts = {k: v for k, v in verdicts.items() if v}
            rows.append(dict(
                table=table, group=group, server=server, metric=metric, unit=cell["unit"], lower_is_better=True,
                rounds=rounds, values=values, median=middle, interval=list(interval) if interval else None,
                spread=(max(present) - min(present)) / middle if middle else None,
                figures={k: median([number(servers[server][r].get(k)) for r in servers[server]])
                         for k, _ in cell["figures"]},
                ratios=[dict(over=name, values=c.ratios, median=c.median,
                             interval=list(c.interval) if c.interval else None) for name, c in ratios],
                verdicts=verdicts))
    return rows, {table: cells[(table, group)] for table, group in order}


def fmt(value, digits=0):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}".replace(",", " ")


def print_tables(rows, cells):
    for table, cell in cells.items():
        print(f"### {table}\n")
        header = ["", "server", cell["unit"] + " [90%]", "spread"] + [label for _, label in cell["figures"]]
        header += ["within-round ratios [90%]", "verdict"]
        print("| " + " | ".join(header) + " |\n|---|---|" + "---:|" * (len(header) - 4) + "---|---|")
        for row in (r for r in rows if r["table"] == table):
            small = row["median"] is not None and row["median"] < 100
            interval = row["interval"]
            value = fmt(row["median"], 1 if small else 0)
            if interval:
                value += f" [{fmt(interval[0], 1 if small else 0)}, {fmt(interval[1], 1 if small else 0)}]"
            cells_ = [row["group"], row["server"], value,
                      "-" if row["spread"] is None else f"{row['spread'] * 100:.0f} %"]
            cells_ += [fmt(row["figures"].get(k), 2 if (row["figures"].get(k) or 100) < 100 else 0)
                       for k, _ in cell["figures"]]
            cells_.append("; ".join(f"{Comparison(r['values']).cell()} over {r['over']}" for r in row["ratios"]) or "")
            cells_.append("; ".join(f"{k}: {v}" for k, v in row["verdicts"].items()))
            print("| " + " | ".join(cells_) + " |")
        print()
    rounds = max((len(r["rounds"]) for r in rows), default=0)
    print(f"Medians over {rounds} interleaved rounds, lower is better for the metric. Intervals: distribution-free, "
          "90% for the median (5 rounds or more). Ratios: subject / reference within each round; the verdict against "
          "the peers takes each peer's interval at 1 - 0.1 / peers (bench/benchstats.py). Spread: (largest - "
          "smallest) / median over the rounds.")


def idle_memory(rows):
    """Bytes per idle connection, from VmHWM at K idle against at none."""
    by = {(r["server"], r["group"]): r["figures"].get("server_vmhwm_kb") for r in rows if r["table"].startswith("Echo")}
    lines = []
    for (server, group), kb in by.items():
        match = re.match(r"(\d+) conn\., (\d+) idle", group)
        base = by.get((server, f"{match.group(1)} conn.")) if match else None
        if match and kb is not None and base is not None:
            lines.append(f"- {server}, {group}: {fmt((kb - base) * 1024 / int(match.group(2)))} bytes per idle "
                         "connection (VmHWM)")
    if lines:
        print("\n" + "\n".join(lines))


# ----- Processes -----------------------------------------------------------------------------------


class Runner:
    """Starts, measures and stops every process of a run, on 127.0.0.1 only."""

    def __init__(self, args):
        self.args = args
        self.port = args.port_base
        self.tmp = tempfile.mkdtemp(prefix="muxbench.")
        self.servers = []
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 10 000 idle connections and more
        wanted = 20000 if hard == resource.RLIM_INFINITY else min(hard, 20000)
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    def close(self):
        for process in list(self.servers):
            self.stop(process)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def program(self, name, build=None):
        return os.path.join(build or self.args.build_dir, "bench", "bench-" + name)

    def next_port(self):
        while True:
            self.port = self.port + 1 if self.port < 60000 else self.args.port_base
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    return self.port

    def start(self, command, cpu=None, name=None):
        log = open(os.path.join(self.tmp, "server.log"), "w")
        process = subprocess.Popen(["taskset", "-c", str(self.args.server_cpu if cpu is None else cpu)] + command,
                                   stdout=log, stderr=subprocess.STDOUT, env=server_env(name))
        log.close()
        self.servers.append(process)
        return process

    def stop(self, process):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.servers.remove(process)

    def wait_listening(self, process, port):
        for _ in range(200):
            if process.poll() is not None:
                break
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return True
            time.sleep(0.05)
        with open(os.path.join(self.tmp, "server.log")) as log:
            warn(f"the server did not listen on {port}: {log.read(300)}")
        return False

    def client(self, command, cpu=None, timeout=600):
        """Output of a load generator on the client core, None if it failed."""
        cpu = self.args.client_cpu if cpu is None else cpu
        done = subprocess.run(["taskset", "-c", str(cpu)] + command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            warn(f"{' '.join(command[:3])} failed ({done.returncode}): {done.stderr[-300:]}")
            return None
        return done.stdout


def warn(text):
    print("warning: " + text, file=sys.stderr)


def pairs(text):
    """key=value pairs of a line; numbers become numbers."""
    out = {}
    for item in text.split():
        key, _, value = item.partition("=")
        for convert in (int, float, str):
            try:
                out[key] = convert(value)
                break
            except ValueError:
                pass
    return out


def cpu_ns(pid):
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def vmhwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((float(line.split()[1]) for line in status if line.startswith("VmHWM:")), None)
    except OSError:
        return None


def server_env(name):
    """The environment of a server: a name ending in @SELECTOR (muxio-echo@io_uring) runs a muxio server with
    MUXIO_SELECTOR set, which on io_uring puts its sockets on the completion path."""
    if not name or "@" not in name:
        return None
    return dict(os.environ, MUXIO_SELECTOR=name.split("@", 1)[1])


def server_command(runner, name, mode, port, build=None):
    """The command line of a server by name ("muxio", "muxio-http", ...; see server_env() for name@selector)."""
    name = name.split("@", 1)[0]
    if os.path.isfile(build or ""):  # a program copied aside, for A/B
        options = ["--mode", mode] + variant_of(name) if name in PROGRAMS else ["--bind", "127.0.0.1"]
        return [build, "--port", str(port)] + options
    if name in PROGRAMS:
        return [runner.program(PROGRAMS[name][0], build), "--mode", mode, "--port", str(port)] + variant_of(name)
    apps = os.path.join(build or runner.args.build_dir, "apps")
    if name in ("muxio-http", "muxio-resp", "muxio-echo"):  # muxio-echo: the app, in its callback mode
        return [os.path.join(apps, name), "--port", str(port), "--bind", "127.0.0.1"]
    if name == "redis-server":
        os.makedirs(os.path.join(runner.tmp, "redis"), exist_ok=True)
        return [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", os.path.join(runner.tmp, "redis"),
                "--logfile", ""]
    if name == "nginx":
        prefix = os.path.join(runner.tmp, f"nginx-{port}")
        os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
        with open(os.path.join(prefix, "nginx.conf"), "w") as conf:
            conf.write(NGINX_CONF.replace("PREFIX", prefix).replace("PORT", str(port)))
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", prefix, "-c", prefix + "/nginx.conf",
                "-e", prefix + "/logs/error.log"]
    raise SystemExit(f"muxbench: unknown server {name}")


def variant_of(name):
    variant = PROGRAMS.get(name, (None, None))[1]
    return ["--variant", variant] if variant else []


# One process, `return 200 "Hello, World!"`, keep-alive without limit.
NGINX_CONF = """daemon off; master_process off; worker_processes 1;
error_log PREFIX/logs/error.log warn; pid PREFIX/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off; server_tokens off; default_type "text/plain; charset=utf-8";
    keepalive_requests 1000000000; keepalive_timeout 75s;
    client_body_temp_path PREFIX/body; proxy_temp_path PREFIX/proxy; fastcgi_temp_path PREFIX/fastcgi;
    uwsgi_temp_path PREFIX/uwsgi; scgi_temp_path PREFIX/scgi;
    server { listen 127.0.0.1:PORT; location / { return 200 "Hello, World!"; } }
}
"""


# ----- Jobs: each returns the results rows of one run ------------------------------------------------


def run_echo(runner, job, build=None, perf=False):
    args = runner.args
    port = runner.next_port()
    server = runner.start(server_command(runner, job["server"], "echo", port, build), name=job["server"])
    command = [runner.program("echo-client"), "--port", str(port), "--connections", str(job["connections"]),
               "--size", str(job["size"]), "--warmup", str(args.warmup), "--duration", str(args.duration),
               "--server-pid", str(server.pid), "--idle", str(job.get("idle", 0))]
    client = subprocess.Popen(["taskset", "-c", str(args.client_cpu)] + command, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    user_share = None
    if perf:  # sampled inside the measured window, after the warm-up
        time.sleep(args.warmup + 0.2)
        data = os.path.join(runner.tmp, "perf.data")
        subprocess.run(["perf", "record", "-q", "-p", str(server.pid), "-o", data, "--", "sleep",
                        str(args.duration * 0.8)], capture_output=True)
        report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso", "-q"],
                                capture_output=True, text=True).stdout
        shares = [float(line.split()[0].rstrip("%")) for line in report.splitlines() if "%" in line]
        user_share = sum(float(line.split()[0].rstrip("%")) for line in report.splitlines()
                         if "%" in line and "kernel" not in line) / 100 if shares else None
    out, err = client.communicate()
    syscalls = count_syscalls(runner, job, port, server.pid) if client.returncode == 0 else None
    runner.stop(server)
    if client.returncode != 0:
        warn(f"echo {job['server']}, {job['connections']} connections: {err[-300:]}")
        return []
    row = dict(job, **pairs(out))
    if syscalls is not None:
        row["syscalls_per_msg"] = syscalls
    if user_share is not None:
        row["user_ns_per_msg"] = row["server_cpu_ns_per_msg"] * user_share
    return [row]


def count_syscalls(runner, job, port, pid):
    """echo --syscalls: system calls per message of the server, counted by
    perf (the raw_syscalls:sys_enter tracepoint, every thread) over a second,
    separate client run, so the counting never touches the CPU figures. The
    messages of the counted window are the client's rate times its length
    (perf's duration_time: from when the counters were attached).
    None if not asked for or perf cannot count (it needs root or
    kernel.perf_event_paranoid = -1)."""
    args = runner.args
    window = getattr(args, "syscalls", None)
    if not window:
        return None
    warmup = 0.3
    command = [runner.program("echo-client"), "--port", str(port), "--connections", str(job["connections"]),
               "--size", str(job["size"]), "--warmup", str(warmup), "--duration", str(window + 0.4),
               "--idle", str(job.get("idle", 0))]
    client = subprocess.Popen(["taskset", "-c", str(args.client_cpu)] + command, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(warmup + 0.2)  # the connections are up and the client measures
    perf = subprocess.run(["perf", "stat", "-x", ",", "-e", "raw_syscalls:sys_enter,duration_time", "-p", str(pid),
                           "--", "sleep", str(window)], capture_output=True, text=True)
    out, _ = client.communicate()
    counts = {fields[2]: fields[0] for fields in (line.split(",") for line in perf.stderr.splitlines())
              if len(fields) > 2}
    count, elapsed_ns = counts.get("raw_syscalls:sys_enter", ""), counts.get("duration_time", "")
    rate = pairs(out).get("msgs_per_s") if client.returncode == 0 else None
    if perf.returncode != 0 or not count.isdigit() or not elapsed_ns.isdigit() or not rate:
        warn(f"syscalls of {job['server']}, {job['connections']} connections not counted: {perf.stderr[-200:]}")
        return None
    return int(count) / (rate * int(elapsed_ns) / 1e9)


def run_http(runner, job, build=None):
    args = runner.args
    port = runner.next_port()
    server = runner.start(server_command(runner, job["server"], "http", port, build), name=job["server"])
    try:
        if not runner.wait_listening(server, port):
            return []
        url = f"http://127.0.0.1:{port}/"
        wrk = ["wrk", "-t1", "-c", str(job["connections"])]
        if args.http_warmup > 0:
            runner.client(wrk + ["-d", f"{args.http_warmup}s", url])
        before = cpu_ns(server.pid)
        out = runner.client(wrk + ["-d", f"{args.http_duration}s", "--latency", url])
        after = cpu_ns(server.pid)
        if out is None:
            return []
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
        scale = {"us": 1, "ms": 1e3, "s": 1e6}
        us = {k: float(re.match(r"[\d.]+", v).group()) * scale[re.sub(r"[\d.]+", "", v)] for k, v in latency.items()}
        errors = re.findall(r"(Non-2xx or 3xx responses|Socket errors):\s*(.*)", out)
        for what, count in errors:
            warn(f"http {job['server']}, round {job['round']}: {what} {count}")
        return [dict(job, requests=requests, rps=float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1)),
                     p50_us=us.get("50"), p99_us=us.get("99"), server_vmhwm_kb=vmhwm_kb(server.pid),
                     server_cpu_ns_per_req=(after - before) / requests if requests and after else None,
                     errors=len(errors))]
    finally:
        runner.stop(server)


def run_resp(runner, job, build=None):
    args = runner.args
    port = runner.next_port()
    server = runner.start(server_command(runner, job["server"], "resp", port, build), name=job["server"])
    rows = []
    try:
        if not runner.wait_listening(server, port):
            return []
        requests = args.resp_requests * job["pipeline"]
        for test in ("set", "get"):
            before = cpu_ns(server.pid)
            out = runner.client(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(args.resp_clients),
                                 "-n", str(requests), "-P", str(job["pipeline"]), "-t", test, "--csv"])
            after = cpu_ns(server.pid)
            line = [line for line in (out or "").splitlines() if line.lower().startswith(f'"{test}"')]
            if not line:
                continue
            # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",...
            fields = line[-1].replace('"', "").split(",")
            rows.append(dict(job, test=test, clients=args.resp_clients, requests=requests, rps=float(fields[1]),
                             p50_ms=float(fields[4]), p99_ms=float(fields[6]), server_vmhwm_kb=vmhwm_kb(server.pid),
                             server_cpu_ns_per_req=(after - before) / requests if after else None))
    finally:
        runner.stop(server)
    return rows


def run_measure(runner, job):
    """A loop or coroutine benchmark: one process, its own repetitions."""
    args = runner.args
    program, variant = PROGRAMS[job["server"]]
    command = [runner.program(program), "--mode", job["bench"], "--reps", str(args.reps),
               "--loop-core", str(args.server_cpu), "--producer-core", str(args.client_cpu)] + variant_of(job["server"])
    for option in ("count", "chains", "max_delay_ms"):
        if job.get(option):
            command += ["--" + option.replace("_", "-"), str(job[option])]
    out = runner.client(command, cpu=f"{args.server_cpu},{args.client_cpu}")
    return [dict(job, **{k: v for k, v in pairs(out).items() if k not in ("bench", "impl")})] if out else []


def run_select(runner, job):
    args = runner.args
    if job["server"].startswith("python-"):
        command = [sys.executable, os.path.join(HERE, "select_bench.py")]
    else:
        command = [runner.program("select")]
    contender = job["server"].split("-", 1)[1] if not job["server"].startswith("raw-") else job["server"]
    command += ["--k", str(job["k"]), "--contenders", contender, "--repetitions", str(args.reps),
                "--target-ms", str(args.target_ms), "--clock", args.clock]
    out = runner.client(command, cpu=args.server_cpu)
    rows = []
    for line in (out or "").splitlines():
        fields = line.split()
        if line.startswith("#") or len(fields) < 6:
            continue
        rows.append(dict(job, ns_per_select=float(fields[2]), min_ns=float(fields[3]), iterations=int(fields[4])))
    return rows


def run_callgrind(runner, job):
    args = runner.args
    port = runner.next_port()
    out_file = os.path.join(runner.tmp, f"callgrind.{job['server']}.{job['connections']}")
    server = runner.start(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out_file]
                          + server_command(runner, job["server"], "echo", port), name=job["server"])
    try:
        client = [runner.program("echo-client"), "--port", str(port), "--connections", str(job["connections"]),
                  "--warmup", "0"]
        runner.client(client + ["--duration", "0.5"])  # connects as soon as the server listens, warms it up
        subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True)
        out = runner.client(client + ["--duration", str(args.duration)])
        subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True)
    finally:
        runner.stop(server)
    dumps = sorted(glob.glob(out_file + ".*"))
    if not out or not dumps:
        return []
    with open(dumps[0]) as dump:
        instructions = int(re.search(r"^(?:summary|totals):\s*(\d+)", dump.read(), re.M).group(1))
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        shutil.copy(dumps[0], os.path.join(args.keep, os.path.basename(out_file)))
    messages = pairs(out)["messages"]
    return [dict(job, instructions=instructions, messages=messages, instructions_per_msg=instructions / messages)]


# ----- Commands --------------------------------------------------------------------------------------


def listed(text, convert=str):
    return [convert(item) for item in text.split(",") if item]


def jobs_of(args):
    """The jobs of one round, in a fixed order (shuffled per round) with the
    function that runs each."""
    c = args.command
    if c == "echo":
        return [(run_echo, dict(bench="echo", server=s, size=size, connections=n, idle=idle))
                for size in args.sizes for n in args.connections for idle in args.idle for s in args.servers]
    if c == "http":
        return [(run_http, dict(bench="http", server=s, connections=n)) for n in args.connections for s in args.servers
                if s != "nginx" or shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")]
    if c == "resp":
        return [(run_resp, dict(bench="resp", server=s, pipeline=p)) for p in args.pipelines for s in args.servers
                if s != "redis-server" or shutil.which("redis-server")]
    if c == "loop":
        jobs = []
        for bench in args.benches:
            extra = dict(timers=dict(count=args.timers, max_delay_ms=args.max_delay_ms),
                         soon=dict(count=args.callbacks), threadsafe=dict(count=args.callbacks),
                         latency=dict(count=args.samples)).get(bench, {})
            for chains in (args.chains if bench == "soon" else [None]):
                jobs += [(run_measure, dict(bench=bench, server=lib, chains=chains, **extra)) for lib in args.libs]
        return jobs
    if c == "coro":
        return ([(run_measure, dict(bench="readable", server=s, count=args.round_trips)) for s in args.servers]
                + [(run_measure, dict(bench="spawn", server=s, count=n, tasks=n)) for n in args.tasks
                   for s in ("muxio-coro", "asio-coro")])
    if c == "select":
        listed_ = subprocess.run([runner_program(args, "select"), "--list"], capture_output=True, text=True).stdout
        names = [n if n.startswith("raw-") else "muxio-" + n for n in listed_.split()] + ["raw-epoll_pwait2"]
        names += ["python-" + n for n in ("select", "poll", "epoll")]
        return [(run_select, dict(bench="select", server=s, k=k)) for k in args.ks for s in names]
    if c == "callgrind":
        return [(run_callgrind, dict(bench="callgrind", server=s, connections=n))
                for n in args.connections for s in args.servers]
    if c == "ab":
        jobs, names = [], []
        for index, spec in enumerate(args.contenders):
            build, _, server = spec.rpartition(":")
            if not build or not os.path.exists(build):
                raise SystemExit(f"muxbench: not BUILD_DIR:SERVER or PROGRAM:SERVER: {spec}")
            names.append(spec + (f" ({names.count(spec) + 1})" if spec in names else ""))
            if args.bench == "resp":
                for p in args.pipelines:
                    job = dict(bench="ab-resp", server=names[-1], index=index, pipeline=p, config=f"-P {p}",
                               metric="server_cpu_ns_per_req")
                    jobs.append((lambda r, j, b=build, s=server: [
                        dict(row, server=j["server"], config=f"{row['test']}, {j['config']}")
                        for row in run_resp(r, dict(j, server=s), b)], job))
                continue
            for n in args.connections or ([1000] if args.bench == "echo" else [512]):
                job = dict(bench="ab-" + args.bench, server=names[-1], index=index, connections=n, size=args.size)
                job["config"] = f"{args.size} B, {n} conn." if args.bench == "echo" else f"{n} conn."
                job["metric"] = "server_cpu_ns_per_msg" if args.bench == "echo" else "server_cpu_ns_per_req"
                jobs.append((lambda r, j, b=build, s=server: [dict(row, server=j["server"]) for row in (
                    run_echo(r, dict(j, server=s), b, args.perf) if args.bench == "echo"
                    else run_http(r, dict(j, server=s), b))], job))
        return jobs
    raise SystemExit(f"muxbench: unknown command {c}")


def runner_program(args, name):
    return os.path.join(args.build_dir, "bench", "bench-" + name)


def host():
    def sh(command):
        try:
            return subprocess.run(command, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                nproc=os.cpu_count(), kernel=os.uname().release,
                cpu=sh("sed -n 's/^model name\\s*: //p' /proc/cpuinfo | head -1"),
                libuv=sh("pkg-config --modversion libuv"), libevent=sh("pkg-config --modversion libevent_core"),
                asio=sh("sed -n 's/^#define ASIO_VERSION \\([0-9]*\\).*/\\1/p' /usr/include/asio/version.hpp"),
                load_start=os.getloadavg()[0])


def build(args):
    if args.no_build or args.command in ("ab", "summary"):
        return
    if args.build_dir == os.path.join(ROOT, "build", "bench") and not os.path.exists(
            os.path.join(args.build_dir, "CMakeCache.txt")):
        subprocess.run(["cmake", "--preset", "bench"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    targets = ["bench-" + name for name in ("epoll", "uring", "muxio", "muxio-coro", "libuv", "libevent", "asio", "echo-client",
                                            "select")] + ["muxio-http", "muxio-resp", "muxio-echo"]
    subprocess.run(["cmake", "--build", args.build_dir, "-j2", "--target"] + targets, check=True,
                   stdout=subprocess.DEVNULL)


def wait_for_load(limit, most_s=600):
    waited = 0
    while limit and os.getloadavg()[0] >= limit and waited < most_s:
        if waited == 0:
            print(f"waiting for the load average to fall below {limit} ...", file=sys.stderr)
        time.sleep(10)
        waited += 10


def run(args):
    build(args)
    jobs = jobs_of(args)
    wait_for_load(args.wait_load, args.wait_load_max)
    result = dict(schema="muxbench/1", command=args.command, argv=sys.argv[1:], host=host(),
                  settings={k: v for k, v in vars(args).items() if k not in ("func",)}, runs=[])
    runner = Runner(args)
    start = time.time()
    try:
        rounds = 1 if args.command == "callgrind" else args.rounds
        for round_ in range(rounds):
            order = list(jobs)
            random.Random(1000003 * (round_ + 1)).shuffle(order)
            for function, job in order:
                result["runs"] += function(runner, dict(job, round=round_, job=jobs.index((function, job))))
            print(f"round {round_ + 1}/{rounds} done ({time.time() - start:.0f} s)", file=sys.stderr)
    finally:
        runner.close()
    result["host"]["load_end"] = os.getloadavg()[0]
    result["rows"], cells = summarize(result["runs"], args.command, args.tolerance)
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, f"{args.command}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as out:
        json.dump(result, out, indent=1)
    print(f"results: {os.path.relpath(path)}", file=sys.stderr)
    h = result["host"]
    print(f"{h['date']}, {h['nproc']} CPUs ({h['cpu']}), Linux {h['kernel']}, libuv {h['libuv']}, libevent "
          f"{h['libevent']}, asio {h['asio']}; load average {h['load_start']:.2f} at start, {h['load_end']:.2f} at end\n")
    print_tables(result["rows"], cells)
    idle_memory(result["rows"])


def summary(args):
    runs = []
    command = None
    for index, path in enumerate(args.files):
        with open(path) as results:
            data = json.load(results)
        command = command or data["command"]
        tolerance = data["settings"].get("tolerance", 0.05)
        for row in data["runs"]:
            runs.append(dict(row, round=f"{index}:{row['round']}" if len(args.files) > 1 else row["round"]))
    rows, cells = summarize(runs, command, tolerance)
    print_tables(rows, cells)
    idle_memory(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help_, rounds=7, servers=None, connections=None, duration=None):
        p = commands.add_parser(name, help=help_, description=help_)
        p.add_argument("--build-dir", default=os.path.join(ROOT, "build", "bench"),
                       help="the bench preset's build (default build/bench; configured and built unless --no-build)")
        p.add_argument("--no-build", action="store_true", help="use the programs as they are")
        p.add_argument("--rounds", type=int, default=rounds,
                       help=f"interleaved rounds (default {rounds}: verdicts against four peers need 7)")
        p.add_argument("--server-cpu", type=int, default=0, help="core of every server and loop (default 0)")
        p.add_argument("--client-cpu", type=int, default=1, help="core of every load generator (default 1)")
        p.add_argument("--port-base", type=int, default=23000, help="ports are tried from here up (default 23000)")
        p.add_argument("--wait-load", type=float, default=None,
                       help="first wait until the 1-minute load average is below this")
        p.add_argument("--wait-load-max", type=int, default=600, help="... but at most this many seconds (default 600)")
        p.add_argument("--results", default=os.path.join(HERE, "results"), help="directory of the JSON results")
        p.add_argument("--tolerance", type=float, default=0.05,
                       help="how far above the floor (raw epoll) still passes, as a fraction (default 0.05)")
        if servers:
            p.add_argument("--servers", type=listed, default=listed(servers), help=f"default {servers}")
        if connections:
            p.add_argument("--connections", type=lambda t: listed(t, int), default=listed(connections, int),
                           help=f"connection counts (default {connections})")
        if duration:
            p.add_argument("--duration", type=float, default=duration, help=f"measured seconds (default {duration})")
            p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds, not measured (default 0.5)")
        p.set_defaults(func=run)
        return p

    p = command("echo", "ping-pong echo: server CPU per message, messages/s, p99, VmHWM",
                servers="muxio,muxio-coro,muxio-coro-perconn,libuv,libevent,asio,asio-coro,epoll,uring",
                connections="1,64,1000", duration=2)
    p.add_argument("--sizes", type=lambda t: listed(t, int), default=[64, 4096], help="message bytes (default 64,4096)")
    p.add_argument("--idle", type=lambda t: listed(t, int), default=[0],
                   help="idle connections held open beside the active ones, e.g. 0,10000 (default 0)")
    p.add_argument("--syscalls", type=float, nargs="?", const=1.0, default=None, metavar="SECONDS",
                   help="also count each server's system calls per message with perf, over a separate window of "
                        "this many seconds after the measured one (default 1; needs root or perf_event_paranoid -1)")
    for name, help_ in (("http", "wrk against the HTTP servers: server CPU per request, requests/s, p50/p99"),
                        ("ab", "A/B of one server from two builds (echo, http or resp)")):
        p = command(name, help_, servers="muxio-http,muxio,libuv,libevent,asio,epoll,nginx" if name == "http" else None,
                    rounds=7 if name == "http" else 9, connections="64,512" if name == "http" else None, duration=2)
        p.add_argument("--http-duration", type=int, default=3, help="wrk seconds, whole (default 3)")
        p.add_argument("--http-warmup", type=int, default=1, help="wrk warm-up run, seconds; 0: none (default 1)")
    p.add_argument("bench", choices=("echo", "http", "resp"))
    p.add_argument("contenders", nargs="+", metavar="BUILD:SERVER",
                   help="a build directory (or a bench-* program copied aside) and a server name: build/old:muxio; "
                        "the first is the reference")
    p.add_argument("--size", type=int, default=64, help="echo message bytes (default 64)")
    p.add_argument("--connections", type=lambda t: listed(t, int), help="default 1000 (echo), 512 (http)")
    p.add_argument("--perf", action="store_true",
                   help="echo: also sample with perf for the user-space share of the server's CPU time")
    p.add_argument("--pipelines", type=lambda t: listed(t, int), default=[1, 16], help="resp: -P values (default 1,16)")
    p.add_argument("--resp-clients", type=int, default=50, help="resp: -c (default 50)")
    p.add_argument("--resp-requests", type=int, default=100000, help="resp: -n per unit of -P (default 100000)")
    p = command("resp", "redis-benchmark set and get: server CPU per request", servers="muxio-resp,redis-server")
    p.add_argument("--pipelines", type=lambda t: listed(t, int), default=[1, 16], help="-P values (default 1,16)")
    p.add_argument("--resp-clients", type=int, default=50, help="-c (default 50)")
    p.add_argument("--resp-requests", type=int, default=100000, help="-n per unit of -P (default 100000)")
    p = command("loop", "timers, call_soon, call_soon_threadsafe throughput and latency")
    p.add_argument("--benches", type=listed, default=listed("timers,soon,threadsafe,latency"))
    p.add_argument("--libs", type=listed, default=listed("muxio,libuv,libevent,asio"))
    p.add_argument("--timers", type=int, default=1000000)
    p.add_argument("--max-delay-ms", type=int, default=100)
    p.add_argument("--callbacks", type=int, default=1000000, help="per soon and threadsafe run")
    p.add_argument("--chains", type=lambda t: listed(t, int), default=[1000, 1], help="soon: chains (default 1000,1)")
    p.add_argument("--samples", type=int, default=20000, help="latency samples per run")
    p.add_argument("--reps", type=int, default=3, help="repetitions inside one process, their median (default 3)")
    p = command("coro", "coroutines: a readable() round trip and a task spawn, against asio's awaitables",
                servers="muxio-coro,muxio-coro-raw,muxio,asio-coro,asio")
    p.add_argument("--round-trips", type=int, default=100000)
    p.add_argument("--tasks", type=lambda t: listed(t, int), default=[1000, 100000])
    p.add_argument("--reps", type=int, default=5, help="repetitions inside one process, their median (default 5)")
    p = command("select", "one select() among K idle descriptors: every backend, raw epoll, Python's selectors")
    p.add_argument("--ks", type=lambda t: listed(t, int), default=[10, 100, 1000, 10000])
    p.add_argument("--reps", type=int, default=5, help="repetitions inside one process, their median (default 5)")
    p.add_argument("--target-ms", type=int, default=20, help="length of one repetition (default 20)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p = command("callgrind", "user-space instructions per echo message under callgrind: deterministic, no kernel",
                servers="epoll,uring,muxio,libuv,libevent,asio", connections="1,64,1000", duration=3, rounds=1)
    p.add_argument("--keep", help="a directory to keep the callgrind files in, for callgrind_annotate")
    p = commands.add_parser("summary", help="the tables of results files (several: their rounds pooled)")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=summary)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through the finally clauses that stop the servers
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
