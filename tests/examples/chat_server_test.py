#!/usr/bin/env python3
"""example-chat-server with three loopback clients: lines delivered to the
others, nicknames, /who and /quit, a line over the limit, and a client that
never reads disconnected after the server's bound while the others go on;
then SIGTERM and bad input.

    chat_server_test.py EXAMPLE_CHAT_SERVER
"""

import signal
import socket
import struct
import sys
import time

from harness import DEADLINE, LineClient, Program, check, fail, main, run

example = sys.argv[1]


def start(*extra):
    program = Program([example, "--port", "0", *extra])
    port = int(program.expect(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    return program, port


def join(port, n, others, **kwargs):
    """Connects guest N; each client in `others` hears of it."""
    client = LineClient(port, **kwargs)
    client.expect(rf"\* welcome, you are guest{n}; .*")
    for other in others:
        other.expect(rf"\* guest{n} joined")
    return client


def lines_go_to_the_others_and_nicknames_rename_their_sender():
    program, port = start()
    with program:
        a = join(port, 1, [])
        b = join(port, 2, [a])
        c = join(port, 3, [a, b])
        a.send("hello all\r\n")
        b.expect(r"guest1: hello all")
        c.expect(r"guest1: hello all")
        a.send("/nick alice\n")
        for client in (a, b, c):
            client.expect(r"\* guest1 is now alice")
        b.send("/nick alice\n")
        b.expect(r"\* alice is taken")
        b.send("/nick not ok!\n")
        b.expect(r"\* a nickname is 1 to 24 letters, digits, '_' or '-'")
        b.send("/nick bob\n/who\n/dance\n")
        b.expect(r"\* guest2 is now bob")
        b.expect(r"\* 3 here: alice, bob, guest3")
        b.expect(r"\* unknown command /dance; try /nick NAME, /who or /quit")
        c.expect(r"\* guest2 is now bob")
        c.send("hi alice, hi bob\n")
        a.expect(r"\* guest2 is now bob")
        check(a.read_line() == "guest3: hi alice, hi bob", "alice missed guest3's line")
        check(b.read_line() == "guest3: hi alice, hi bob", "bob missed guest3's line")
        # The sender hears nothing of its own line: once the others have it,
        # the next thing alice reads is bob's answer.
        a.send("only for the others\n")
        check(b.read_line() == "alice: only for the others", "bob missed alice's line")
        check(c.read_line() == "alice: only for the others", "guest3 missed alice's line")
        b.send("bob here\n")
        check(a.read_line() == "bob: bob here", "alice heard something else first")
        check(c.read_line() == "bob: bob here", "guest3 missed bob's line")
        c.send("/quit\n")
        check(c.expect_closed() == ["* bye"], "/quit")
        check(a.read_line() == "* guest3 left", "alice: guest3 leaving")
        check(b.read_line() == "* guest3 left", "bob: guest3 leaving")
        for client in (a, b, c):
            client.close()
        program.stop(signal.SIGTERM, 0)


def a_line_over_the_limit_ends_its_senders_connection_only():
    program, port = start("--max-line", "100")
    with program:
        a = join(port, 1, [])
        b = join(port, 2, [a])
        a.send("x" * 101 + "\n")
        check(a.expect_closed() == ["* line longer than 100 bytes, disconnecting"], "long line")
        b.expect(r"\* guest1 left")
        c = join(port, 3, [b])
        c.send("x" * 1000)  # no newline at all: refused without waiting for one
        check(c.expect_closed() == ["* line longer than 100 bytes, disconnecting"], "endless line")
        b.expect(r"\* guest3 left")
        b.send("/who\n")
        b.expect(r"\* 1 here: guest2")
        for client in (a, b, c):
            client.close()
        program.stop(signal.SIGINT, 0)


def a_client_that_never_reads_is_disconnected_and_the_others_go_on():
    program, port = start("--max-line", "32768", "--max-queued", "65536")
    with program:
        talker = join(port, 1, [])
        reader = join(port, 2, [talker])
        # A small receive window, so the kernel holds little for it and the
        # server's own queue reaches its bound sooner.
        stalled = join(port, 3, [talker, reader], rcvbuf=4096)
        line = "y" * 30000
        sent = 0
        deadline = time.monotonic() + DEADLINE * 3
        # Lockstep: the reader takes each line before the next is sent, so
        # only the stalled client's queue grows. Bounded by bytes and time.
        while True:
            talker.send(line + "\n")
            sent += len(line)
            got = reader.read_line()
            if got == "* guest3 left (not reading)":
                break
            check(got == "guest1: " + line, f"reader got {got[:60]!r}")
            if sent > 256 * 1024 * 1024 or time.monotonic() > deadline:
                fail(f"the stalled client was still connected after {sent} bytes")
        talker.expect(r"\* guest3 left \(not reading\)")
        # The others go on.
        talker.send("after the stall\n")
        reader.expect(r"guest1: after the stall")
        reader.send("/who\n")
        reader.expect(r"\* 2 here: guest1, guest2")
        # The stalled client finds its connection closed (maybe reset) after
        # what the kernel held for it.
        stalled.sock.settimeout(DEADLINE)
        total = 0
        try:
            while chunk := stalled.sock.recv(1 << 20):
                total += len(chunk)
        except ConnectionResetError:
            pass
        rest = program.stop(signal.SIGTERM, 0)
        check(rest == ["stopped by signal 15: 3 clients served, 1 disconnected for not reading, 2 still connected"],
              f"unexpected end: {rest}")
        for client in (talker, reader, stalled):
            client.close()
        print(f"  stalled client dropped after {sent} bytes sent to the room")


def a_leaving_client_that_never_reads_its_last_lines_is_closed_after_the_linger():
    # More than the kernel can hold for the stalled client (its send buffer
    # at most tcp_wmem's maximum, its receive buffer small), so some of it is
    # still queued in the server when the client says /quit.
    kernel_max = int(open("/proc/sys/net/ipv4/tcp_wmem").read().split()[2])
    program, port = start("--max-line", "32768", "--max-queued", str(1 << 30), "--linger", "0.3")
    with program:
        talker = join(port, 1, [])
        reader = join(port, 2, [talker])
        stalled = join(port, 3, [talker, reader], rcvbuf=4096)
        line = "z" * 30000
        sent = 0
        while sent < 2 * kernel_max + (1 << 20):
            talker.send(line + "\n")
            sent += len(line)
            check(reader.read_line() == "guest1: " + line, "the reader missed a line")
        stalled.send("/quit\n")
        reader.expect(r"\* guest3 left \(did not read its last lines\)")
        talker.expect(r"\* guest3 left \(did not read its last lines\)")
        rest = program.stop(signal.SIGTERM, 0)
        check(rest == ["stopped by signal 15: 3 clients served, 0 disconnected for not reading, 2 still connected"],
              f"unexpected end: {rest}")
        for client in (talker, reader, stalled):
            client.close()


def a_client_that_vanishes_with_lines_queued_for_it_leaves_and_the_others_go_on():
    kernel_max = int(open("/proc/sys/net/ipv4/tcp_wmem").read().split()[2])
    program, port = start("--max-line", "32768", "--max-queued", str(1 << 30))
    with program:
        talker = join(port, 1, [])
        reader = join(port, 2, [talker])
        vanishing = join(port, 3, [talker, reader], rcvbuf=4096)
        line = "v" * 30000
        sent = 0
        while sent < 2 * kernel_max + (1 << 20):  # some of it still queued in the server
            talker.send(line + "\n")
            sent += len(line)
            check(reader.read_line() == "guest1: " + line, "the reader missed a line")
        # Gone mid-write: a reset, not an orderly close.
        vanishing.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        vanishing.close()
        reader.expect(r"\* guest3 left \((Connection reset by peer|Broken pipe)\)")
        talker.expect(r"\* guest3 left \((Connection reset by peer|Broken pipe)\)")
        talker.send("still here\n")
        reader.expect(r"guest1: still here")
        rest = program.stop(signal.SIGTERM, 0)
        check(rest == ["stopped by signal 15: 3 clients served, 0 disconnected for not reading, 2 still connected"],
              f"unexpected end: {rest}")
        talker.close()
        reader.close()


def sigterm_closes_every_connection():
    program, port = start()
    with program:
        a = join(port, 1, [])
        b = join(port, 2, [a])
        rest = program.stop(signal.SIGTERM, 0)
        check(rest == ["stopped by signal 15: 2 clients served, 0 disconnected for not reading, 2 still connected"],
              f"unexpected end: {rest}")
        check(a.expect_closed() == [] and b.expect_closed() == [], "connections left open")
        a.close()
        b.close()


def the_server_turns_away_clients_over_its_limit():
    program, port = start("--max-clients", "1")
    with program:
        a = join(port, 1, [])
        turned_away = LineClient(port)
        check(turned_away.expect_closed() == ["* the server is full, try later"], "second client")
        a.send("/who\n")
        a.expect(r"\* 1 here: guest1")
        a.close()
        turned_away.close()
        program.stop(signal.SIGTERM, 0)


def bad_command_lines_are_refused():
    for argv, needle in ((["--bind", "example.com"], "not an IPv4 or IPv6 address"),
                         (["--max-line", "0"], "--max-line"),
                         (["--max-line", "1000", "--max-queued", "1999"], "at least twice --max-line"),
                         (["--max-clients", "-3"], "--max-clients"), (["--linger", "0"], "--linger")):
        status, out, err = run([example] + argv)
        check(status == 2, f"{argv}: exit status {status}")
        check(needle in err, f"{argv}: stderr {err!r}")
    status, out, err = run([example, "--help"])
    check(status == 0 and "/nick" in out and "--max-queued" in out, f"--help: {status} {out!r}")


main([lines_go_to_the_others_and_nicknames_rename_their_sender,
      a_line_over_the_limit_ends_its_senders_connection_only,
      a_client_that_never_reads_is_disconnected_and_the_others_go_on,
      a_leaving_client_that_never_reads_its_last_lines_is_closed_after_the_linger,
      a_client_that_vanishes_with_lines_queued_for_it_leaves_and_the_others_go_on, sigterm_closes_every_connection,
      the_server_turns_away_clients_over_its_limit, bad_command_lines_are_refused])
