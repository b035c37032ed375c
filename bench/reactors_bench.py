#!/usr/bin/env python3
"""muxio-echo on 1 and more reactors (--threads): server CPU per message and throughput.

    python3 bench/reactors_bench.py --build-dir build/release --threads 1,2 --rounds 7

Each round starts muxio-echo once per thread count, in an order shuffled anew
each round (seeded by the round), drives it with muxio-loadgen (--connections
ping-pong connections of 64-byte messages, --messages each: a fixed amount of
work, not a fixed time) and reads:

- server CPU per message: the CPU time of all the server's threads
  (/proc/PID/task/*/schedstat, nanoseconds) over the load generator's run,
  divided by the messages echoed;
- throughput: the load generator's messages per second;
- the load generator's own CPU per message (its rusage), since it shares
  the machine's cores with the server.

Nothing is pinned: with N server threads and one load generator on a machine
of fewer than N + 1 cores, they take turns on the cores. Prints the medians
and ranges over the rounds.
"""
import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile

# perf's counts over a run, per message: every system call, and the waits and
# context switches among them.
PERF_EVENTS = "raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait,context-switches"


def server_cpu_ns(pid):
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
            total += int(stat.read().split()[0])
    return total


def one_run(args, threads, perf=False):
    server = subprocess.Popen([os.path.join(args.build_dir, "apps", "muxio-echo"), "--port", "0", "--threads",
                               str(threads)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        line = server.stdout.readline().decode()
        port = re.match(r"listening on [^ ]*:(\d+) ", line).group(1)
        with tempfile.NamedTemporaryFile(suffix=".json") as result:
            command = [os.path.join(args.build_dir, "apps", "muxio-loadgen"), "--port", port, "-c",
                       str(args.connections), "-s", "64", "-n", str(args.messages), "-d", "600", "--progress",
                       "never", "--json", result.name]
            counter = None
            if perf:  # counts every thread of the server; slows it, so no CPU figure from this run
                counter = subprocess.Popen(["perf", "stat", "-x", ",", "-e", PERF_EVENTS, "-p", str(server.pid)],
                                           stderr=subprocess.PIPE, text=True)
            before = server_cpu_ns(server.pid)
            client = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            _, status, usage = os.wait4(client.pid, 0)
            after = server_cpu_ns(server.pid)
            if counter is not None:
                counter.send_signal(signal.SIGINT)
                counts = {fields[2]: fields[0] for fields in (line.split(",") for line in counter.communicate()[1]
                                                              .splitlines()) if len(fields) > 2}
            if status != 0:
                raise RuntimeError(f"muxio-loadgen failed: {status}")
            report = json.load(open(result.name))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    messages = report["messages"]
    if report["errors"] or report["mismatches"] or messages != args.connections * args.messages:
        raise RuntimeError(f"bad run: {report}")
    client_ns = (usage.ru_utime + usage.ru_stime) * 1e9
    result = dict(server_ns=(after - before) / messages, rate=report["messages_per_second"],
                  client_ns=client_ns / messages)
    if perf:
        for event in PERF_EVENTS.split(","):
            value = counts.get(event, "")
            result[event] = int(value) / messages if value.isdigit() else float("nan")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", default="build/release")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--messages", type=int, default=3000, help="messages per connection")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--perf", action="store_true",
                        help="then one run per thread count under perf stat: system calls, epoll_waits and context "
                             "switches per message (needs root or perf_event_paranoid -1)")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    results = {t: [] for t in counts}
    for round_number in range(args.rounds):
        order = counts[:]
        random.Random(round_number).shuffle(order)
        for threads in order:
            results[threads].append(one_run(args, threads))
        print(f"round {round_number + 1} of {args.rounds} done", file=sys.stderr)

    def cell(runs, key, scale=1.0, digits=0):
        values = sorted(r[key] * scale for r in runs)
        return f"{statistics.median(values):,.{digits}f} [{values[0]:,.{digits}f}, {values[-1]:,.{digits}f}]"

    print(f"| --threads | server CPU ns/msg | messages/s | load generator CPU ns/msg |")
    print("|---:|---:|---:|---:|")
    for threads in counts:
        runs = results[threads]
        print(f"| {threads} | {cell(runs, 'server_ns')} | {cell(runs, 'rate')} | {cell(runs, 'client_ns')} |")
    if len(counts) > 1:
        base = results[counts[0]]
        for threads in counts[1:]:
            ratios = sorted(r["server_ns"] / b["server_ns"] for r, b in zip(results[threads], base))
            print(f"\nserver CPU per message, {threads} threads ÷ {counts[0]} (per round): median "
                  f"{statistics.median(ratios):.3f}, range [{ratios[0]:.3f}, {ratios[-1]:.3f}]")
    if args.perf:
        print("\n| --threads | system calls/msg | epoll_wait/msg | context switches/msg |")
        print("|---:|---:|---:|---:|")
        for threads in counts:
            run = one_run(args, threads, perf=True)
            print(f"| {threads} | " + " | ".join(f"{run[e]:.3f}" for e in PERF_EVENTS.split(",")) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
