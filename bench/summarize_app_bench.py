#!/usr/bin/env python3
"""Turns a results file of bench/run_app_bench.sh into Markdown tables: the
median over the rounds of every figure, the ratio of muxio's contender to the
best peer in every row (and to raw epoll where there is one), the spread
of the server CPU figure, and each row's verdict against the goal: the
within-round ratios of server CPU with a 90% interval for their median
(bench/benchstats.py).

    python3 bench/summarize_app_bench.py bench/results/app_bench-*.txt
"""
import collections
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchstats import Comparison, clean, fmt, load, verdict_against_floor, verdict_against_peers  # noqa: E402

# Who is muxio, who is a peer, who is the floor (not a peer).
ECHO_ORDER = ("muxio", "muxio-coro", "muxio-coro-perconn", "epoll", "libuv", "libevent", "asio", "asio-coro")
ECHO_PEERS = ("libuv", "libevent", "asio", "asio-coro")
HTTP_ORDER = ("muxio-http", "muxio", "epoll", "libuv", "libevent", "asio", "nginx")
HTTP_PEERS = ("libuv", "libevent", "asio", "nginx")
RESP_ORDER = ("muxio-resp", "redis-server")
RESP_PEERS = ("redis-server",)
IDLE_ORDER = ("muxio", "epoll", "libuv", "libevent", "asio")
IDLE_PEERS = ("libuv", "libevent", "asio")


def median(values):
    values = clean(values)
    return statistics.median(values) if values else None


def spread(values):
    values = clean(values)
    if not values:
        return None
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else None


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    print()


class Figures:
    """Values per (group, name, metric) over the rounds."""

    def __init__(self, rows, group_keys, metrics):
        self.values = collections.defaultdict(list)
        self.by_round = collections.defaultdict(dict)
        self.groups = []
        for r in rows:
            group = tuple(r.get(k) for k in group_keys)
            if group not in self.groups:
                self.groups.append(group)
            for m in metrics:
                self.values[(group, r["impl"], m)].append(r.get(m))
                self.by_round[(group, r.get("round"), m)][r["impl"]] = r.get(m)

    def median(self, group, name, metric):
        return median(self.values.get((group, name, metric), []))

    def spread(self, group, name, metric):
        return spread(self.values.get((group, name, metric), []))

    def paired(self, group, a, b, metric):
        """a / b within each round, as a Comparison: runs of one round are
        back to back, so the ratio cancels the drift of a shared machine
        between rounds, which a ratio of medians keeps."""
        ratios = []
        for (g, _, m), values in self.by_round.items():
            x, y = values.get(a), values.get(b)
            if g == group and m == metric and x is not None and y:
                ratios.append(x / y)
        return Comparison(ratios)

    def names(self, group, order):
        present = {n for (g, n, _) in self.values if g == group}
        return [n for n in order if n in present] + sorted(present - set(order))

    def best(self, group, metric, peers, lower):
        cands = [(self.median(group, p, metric), p) for p in peers]
        cands = [(v, p) for v, p in cands if v is not None]
        if not cands:
            return None, None
        return (min if lower else max)(cands)


def ratio_cell(a, b, peer=None):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}" + (f" ({peer})" if peer else "")


def block(figures, group, label, order, peers, floor, subjects, metrics, spread_metric):
    """Rows of one configuration: contenders, then ratio rows. `metrics`:
    (key, digits, lower_is_better)."""
    rows = []
    names = figures.names(group, order)
    for n in names:
        cells = [label, n] + [fmt(figures.median(group, n, k), d) for k, d, _ in metrics]
        s = figures.spread(group, n, spread_metric)
        cells.append("-" if s is None else f"{s * 100:.0f} %")
        rows.append(cells)
    for subject in subjects:
        if subject not in names:
            continue
        cells = [label, f"**{subject} / best peer**"]
        for k, _, lower in metrics:
            value, peer = figures.best(group, k, peers, lower)
            cells.append(ratio_cell(figures.median(group, subject, k), value, peer))
        rows.append(cells + [""])
        if floor and floor in names:
            cells = [label, f"{subject} / {floor}"]
            for k, _, _ in metrics:
                cells.append(ratio_cell(figures.median(group, subject, k), figures.median(group, floor, k)))
            rows.append(cells + [""])
    return rows


# One line per row of the goal (issue 5: muxio first or within noise of
# first in every row, within 5% of raw epoll on echo), printed at the end.
GOAL = []


def paired_table(figures, groups, label, subjects, peers, floor, metric, title, section, floor_tolerance=None):
    """Within-round ratios of `metric` (lower is better) for each subject,
    with their 90% intervals: over the peer with the best median, and over
    `floor`; and the verdicts against all the peers and against the floor
    (when `floor_tolerance` is given)."""
    out = []
    for group in groups:
        _, best = figures.best(group, metric, peers, True)
        names = figures.names(group, ())
        for subject in subjects:
            if subject not in names:
                continue
            versus = {p: figures.paired(group, subject, p, metric) for p in peers if p in names}
            verdict = verdict_against_peers(versus)
            cells = [label(group), subject, versus[best].cell() + f" ({best})" if best else "-", verdict]
            GOAL.append((f"{section}, {label(group)}, {subject}", "peers", verdict))
            if floor:
                over_floor = figures.paired(group, subject, floor, metric) if floor in names else Comparison([])
                cells.append(over_floor.cell())
                if floor_tolerance is not None:
                    floor_verdict = verdict_against_floor(over_floor, floor_tolerance)
                    cells.append(floor_verdict)
                    GOAL.append((f"{section}, {label(group)}, {subject}", floor, floor_verdict))
            out.append(cells)
    header = [title, "server", "over the best peer: median [90% interval]", "against the peers"]
    if floor:
        header.append(f"over {floor}: median [90% interval]")
        if floor_tolerance is not None:
            header.append(f"against {floor}")
    table(header, out)


def goal_section():
    if not GOAL:
        return
    print("### Against the goal\n")
    print("Each row's verdict from the within-round ratios of server CPU per message or request, lower is "
          "better: first (median below every peer), within noise of first (every peer's interval reaches 1, "
          "the intervals at 90% for the row as a whole: 1 - 0.1 / peers each), behind a peer (its whole interval "
          "above 1); against epoll, within 5% by the median. The intervals in the tables above are each 90%.\n")
    table(["row", "against", "verdict"], [[row, against, verdict] for row, against, verdict in GOAL])
    counts = collections.Counter(verdict for _, _, verdict in GOAL)
    print("Verdicts: " + ", ".join(f"{verdict} {count}" for verdict, count in sorted(counts.items())) + ".\n")


def echo_section(rows):
    rows = [r for r in rows if r.get("bench") == "echo"]
    if not rows:
        return
    metrics = (("msgs_per_s", 0, False), ("p99_us", 1, True), ("server_cpu_ns_per_msg", 0, True),
               ("server_vmhwm_kb", 0, True))
    figures = Figures(rows, ("size", "connections"), [m for m, *_ in metrics])
    for size in sorted({g[0] for g in figures.groups}):
        print(f"### Echo: ping-pong, {int(size)}-byte messages\n")
        out = []
        for group in sorted(g for g in figures.groups if g[0] == size):
            out += block(figures, group, fmt(group[1]), ECHO_ORDER, ECHO_PEERS, "epoll", ("muxio", "muxio-coro"),
                         metrics, "server_cpu_ns_per_msg")
        table(["conn.", "server", "messages/s", "p99 µs", "server CPU ns/msg", "server VmHWM KiB",
               "spread of CPU/msg"], out)
        print(f"Server CPU per message, {int(size)}-byte messages: the median of the ratios within each round.\n")
        paired_table(figures, sorted(g for g in figures.groups if g[0] == size), lambda g: fmt(g[1]),
                     ("muxio", "muxio-coro"), ECHO_PEERS, "epoll", "server_cpu_ns_per_msg", "conn.",
                     f"echo {int(size)} B", floor_tolerance=0.05)
        out = []
        for group in sorted(g for g in figures.groups if g[0] == size):
            cells = [fmt(group[1])]
            for coro in ("muxio-coro", "muxio-coro-perconn"):
                cells.append(figures.paired(group, coro, "muxio", "server_cpu_ns_per_msg").cell())
            out.append(cells)
        table(["conn.", "muxio-coro / muxio, within each round", "muxio-coro-perconn / muxio"], out)


def http_section(rows):
    rows = [r for r in rows if r.get("bench") == "http"]
    if not rows:
        return
    metrics = (("rps", 0, False), ("p50_us", 0, True), ("p99_us", 0, True), ("server_cpu_ns_per_req", 0, True),
               ("server_vmhwm_kb", 0, True))
    figures = Figures(rows, ("connections",), [m for m, *_ in metrics])
    print("### HTTP hello: wrk, 1 thread, keep-alive `GET /`\n")
    out = []
    for group in sorted(figures.groups):
        out += block(figures, group, fmt(group[0]), HTTP_ORDER, HTTP_PEERS, "epoll", ("muxio-http", "muxio"),
                     metrics, "server_cpu_ns_per_req")
    table(["conn.", "server", "requests/s", "p50 µs", "p99 µs", "server CPU ns/req", "server VmHWM KiB",
           "spread of CPU/req"], out)
    print("Server CPU per request: the median of the ratios within each round.\n")
    paired_table(figures, sorted(figures.groups), lambda g: fmt(g[0]), ("muxio-http", "muxio"), HTTP_PEERS, "epoll",
                 "server_cpu_ns_per_req", "conn.", "HTTP")
    bad = [r for r in rows if r.get("non2xx", 0) or str(r.get("socket_errors", "none")) != "none"]
    for r in bad:
        print(f"- round {int(r['round'])}, {r['impl']}, {int(r['connections'])} connections: "
              f"non-2xx {int(r.get('non2xx', 0))}, socket errors {r.get('socket_errors')}")
    if bad:
        print()


def resp_section(rows):
    rows = [r for r in rows if r.get("bench") == "resp"]
    if not rows:
        return
    metrics = (("rps", 0, False), ("p50_ms", 3, True), ("p99_ms", 3, True), ("server_cpu_ns_per_req", 0, True),
               ("server_vmhwm_kb", 0, True))
    figures = Figures(rows, ("pipeline", "test"), [m for m, *_ in metrics])
    clients = int(rows[0].get("clients", 0))
    print(f"### RESP: redis-benchmark -c {clients}\n")
    out = []
    for group in sorted(figures.groups, key=lambda g: (g[0], g[1] != "set")):
        out += block(figures, group, f"-P {int(group[0])}, {group[1].upper()}", RESP_ORDER, RESP_PEERS, None,
                     ("muxio-resp",), metrics, "server_cpu_ns_per_req")
    table(["test", "server", "requests/s", "p50 ms", "p99 ms", "server CPU ns/req", "server VmHWM KiB",
           "spread of CPU/req"], out)
    print("Server CPU per request: the median of the ratios within each round.\n")
    paired_table(figures, sorted(figures.groups, key=lambda g: (g[0], g[1] != "set")),
                 lambda g: f"-P {int(g[0])}, {g[1].upper()}", ("muxio-resp",), RESP_PEERS, None,
                 "server_cpu_ns_per_req", "test", "RESP")


def idle_section(rows):
    rows = [r for r in rows if r.get("bench") == "idle"]
    if not rows:
        return
    metrics = (("server_cpu_ns_per_msg", 0, True), ("msgs_per_s", 0, False), ("p99_us", 1, True),
               ("server_vmhwm_kb", 0, True))
    figures = Figures(rows, ("idle",), [m for m, *_ in metrics])
    active = int(rows[0].get("connections", 0))
    print(f"### Idle scale: {active} active ping-pong connections (64 bytes) beside K idle ones\n")
    out = []
    for group in sorted(figures.groups):
        out += block(figures, group, fmt(group[0]), IDLE_ORDER, IDLE_PEERS, "epoll", ("muxio",), metrics,
                     "server_cpu_ns_per_msg")
    table(["idle K", "server", "server CPU ns/msg", "messages/s", "p99 µs", "server VmHWM KiB", "spread of CPU/msg"],
          out)
    print("Server CPU per message: the median of the ratios within each round.\n")
    paired_table(figures, sorted(figures.groups), lambda g: fmt(g[0]), ("muxio",), IDLE_PEERS, "epoll",
                 "server_cpu_ns_per_msg", "idle K", "idle")
    counts = sorted(g[0] for g in figures.groups)
    if len(counts) >= 2 and counts[0] == 0:
        low, high = (counts[0],), (counts[-1],)
        print(f"Memory per idle connection, (VmHWM at K = {fmt(high[0])} − at K = 0) / K:\n")
        cells = []
        for n in figures.names(high, IDLE_ORDER):
            a, b = figures.median(high, n, "server_vmhwm_kb"), figures.median(low, n, "server_vmhwm_kb")
            per = None if a is None or b is None else (a - b) * 1024 / high[0]
            cells.append([n, fmt(per)])
        table(["server", "bytes per idle connection"], cells)


def main():
    rows = load(sys.argv[1])
    echo_section(rows)
    http_section(rows)
    resp_section(rows)
    idle_section(rows)
    goal_section()
    rounds = len({r.get("round") for r in rows})
    print(f"Medians over {rounds} interleaved rounds. Ratios: the contender's median over the best peer's "
          "(in parentheses); above 1 is better for messages/s and requests/s, below 1 for the others. Spread: "
          "(largest − smallest) / median of the server CPU figure over the rounds. Intervals: distribution-free, for "
          "the median of the within-round ratios (order statistics; 5 rounds or more).")


if __name__ == "__main__":
    main()
