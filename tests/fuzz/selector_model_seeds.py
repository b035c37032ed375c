#!/usr/bin/env python3
"""Writes the hand-made seeds of the selector_model fuzzer's corpus, one per
point of the selector contract, in the encoding selector_model.hpp decodes:

    python3 tests/fuzz/selector_model_seeds.py tests/fuzz/corpus/selector_model

Replay one with MUXIO_FUZZ_TRACE=1 build/dev/tests/fuzz/selector_model_replay FILE
to see the operations it decodes to.
"""
import pathlib
import sys

# Opcodes (the opcode byte modulo 20).
SOCKETPAIR, PIPE, DUP, CLOSE, SHUTDOWN, WRITE, FILL, READ = range(8)
REGISTER, UNREGISTER, MODIFY, REREGISTER, SELECT, SELECT_TOKENS = 8, 10, 11, 13, 14, 15
REUSE, LOOKUP, FILENO_OR_TIMED, CLOSE_SELECTOR = 16, 17, 18, 19

# Events bytes.
R, W, RW, EMPTY, UNKNOWN_BIT = 0, 1, 2, 6, 7
# shutdown's how.
SHUT_WR, SHUT_RD, SHUT_RDWR = 0, 1, 2


def slot(k):
    """A target: the number of handle slot k (the number it had once closed)."""
    return 8 * k


def obj(k):
    """A target: handle slot k as a file object."""
    return 8 * k + 4


def closed(i):
    """A target: the i-th number the harness closed."""
    return 8 * i + 6


def odd(j):
    """A target: -1, -1000, FD_SETSIZE - 1, FD_SETSIZE, 1 << 20, INT_MAX, 0x7ffffff0, 200."""
    return 8 * j + 7


def data(value, with_data=True):
    return (value << 1) | int(with_data)


def split(pieces, select_between):
    return (pieces - 1) | (0x10 if select_between else 0)


AMOUNT_ALL = 4  # reads up to 65536 bytes
WRITE_100, WRITE_4096 = 2, 4

SEEDS = {
    "basic": [SOCKETPAIR, REGISTER, slot(0), R, 1, SELECT, WRITE, 1, WRITE_100, SELECT,
              READ, 0, AMOUNT_ALL, split(1, False), SELECT, UNREGISTER, slot(0), SELECT],
    "errors": [SOCKETPAIR, REGISTER, slot(0), UNKNOWN_BIT, 1, REGISTER, slot(0), EMPTY, 1,
               REGISTER, odd(0), R, 1, REGISTER, odd(3), R, 1, REGISTER, odd(5), R, 1,
               REGISTER, odd(2), W, 1, REGISTER, slot(0), R, 1, REGISTER, slot(0), W, 2,
               UNREGISTER, slot(1), MODIFY, slot(1), R, data(3), REREGISTER, slot(1), R,
               MODIFY, slot(0), EMPTY, data(3), LOOKUP, slot(1), LOOKUP, slot(0), SELECT],
    "closed_selectors": [SOCKETPAIR, REGISTER, slot(0), RW, 1, CLOSE_SELECTOR, 0, CLOSE_SELECTOR, 4,
                         CLOSE_SELECTOR, 8, REGISTER, slot(1), R, 2, UNREGISTER, slot(0), MODIFY, slot(0), R,
                         data(1), REREGISTER, slot(0), R, LOOKUP, slot(0), FILENO_OR_TIMED, 1, SELECT,
                         SELECT_TOKENS, CLOSE_SELECTOR, 12, SELECT],
    "closed_behind_back": [SOCKETPAIR, REGISTER, slot(0), RW, 1, CLOSE, 0, SELECT, MODIFY, slot(0), R,
                           data(2), SELECT, SELECT_TOKENS, MODIFY, slot(0), W, data(3, False), SELECT,
                           REREGISTER, slot(0), RW, SELECT, REGISTER, slot(0), R, 4, UNREGISTER, slot(0),
                           SELECT],
    "closed_behind_duplicate": [SOCKETPAIR, REGISTER, slot(0), R, 1, DUP, 0, CLOSE, 0, WRITE, 1, WRITE_100,
                                SELECT, UNREGISTER, slot(0), SELECT, SELECT_TOKENS, FILENO_OR_TIMED, 0,
                                SOCKETPAIR, REGISTER, slot(0), R, 2, SELECT],
    "reuse_reregister": [SOCKETPAIR, REGISTER, slot(0), R, 1, DUP, 0, WRITE, 1, WRITE_100, CLOSE, 0,
                         REUSE, 0, 1, REREGISTER, slot(0), R, SELECT, WRITE, 3, WRITE_100, SELECT,
                         UNREGISTER, slot(0), SELECT],
    "reuse_modify": [SOCKETPAIR, REGISTER, slot(0), R, 1, CLOSE, 0, MODIFY, closed(0), RW, data(1), SELECT,
                     REUSE, 0, 1, MODIFY, slot(0), R, data(2), SELECT, WRITE, 3, WRITE_100, SELECT],
    "reuse_by_duplicate": [SOCKETPAIR, REGISTER, slot(0), R, 1, DUP, 0, CLOSE, 0, REUSE, 0, 4,
                           SELECT, WRITE, 1, WRITE_100, SELECT, MODIFY, slot(0), RW, data(5), SELECT,
                           UNREGISTER, slot(0), REGISTER, slot(0), R, 6, SELECT],
    "rebuild_meets_closed_number": [SOCKETPAIR, REGISTER, slot(0), R, 1, SOCKETPAIR, REGISTER, slot(2), R, 2,
                                    DUP, 2, CLOSE, 2, WRITE, 3, WRITE_100, UNREGISTER, closed(0), CLOSE, 0,
                                    SELECT, SELECT, UNREGISTER, closed(1), SELECT],
    "rebuild_meets_own_set": [SOCKETPAIR, REGISTER, slot(0), R, 1, SOCKETPAIR, REGISTER, slot(2), R, 2,
                              DUP, 2, CLOSE, 2, WRITE, 3, WRITE_100, UNREGISTER, closed(0), CLOSE, 0,
                              FILENO_OR_TIMED, 1, SELECT, SELECT, SELECT_TOKENS],
    "objects": [SOCKETPAIR, REGISTER, obj(0), R, 1, LOOKUP, obj(0), CLOSE, 0, LOOKUP, obj(0),
                MODIFY, obj(0), W, data(2), SELECT, UNREGISTER, obj(0), REGISTER, obj(0), R, 3,
                UNREGISTER, obj(0), SELECT],
    "split_reads": [SOCKETPAIR, REGISTER, slot(0), R, 1, WRITE, 1, WRITE_4096,
                    READ, 0, 3, split(4, True), SELECT, WRITE, 1, WRITE_100,
                    READ, 0, 2, split(3, True), SELECT, READ, 0, AMOUNT_ALL, split(2, False), SELECT],
    "hang_ups": [SOCKETPAIR, FILL, 0, REGISTER, slot(0), W, 1, REGISTER, slot(1), RW, 2, SELECT,
                 SHUTDOWN, 1, SHUT_RDWR, SELECT, PIPE, REGISTER, slot(2), RW, 3, REGISTER, slot(3), W, 4,
                 CLOSE, 3, SELECT, SOCKETPAIR, REGISTER, slot(3), R, 5, SHUTDOWN, 4, SHUT_WR, SELECT],
    "pipes": [PIPE, REGISTER, slot(0), RW, 1, REGISTER, slot(1), RW, 2, SELECT, FILL, 1, SELECT,
              READ, 0, 2, split(2, True), SELECT, CLOSE, 0, SELECT, UNREGISTER, slot(0), SELECT],
    "huge_numbers": [SOCKETPAIR, REGISTER, odd(5), R, 1, REGISTER, odd(6), R, 1, REGISTER, odd(4), R, 1,
                     REGISTER, slot(0), R, 2, SELECT],
    "devnull": [SOCKETPAIR, REGISTER, slot(0), RW, 1, DUP, 0, CLOSE, 0, REUSE, 0, 5, SELECT,
                MODIFY, slot(0), R, data(2), SELECT, REREGISTER, slot(0), W, SELECT, UNREGISTER, slot(0),
                REGISTER, slot(0), RW, 3, SELECT, MODIFY, slot(0), R, data(4), REREGISTER, slot(0), W, SELECT],
    "timed_select": [SOCKETPAIR, REGISTER, slot(0), R, 1, FILENO_OR_TIMED, 0, WRITE, 1, WRITE_100,
                     FILENO_OR_TIMED, 1, SELECT],
}


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    for name, program in SEEDS.items():
        (out / f"seed-{name}").write_bytes(bytes(program))


if __name__ == "__main__":
    main()
