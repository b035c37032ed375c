#!/usr/bin/env python3
"""Turns a results file of bench/reactor/run_reactor_bench.sh into Markdown
tables: the median over the rounds of every figure, ratios against raw epoll
and against the best peer (libuv, libevent, asio), and the spread. The
coroutine rows (SECTIONS=coro) get ratios against the best coroutine peer
(asio-coro) and against muxio's callback version.

    python3 bench/reactor/summarize_reactor_bench.py bench/results/reactor_bench-RUN.txt [MORE-RUNS.txt ...]

Given several files it pools their rounds, as one longer run.
"""
import collections
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchstats import Comparison, fmt, load, verdict_against_floor, verdict_against_peers  # noqa: E402

PEERS = ("libuv", "libevent", "asio")
CORO_PEERS = ("asio-coro",)
SERVER_ORDER = ("epoll", "muxio", "muxio-coro", "muxio-coro-perconn", "muxio-coro-raw") + PEERS + CORO_PEERS
LIB_ORDER = ("muxio",) + PEERS
CORO_ORDER = ("muxio-coro", "muxio-coro-perconn", "muxio-coro-raw", "muxio", "asio-coro", "asio")


def table(title, columns, rows):
    print(f"| {title} | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()


class Series:
    """Values of one figure per (name, column) across rounds."""

    def __init__(self):
        self.values = collections.defaultdict(list)

    def add(self, name, column, value):
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            self.values[(name, column)].append(value)

    def median(self, name, column):
        values = self.values.get((name, column))
        return statistics.median(values) if values else None

    def spread(self, name, column):
        values = self.values.get((name, column))
        if not values:
            return None
        middle = statistics.median(values)
        return (max(values) - min(values)) / middle if middle else None

    def rounds(self):
        return max((len(v) for v in self.values.values()), default=0)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def best_peer(series, column, lower_is_better, peers=PEERS):
    """(name, value) of the best of `peers` in `column`."""
    candidates = [(series.median(p, column), p) for p in peers if series.median(p, column) is not None]
    if not candidates:
        return None, None
    value, name = (min if lower_is_better else max)(candidates)
    return name, value


def within_rounds(rows, a, b, key, selected):
    """a's figure `key` / b's in the same round, over the rows `selected`
    accepts, as a Comparison (median and its 90% interval)."""
    by_round = collections.defaultdict(dict)
    for r in rows:
        if selected(r) and r.get(key) is not None:
            by_round[r.get("round")][r["impl"]] = r[key]
    return Comparison([ratio(pair[a], pair[b]) for pair in by_round.values() if a in pair and b in pair])


def paired(rows, a, b, connections, key="server_cpu_ns_per_msg"):
    """Echo rows: a / b within each round at `connections`."""
    return within_rounds(rows, a, b, key, lambda r: int(r["connections"]) == connections)


def echo_section(rows):
    rows = [r for r in rows if r.get("bench") == "echo"]
    if not rows:
        return
    metrics = {key: Series() for key in ("msgs_per_s", "p50_us", "p99_us", "server_cpu_ns_per_msg",
                                         "server_ticks_ns_per_msg", "client_cpu_ns_per_msg")}
    conns = sorted({int(r["connections"]) for r in rows})
    for r in rows:
        for key, series in metrics.items():
            series.add(r["impl"], int(r["connections"]), r.get(key))
    names = [n for n in SERVER_ORDER if any(metrics["msgs_per_s"].median(n, c) is not None for c in conns)]
    columns = [f"{c:,} conn.".replace(",", " ") for c in conns]

    print("### Echo server: ping-pong, 64-byte messages\n")
    for key, title, digits, lower in (
        ("server_cpu_ns_per_msg", "server CPU ns per message", 0, True),
        ("msgs_per_s", "messages per second", 0, False),
        ("p99_us", "p99 latency µs", 1, True),
        ("p50_us", "p50 latency µs", 1, True),
        ("client_cpu_ns_per_msg", "load generator CPU ns per message", 0, True),
    ):
        table(title, columns, [(n, [fmt(metrics[key].median(n, c), digits) for c in conns]) for n in names])

    ratio_rows = []
    for key, label, lower in (("server_cpu_ns_per_msg", "server CPU/msg", True),
                              ("msgs_per_s", "msgs/s", False), ("p99_us", "p99", True)):
        for n in names:
            if n == "epoll":
                continue
            ratio_rows.append((f"{n} / epoll, {label}",
                               [fmt(ratio(metrics[key].median(n, c), metrics[key].median("epoll", c)), 3)
                                for c in conns]))
        for name, peers in (("muxio", PEERS), ("muxio-coro", CORO_PEERS)):
            if name not in names:
                continue
            cells = []
            for c in conns:
                peer, value = best_peer(metrics[key], c, lower, peers)
                r = ratio(metrics[key].median(name, c), value)
                cells.append(f"{fmt(r, 3)} ({peer})" if peer else "-")
            ratio_rows.append((f"**{name} / best {'coroutine ' if name != 'muxio' else ''}peer, {label}**", cells))
        for a, b in (("muxio-coro", "muxio"), ("muxio-coro-perconn", "muxio"), ("muxio-coro-raw", "muxio"),
                     ("asio-coro", "asio")):
            if a in names and b in names:
                ratio_rows.append((f"**{a} / {b} callback, {label}**",
                                   [fmt(ratio(metrics[key].median(a, c), metrics[key].median(b, c)), 3)
                                    for c in conns]))
    # Rows whose reference did not run (no epoll, no peer) say nothing.
    ratio_rows = [(label, cells) for label, cells in ratio_rows if any(not c.startswith("-") for c in cells)]
    table("ratio (lower is better except msgs/s)", columns, ratio_rows)

    # Each round runs every server once, back to back: a ratio taken within
    # a round cancels the drift of a shared machine between rounds, which
    # the ratio of two medians keeps.
    paired_rows = []
    cpu = metrics["server_cpu_ns_per_msg"]
    for a, b in (("muxio", "epoll"), ("muxio-coro", "muxio"), ("muxio-coro-perconn", "muxio"), ("muxio-coro", "epoll"),
                 ("asio-coro", "asio")):
        if a in names and b in names:
            paired_rows.append((f"{a} / {b}", [paired(rows, a, b, c).cell() for c in conns]))
    for name, peers in (("muxio", PEERS), ("muxio-coro", CORO_PEERS)):
        if name in names:
            cells = []
            for c in conns:
                peer, _ = best_peer(cpu, c, True, peers)
                cells.append(f"{paired(rows, name, peer, c).cell()} ({peer})" if peer else "-")
            paired_rows.append((f"{name} / best {'coroutine ' if name != 'muxio' else ''}peer", cells))
    paired_rows = [(label, cells) for label, cells in paired_rows if any(not c.startswith("-") for c in cells)]
    table("server CPU/msg, median of the ratios within each round [90% interval]", columns, paired_rows)

    # Issue 3's goal, per connection count: ahead of every peer (median of
    # the within-round ratio below 1 against each), within 2% of raw epoll.
    if "muxio" in names:
        verdict_rows = []
        for peer in PEERS:
            if peer in names:
                verdict_rows.append((f"muxio / {peer}", [paired(rows, "muxio", peer, c).cell() for c in conns]))
        verdict_rows.append(("**against the peers**", [
            verdict_against_peers({p: paired(rows, "muxio", p, c) for p in PEERS if p in names}) for c in conns]))
        if "epoll" in names:
            verdict_rows.append(("**against epoll (2%)**", [
                verdict_against_floor(paired(rows, "muxio", "epoll", c), 0.02) for c in conns]))
        table("muxio's server CPU/msg within each round [90% interval]", columns, verdict_rows)

    table("spread of server CPU/msg (max-min)/median", columns,
          [(n, [fmt((metrics["server_cpu_ns_per_msg"].spread(n, c) or 0) * 100, 1) + " %" for c in conns])
           for n in names])
    table("cross-check: server CPU ns/msg from /proc/PID/stat ticks", columns,
          [(n, [fmt(metrics["server_ticks_ns_per_msg"].median(n, c)) for c in conns]) for n in names])


def simple_section(rows, bench, heading, figures, group_key=None):
    """One table: rows = libraries, columns = figures (and groups)."""
    rows = [r for r in rows if r.get("bench") == bench]
    if not rows:
        return
    groups = sorted({r.get(group_key) for r in rows}, reverse=True) if group_key else [None]
    series = {key: Series() for key, *_ in figures}
    for r in rows:
        for key in series:
            series[key].add(r["impl"], r.get(group_key) if group_key else None, r.get(key))
    names = [n for n in LIB_ORDER if any(series[figures[0][0]].median(n, g) is not None for g in groups)]
    columns = []
    cells = {n: [] for n in names}
    best_cells = []
    verdict_cells = []
    spread_cells = {n: [] for n in names}
    for g in groups:
        for key, title, digits, lower in figures:
            columns.append(title if g is None else f"{title}, {group_key} = {fmt(g)}")
            for n in names:
                cells[n].append(fmt(series[key].median(n, g), digits))
                spread = series[key].spread(n, g)
                spread_cells[n].append("-" if spread is None else f"{spread * 100:.0f} %")
            peer, value = best_peer(series[key], g, lower)
            r = ratio(series[key].median("muxio", g), value)
            best_cells.append(f"{fmt(r, 2)} ({peer})" if peer else "-")
            in_group = (lambda r, g=g: r.get(group_key) == g) if group_key else (lambda r: True)
            versus = {p: within_rounds(rows, "muxio", p, key, in_group) for p in PEERS if p in names}
            verdict_cells.append(verdict_against_peers(versus) if lower and "muxio" in names else "-")
    print(f"### {heading}\n")
    table("library", columns, [(n, cells[n]) for n in names] + [("**muxio / best peer**", best_cells),
                                                                 ("**muxio against the peers, within rounds**",
                                                                  verdict_cells)])
    table("spread (max-min)/median", columns, [(n, spread_cells[n]) for n in names])


def coro_section(rows, bench, heading, figures, group_key=None, group_label=None):
    """Like simple_section for the coroutine benchmarks: rows = CORO_ORDER,
    ratios muxio-coro / best coroutine peer, muxio-coro / muxio callback and
    asio-coro / asio callback."""
    rows = [r for r in rows if r.get("bench") == bench]
    if not rows:
        return
    groups = sorted({r.get(group_key) for r in rows}) if group_key else [None]
    series = {key: Series() for key, *_ in figures}
    for r in rows:
        for key in series:
            series[key].add(r["impl"], r.get(group_key) if group_key else None, r.get(key))
    names = [n for n in CORO_ORDER if any(series[figures[0][0]].median(n, g) is not None for g in groups)]
    columns = []
    cells = {n: [] for n in names}
    spread_cells = {n: [] for n in names}
    ratio_specs = [("muxio-coro", CORO_PEERS, "**muxio-coro / best coroutine peer**"),
                   ("muxio-coro", ("muxio",), "**muxio-coro / muxio callback**"),
                   ("muxio-coro-raw", ("muxio",), "muxio-coro-raw / muxio callback"),
                   ("asio-coro", ("asio",), "asio-coro / asio callback")]
    ratio_cells = {label: [] for *_, label in ratio_specs}
    for g in groups:
        for key, title, digits, lower in figures:
            columns.append(title if g is None else f"{title}, {group_label or group_key} = {fmt(g)}")
            for n in names:
                cells[n].append(fmt(series[key].median(n, g), digits))
                spread = series[key].spread(n, g)
                spread_cells[n].append("-" if spread is None else f"{spread * 100:.0f} %")
            for name, peers, label in ratio_specs:
                peer, value = best_peer(series[key], g, lower, peers)
                r = ratio(series[key].median(name, g), value)
                shown = f" ({peer})" if len(peers) > 1 or peers == CORO_PEERS else ""
                ratio_cells[label].append(f"{fmt(r, 2)}{shown}" if r is not None else "-")
    print(f"### {heading}\n")
    ratio_rows = [(label, ratio_cells[label]) for *_, label in ratio_specs
                  if any(c != "-" for c in ratio_cells[label])]
    table("implementation", columns, [(n, cells[n]) for n in names] + ratio_rows)
    table("spread (max-min)/median", columns, [(n, spread_cells[n]) for n in names])


def main():
    # Several results files pool their rounds (for the same binaries: runs
    # of one tree at different times), each round still compared within.
    rows = []
    for index, path in enumerate(sys.argv[1:]):
        for row in load(path):
            row["round"] = f"{index}:{row.get('round')}"
            rows.append(row)
    echo_section(rows)
    simple_section(rows, "timers", "Timers: schedule, cancel half, run until the rest fired", (
        ("cpu_ns_per_op", "CPU ns per operation", 1, True),
        ("cpu_ns_per_timer", "CPU ns per timer", 1, True),
        ("wall_ms", "wall ms per run", 0, True),
    ))
    simple_section(rows, "soon", "call_soon: callbacks scheduling callbacks, one thread", (
        ("cpu_ns_per_callback", "CPU ns per callback", 1, True),
    ), group_key="chains")
    simple_section(rows, "threadsafe", "call_soon_threadsafe: throughput from another thread", (
        ("wall_ns_per_callback", "wall ns per callback", 1, True),
        ("cpu_ns_per_callback", "CPU ns per callback (both threads)", 1, True),
    ))
    simple_section(rows, "latency", "call_soon_threadsafe: latency, call to callback", (
        ("p50_us", "p50 µs", 2, True),
        ("p99_us", "p99 µs", 2, True),
    ))
    coro_section(rows, "coro_readable", "Coroutines: one readable() round trip (socket-pair ping-pong)", (
        ("cpu_ns_per_round_trip", "CPU ns per round trip", 0, True),
        ("wall_ns_per_round_trip", "wall ns per round trip", 0, True),
    ))
    coro_section(rows, "coro_spawn", "Coroutines: spawn a trivial task and run it to completion", (
        ("cpu_ns_per_task", "CPU ns per task", 1, True),
    ), group_key="tasks", group_label="N")
    rounds = len({r.get("round") for r in rows})
    print(f"Medians over {rounds} interleaved rounds; each loop-benchmark figure of a round is itself the median "
          "of the repetitions inside its process.")
    print("Spread: (largest - smallest) / median over the rounds.")


if __name__ == "__main__":
    main()
