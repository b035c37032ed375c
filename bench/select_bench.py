#!/usr/bin/env python3
"""bench-select's work with Python's selectors (bench/select_bench.cpp).

Per iteration one sel.select(0); the active reader is readable because its
writer sent one byte at setup that nobody reads; for each (key, events)
returned, add key.data to a sum and OR events into a mask. The K idle
descriptors are both ends of K/2 AF_UNIX socketpairs, registered for READ,
created before the active pair. Prints bench-select's rows: contender K
ns_per_select min_ns iterations repetitions.
"""
import argparse
import resource
import selectors
import socket
import statistics
import sys
import time

ACTIVE_DATA = 1
IDLE_DATA = 1 << 40
SELECTORS = {"select": "SelectSelector", "poll": "PollSelector", "epoll": "EpollSelector"}
FD_SETSIZE = 1024  # select.select() refuses descriptors from here on


def run_k(args, k, clock_ns):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < k + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (k + 64, hard))
    sockets = []
    while len(sockets) < k:
        sockets.extend(socket.socketpair())
    reader, writer = socket.socketpair()
    writer.send(b"x")
    contenders = []
    for name in args.contenders:
        if name == "select" and max(reader.fileno(), writer.fileno()) >= FD_SETSIZE:
            print(f"python-{name} {k} skipped")
            continue
        selector = getattr(selectors, SELECTORS[name])()
        for sock in sockets[:k]:
            selector.register(sock, selectors.EVENT_READ, IDLE_DATA)
        selector.register(reader, selectors.EVENT_READ, ACTIVE_DATA)
        contenders.append((f"python-{name}", selector))

    def batch(label, selector, count):
        select, data_sum, mask = selector.select, 0, 0
        start = clock_ns()
        for _ in range(count):
            for key, events in select(0):
                data_sum += key.data
                mask |= events
        elapsed = clock_ns() - start
        if data_sum != count * ACTIVE_DATA or (count and mask != selectors.EVENT_READ):
            raise RuntimeError(f"{label}: {count} calls reported data sum {data_sum:#x} and events {mask:#x}")
        return elapsed

    def calibrate(label, selector):  # also the warm-up
        count, target = 16, args.target_ms * 1_000_000
        while True:
            elapsed = batch(label, selector, count)
            if elapsed >= target / 8:
                return max(1, int(count * target / max(elapsed, 1)))
            count *= 2

    iterations = [calibrate(*c) for c in contenders]
    samples = [[] for _ in contenders]
    for rep in range(args.repetitions):  # interleaved, the order rotating
        for n in range(len(contenders)):
            c = (n + rep) % len(contenders)
            samples[c].append(batch(*contenders[c], iterations[c]) / iterations[c])
    for (label, selector), runs, count in zip(contenders, samples, iterations):
        print(f"{label} {k} {statistics.median(runs):.1f} {min(runs):.1f} {count} {args.repetitions}")
        selector.close()
    for sock in sockets + [reader, writer]:
        sock.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    numbers = lambda text: [int(item) for item in text.split(",") if item]  # noqa: E731
    parser.add_argument("--k", type=numbers, default=[10, 100, 1000, 10000], help="idle descriptors")
    parser.add_argument("--contenders", type=lambda t: [c for c in t.split(",") if c in SELECTORS],
                        default=list(SELECTORS), help="select,poll,epoll (default all)")
    parser.add_argument("--repetitions", type=int, default=5, help="timed repetitions, their median (default 5)")
    parser.add_argument("--target-ms", type=int, default=20, help="length of one repetition (default 20)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: the thread's CPU time, without the time spent preempted (default)")
    args = parser.parse_args()
    args.repetitions = max(1, args.repetitions)
    print("# contender K ns_per_select min_ns iterations repetitions")
    for k in args.k:
        run_k(args, k, time.thread_time_ns if args.clock == "cpu" else time.monotonic_ns)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
