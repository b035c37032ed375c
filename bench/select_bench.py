#!/usr/bin/env python3
"""The select() cost benchmark of bench/select_bench.cpp, with Python's selectors.

The same work per iteration as the C++ binary: one sel.select(0); the active
reader is readable because its writer sent one byte at setup that nobody
reads; for each (key, events) returned, add key.data to a sum and OR events
into a mask. The K idle descriptors are both ends of K/2 AF_UNIX socketpairs,
registered for READ, created before the active pair. Prints the same rows as
bench-select: contender K ns_per_select min_ns iterations repetitions.
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

SELECTORS = {
    "select": "SelectSelector",
    "poll": "PollSelector",
    "epoll": "EpollSelector",
}

# select.select() refuses descriptors from FD_SETSIZE on; 1024 on Linux.
FD_SETSIZE = 1024


def raise_fd_limit(idle):
    wanted = idle + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    if hard != resource.RLIM_INFINITY and hard < wanted:
        sys.exit(f"select_bench.py: K = {idle} needs {wanted} descriptors; the hard RLIMIT_NOFILE is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Fixture:
    """K idle descriptors, then the active pair with one byte pending."""

    def __init__(self, idle):
        raise_fd_limit(idle)
        self.sockets = []
        while len(self.sockets) < idle:
            self.sockets.extend(socket.socketpair())
        self.idle = self.sockets[:idle]
        self.active_reader, self.active_writer = socket.socketpair()
        self.active_writer.send(b"x")

    def highest_fd(self):
        return max(self.active_reader.fileno(), self.active_writer.fileno())

    def close(self):
        for sock in self.sockets + [self.active_reader, self.active_writer]:
            sock.close()


class Contender:
    def __init__(self, name, fixture):
        self.label = f"python-{name}"
        self.selector = getattr(selectors, SELECTORS[name])()
        for sock in fixture.idle:
            self.selector.register(sock, selectors.EVENT_READ, IDLE_DATA)
        self.selector.register(fixture.active_reader, selectors.EVENT_READ, ACTIVE_DATA)

    def run(self, count):
        select = self.selector.select
        data_sum = 0
        mask = 0
        for _ in range(count):
            for key, events in select(0):
                data_sum += key.data
                mask |= events
        return data_sum, mask

    def close(self):
        self.selector.close()


# The thread's CPU time by default, as in select_bench.cpp: a select() with
# timeout zero never sleeps, so its CPU time is its cost, without the time the
# process sat preempted on a shared machine.
clock_ns = time.thread_time_ns


def time_batch(contender, count):
    start = clock_ns()
    data_sum, mask = contender.run(count)
    elapsed = clock_ns() - start
    if data_sum != count * ACTIVE_DATA or (count > 0 and mask != selectors.EVENT_READ):
        raise RuntimeError(f"{contender.label}: {count} calls reported data sum {data_sum:#x} and events {mask:#x}")
    return elapsed


def calibrate(contender, target_ms):
    """Doubles the batch until it is measurable, then scales it to about target_ms; also the warm-up."""
    target_ns = target_ms * 1_000_000
    count = 16
    while True:
        elapsed = time_batch(contender, count)
        if elapsed >= target_ns / 8 or count >= 1 << 40:
            return max(1, int(count * target_ns / max(elapsed, 1)))
        count *= 2


def run_k(args, k):
    fixture = Fixture(k)
    contenders = []
    try:
        for name in args.contenders:
            if name == "select" and fixture.highest_fd() >= FD_SETSIZE:
                print(f"# python-{name} K={k} skipped: highest fd {fixture.highest_fd()} "
                      f"is not below FD_SETSIZE ({FD_SETSIZE})")
                print(f"python-{name} {k} skipped")
                continue
            contenders.append(Contender(name, fixture))
        iterations = []
        for contender in contenders:
            if args.iterations:
                time_batch(contender, args.iterations // 10 + 1)  # warm-up
                iterations.append(args.iterations)
            else:
                iterations.append(calibrate(contender, args.target_ms))
        samples = [[] for _ in contenders]
        for rep in range(args.repetitions):
            for n in range(len(contenders)):
                c = (n + rep) % len(contenders)
                samples[c].append(time_batch(contenders[c], iterations[c]) / iterations[c])
        for c, contender in enumerate(contenders):
            print(f"{contender.label} {k} {statistics.median(samples[c]):.1f} {min(samples[c]):.1f} "
                  f"{iterations[c]} {args.repetitions}")
        sys.stdout.flush()
    finally:
        for contender in contenders:
            contender.close()
        fixture.close()


def comma_list(convert):
    return lambda text: [convert(item) for item in text.split(",") if item]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=comma_list(int), default=[10, 100, 1000, 10000],
                        help="idle descriptors, comma-separated (default 10,100,1000,10000)")
    parser.add_argument("--contenders", type=comma_list(str), default=list(SELECTORS),
                        help="selectors to run: select,poll,epoll (default all)")
    parser.add_argument("--iterations", type=int, default=0,
                        help="select() calls per repetition; 0 calibrates to --target-ms (default 0)")
    parser.add_argument("--repetitions", type=int, default=5,
                        help="timed repetitions, interleaved across contenders; the median is printed (default 5)")
    parser.add_argument("--target-ms", type=int, default=20, help="calibrated repetition length (default 20)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: the thread's CPU time (default); wall: the monotonic clock")
    args = parser.parse_args()
    global clock_ns
    clock_ns = time.thread_time_ns if args.clock == "cpu" else time.monotonic_ns
    for name in args.contenders:
        if name not in SELECTORS:
            parser.error(f"unknown contender {name!r}; choose from {','.join(SELECTORS)}")
    args.repetitions = max(1, args.repetitions)
    print("# contender K ns_per_select min_ns iterations repetitions")
    for k in args.k:
        run_k(args, k)


if __name__ == "__main__":
    main()
