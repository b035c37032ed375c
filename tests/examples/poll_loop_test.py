#!/usr/bin/env python3
"""example-poll-loop as a user runs it: echo on loopback served by the
embedded reactor while the host loop answers stdin commands and keeps its
own deadline; stopped by "quit", by SIGTERM after stdin closed, and bad input.

    poll_loop_test.py EXAMPLE_POLL_LOOP
"""

import os
import signal
import sys

from harness import LineClient, Program, check, main, run

example = sys.argv[1]


def start(*extra):
    program = Program([example, "--port", "0", *extra], stdin=True)
    port = int(program.expect(r"listening on 127\.0\.0\.1:(\d+)").group(1))
    return program, port


def echoes_on_the_reactor_while_the_host_answers_stdin():
    program, port = start()
    with program:
        first, second = LineClient(port), LineClient(port)
        first.send("hello\n")
        second.send("world\n")
        check(first.read_line() == "hello", "first client's echo")
        check(second.read_line() == "world", "second client's echo")
        big = os.urandom(1 << 20).hex() + "\n"  # 2 MiB, more than the socket buffers hold at once
        first.send(big)
        check(first.read_line() + "\n" == big, "the 2 MiB line came back changed")
        program.write("status\n")
        program.expect(rf"status: open=2 accepted=2 bytes={6 + 6 + len(big)}")
        program.write("bogus\n")
        program.expect(r"unknown command: bogus \(try status or quit\)")
        program.write("x" * 5000)
        program.expect(r"unknown command: a line longer than 1024 bytes, dropped")
        program.write("\nquit\n")
        rest = program.finish(0)
        check(rest == [f"stopped by quit: 2 connections, {12 + len(big)} bytes echoed"], f"unexpected end: {rest}")
        # The server is gone, and closed what it had open.
        check(first.read_line() is None and second.read_line() is None, "connections left open")
        first.close()
        second.close()


def a_closed_stdin_leaves_the_server_running_until_sigterm():
    program, port = start()
    with program:
        program.close_stdin()
        program.expect(r"stdin closed: serving until SIGINT or SIGTERM")
        client = LineClient(port)
        client.send("still here\n")
        check(client.read_line() == "still here", "echo after stdin closed")
        rest = program.stop(signal.SIGTERM, 0)
        check(rest == ["stopped by signal 15: 1 connections, 11 bytes echoed"], f"unexpected end: {rest}")
        client.close()


def the_host_deadline_prints_status_lines_of_its_own():
    program, port = start("--status-every", "0.05")
    with program:
        for _ in range(3):
            program.expect(r"status: open=0 accepted=0 bytes=0")
        program.stop(signal.SIGINT, 0)


def a_reactor_without_an_embeddable_descriptor_is_refused():
    env_argv = ["env", "MUXIO_SELECTOR=poll", example, "--port", "0"]
    status, out, err = run(env_argv)
    check(status == 1, f"exit status {status}")
    check("embed_fd" in err, f"stderr: {err!r}")


def bad_command_lines_and_a_taken_port_are_refused():
    for argv, needle in ((["--bind", "localhost"], "not an IPv4 or IPv6 address"),
                         (["--port", "70000"], "--port"), (["--status-every", "-1"], "--status-every")):
        status, out, err = run([example] + argv)
        check(status == 2, f"{argv}: exit status {status}")
        check(needle in err, f"{argv}: stderr {err!r}")
    program, port = start()
    with program:
        status, out, err = run([example, "--port", str(port)])
        check(status == 1 and "Address already in use" in err, f"second server on {port}: {status} {err!r}")
        program.stop(signal.SIGTERM, 0)
    status, out, err = run([example, "--help"])
    check(status == 0 and "--status-every" in out, f"--help: {status} {out!r}")


main([echoes_on_the_reactor_while_the_host_answers_stdin, a_closed_stdin_leaves_the_server_running_until_sigterm,
      the_host_deadline_prints_status_lines_of_its_own, a_reactor_without_an_embeddable_descriptor_is_refused,
      bad_command_lines_and_a_taken_port_are_refused])
