#!/usr/bin/env python3
"""example-glib-loop as a user runs it: the reactor, a GSource of GLib's main
loop, serves lines on loopback; its timers (the idle timeout) fire inside
GLib's loop; GLib's own timeout prints the status and GLib's signal sources
stop it; bad input.

    glib_loop_test.py EXAMPLE_GLIB_LOOP
"""

import signal
import sys

from harness import LineClient, Program, check, main, run

example = sys.argv[1]


def start(*extra):
    program = Program([example, "--port", "0", *extra])
    port = int(program.expect(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    return program, port


def answers_each_line_in_upper_case():
    program, port = start()
    with program:
        first, second = LineClient(port), LineClient(port)
        first.send("hello glib\r\nsecond line\n")
        second.send("from the other one\n")
        check(first.read_line() == "HELLO GLIB", "first reply")
        check(first.read_line() == "SECOND LINE", "second reply")
        check(second.read_line() == "FROM THE OTHER ONE", "the other connection's reply")
        rest = program.stop(signal.SIGTERM, 0)
        check(rest == ["stopped by signal 15: 2 connections, 3 lines"], f"unexpected end: {rest}")
        check(first.expect_closed() == [] and second.expect_closed() == [], "connections left open")
        first.close()
        second.close()


def a_silent_connection_is_closed_by_a_reactor_timer():
    program, port = start("--idle-timeout", "0.3")
    with program:
        silent = LineClient(port)
        lines = silent.expect_closed()
        check(lines == ["bye: idle for 300 ms"], f"silent client got {lines}")
        silent.close()
        rest = program.stop(signal.SIGTERM, 0)
        check(rest == ["stopped by signal 15: 1 connections, 0 lines"], f"unexpected end: {rest}")


def a_line_longer_than_the_limit_ends_its_connection_only():
    program, port = start()
    with program:
        greedy = LineClient(port)
        other = LineClient(port)
        greedy.send("x" * 10000)
        lines = greedy.expect_closed()
        check(lines == ["error: line longer than 4096 bytes"], f"greedy client got {lines}")
        other.send("still served\n")
        check(other.read_line() == "STILL SERVED", "the other connection")
        greedy.close()
        other.close()
        program.stop(signal.SIGINT, 0)


def glib_timeouts_print_the_status_beside_the_reactor():
    program, port = start("--status-every", "0.05")
    with program:
        program.expect(r"status: open=0 accepted=0 lines=0")
        client = LineClient(port)
        client.send("one\n")
        check(client.read_line() == "ONE", "reply")
        program.expect(r"status: open=1 accepted=1 lines=1")
        client.close()
        rest = program.stop(signal.SIGTERM, 0)
        check(rest[-1] == "stopped by signal 15: 1 connections, 1 lines", f"unexpected end: {rest}")


def a_reactor_without_an_embeddable_descriptor_is_refused():
    status, out, err = run(["env", "MUXIO_SELECTOR=poll", example, "--port", "0"])
    check(status == 1, f"exit status {status}")
    check("embed_fd" in err, f"stderr: {err!r}")


def bad_command_lines_are_refused():
    for argv, needle in ((["--bind", "::1::"], "not an IPv4 or IPv6 address"),
                         (["--idle-timeout", "0"], "--idle-timeout"), (["--port", "x"], "--port")):
        status, out, err = run([example] + argv)
        check(status == 2, f"{argv}: exit status {status}")
        check(needle in err, f"{argv}: stderr {err!r}")
    status, out, err = run([example, "--help"])
    check(status == 0 and "--idle-timeout" in out, f"--help: {status} {out!r}")


main([answers_each_line_in_upper_case, a_silent_connection_is_closed_by_a_reactor_timer,
      a_line_longer_than_the_limit_ends_its_connection_only, glib_timeouts_print_the_status_beside_the_reactor,
      a_reactor_without_an_embeddable_descriptor_is_refused, bad_command_lines_are_refused])
