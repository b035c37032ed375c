#!/usr/bin/env python3
"""The statistics behind the benchmark verdicts (bench/benchstats.py), and
the application summary built on them (bench/summarize_app_bench.py) run on
a small synthetic results file."""
import contextlib
import io
import os
import sys
import tempfile
import unittest
import unittest.mock

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench")
sys.path.insert(0, BENCH)

import benchstats  # noqa: E402
from benchstats import Comparison, median_coverage, median_interval  # noqa: E402


def summary_of(summarizer, lines):
    """What `summarizer`'s main() prints for a results file of `lines`."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as results:
        results.write("\n".join(lines) + "\n")
    try:
        output = io.StringIO()
        with contextlib.redirect_stdout(output), unittest.mock.patch.object(sys, "argv", ["x", results.name]):
            summarizer.main()
    finally:
        os.unlink(results.name)
    return output.getvalue()


class Coverage(unittest.TestCase):
    def test_known_values(self):
        self.assertAlmostEqual(median_coverage(5, 1), 1 - 2 / 32)
        self.assertAlmostEqual(median_coverage(9, 2), 1 - 2 * 10 / 512)
        self.assertAlmostEqual(median_coverage(3, 1), 0.75)

    def test_impossible_ranks_cover_nothing(self):
        self.assertEqual(median_coverage(4, 3), 0.0)
        self.assertEqual(median_coverage(0, 1), 0.0)


class Interval(unittest.TestCase):
    def test_too_few_values_for_90_percent(self):
        self.assertIsNone(median_interval([1.0, 2.0, 3.0, 4.0]))

    def test_five_values_give_the_extremes(self):
        self.assertEqual(median_interval([5.0, 1.0, 3.0, 2.0, 4.0]), (1.0, 5.0))

    def test_nine_values_drop_one_at_each_end(self):
        self.assertEqual(median_interval([float(v) for v in range(9, 0, -1)]), (2.0, 8.0))

    def test_eleven_values_drop_two_at_each_end(self):
        # k = 3 covers 1 - 2 * 67 / 2048 = 0.935; k = 4 only 0.774.
        self.assertEqual(median_interval([float(v) for v in range(11)]), (2.0, 8.0))

    def test_missing_values_are_ignored(self):
        self.assertEqual(median_interval([1.0, float("nan"), 2.0, None, 3.0, 4.0, 5.0]), (1.0, 5.0))


class Verdicts(unittest.TestCase):
    def test_first_when_every_median_is_below_one(self):
        verdict = benchstats.verdict_against_peers(
            {"a": Comparison([0.9, 0.95, 0.97, 1.02, 0.99]), "b": Comparison([0.5] * 5)})
        self.assertEqual(verdict, "first")

    def test_within_noise_when_every_interval_reaches_one(self):
        verdict = benchstats.verdict_against_peers(
            {"a": Comparison([1.01, 1.03, 0.98, 1.05, 1.02, 1.04, 1.01]), "b": Comparison([0.5] * 7)})
        self.assertEqual(verdict, "within noise of first")

    def test_behind_names_the_peers_ahead_beyond_the_noise(self):
        verdict = benchstats.verdict_against_peers(
            {"a": Comparison([1.01, 1.03, 1.02, 1.05, 1.02, 1.01, 1.04]), "b": Comparison([1.2] * 7),
             "c": Comparison([0.9] * 7)})
        self.assertEqual(verdict, "behind a, b")

    def test_unresolved_without_an_interval(self):
        verdict = benchstats.verdict_against_peers({"a": Comparison([1.01, 0.99, 1.02])})
        self.assertEqual(verdict, "unresolved (too few rounds)")

    def test_the_intervals_widen_with_the_number_of_peers(self):
        # Five rounds lost to one peer: behind it. The same five rounds
        # against each of two peers: 95% each takes 6 rounds.
        lost = [1.01, 1.02, 1.03, 1.04, 1.05]
        self.assertEqual(benchstats.verdict_against_peers({"a": Comparison(lost)}), "behind a")
        self.assertEqual(benchstats.verdict_against_peers({"a": Comparison(lost), "b": Comparison(lost)}),
                         "unresolved (too few rounds)")
        self.assertEqual(benchstats.verdict_against_peers({"a": Comparison(lost + [1.06]),
                                                           "b": Comparison(lost + [1.06])}), "behind a, b")

    def test_floor(self):
        floor = benchstats.verdict_against_floor
        self.assertEqual(floor(Comparison([1.04, 1.06, 1.05, 1.00, 1.03])), "within 5%")
        self.assertEqual(floor(Comparison([1.04, 1.06, 1.07, 1.08, 1.09])), "above 5%, within noise")
        self.assertEqual(floor(Comparison([1.06, 1.07, 1.08, 1.09, 1.10])), "above 5%")
        self.assertEqual(floor(Comparison([1.2, 1.3])), "above 5% (too few rounds to tell)")

    def test_cell(self):
        self.assertEqual(Comparison([1.0, 2.0, 3.0, 4.0, 5.0]).cell(), "3.000 [1.000, 5.000]")
        self.assertEqual(Comparison([1.0, 2.0]).cell(), "1.500")
        self.assertEqual(Comparison([]).cell(), "-")


class AbTable(unittest.TestCase):
    """The table of ab_echo.sh and ab_http.sh: ratios to the first contender
    within each round, whatever the rounds' overall level."""

    def test_rows(self):
        by_round = {str(r): {0: 100.0 * (r + 1), 1: 90.0 * (r + 1)} for r in range(5)}
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            benchstats.print_ab_table(["old", "new"], by_round, "ns/msg", "user-space ns/msg", {1: [5.0, 7.0]})
        text = output.getvalue()
        self.assertIn("| old | 300 | 1.000 [1.000, 1.000] | - |", text)
        self.assertIn("| new | 270 | 0.900 [0.900, 0.900] | 6 |", text)
        self.assertIn("Medians over 5 interleaved rounds", text)


class AppSummary(unittest.TestCase):
    """Seven rounds of one echo cell: muxio level with libevent, far ahead of
    libuv, 3% above epoll; and muxio-http behind libevent in every round."""

    def test_verdicts_reach_the_goal_table(self):
        lines = []
        echo = {"muxio": 1000.0, "libevent": 1000.0, "libuv": 1500.0, "epoll": 970.0}
        wobble = (0.97, 1.02, 1.0, 1.03, 0.98, 1.01, 0.99)
        for round_ in range(7):
            for impl, cpu in echo.items():
                scale = wobble[round_] if impl == "muxio" else 1.0
                lines.append(f"bench=echo round={round_} impl={impl} size=64 connections=64 msgs_per_s=1000 "
                             f"p99_us=10 server_cpu_ns_per_msg={cpu * scale} server_vmhwm_kb=100")
            for impl, cpu in (("muxio-http", 1100.0), ("libevent", 1000.0), ("epoll", 1000.0)):
                lines.append(f"bench=http round={round_} impl={impl} connections=64 rps=1000 p50_us=1 p99_us=2 "
                             f"server_cpu_ns_per_req={cpu + round_} server_vmhwm_kb=100")
        import summarize_app_bench
        summarize_app_bench.GOAL.clear()
        text = summary_of(summarize_app_bench, lines)
        self.assertIn("| echo 64 B, 64, muxio | peers | within noise of first |", text)
        self.assertIn("| echo 64 B, 64, muxio | epoll | within 5% |", text)
        self.assertIn("| HTTP, 64, muxio-http | peers | behind libevent |", text)


class ReactorSummary(unittest.TestCase):
    """Five rounds of the echo benchmark at one connection count and of the
    timers: muxio ahead of every peer in both, 1% above epoll on echo."""

    def test_verdict_rows(self):
        lines = []
        for round_ in range(5):
            for impl, cpu in (("muxio", 1010.0), ("libevent", 1100.0), ("libuv", 1200.0), ("asio", 1300.0),
                              ("epoll", 1000.0)):
                lines.append(f"round={round_} bench=echo impl={impl} connections=64 msgs_per_s=1 p50_us=1 "
                             f"p99_us=1 server_cpu_ns_per_msg={cpu + round_} server_ticks_ns_per_msg=1 "
                             "client_cpu_ns_per_msg=1")
            for impl, ns in (("muxio", 200.0), ("libuv", 900.0), ("libevent", 800.0), ("asio", 600.0)):
                lines.append(f"round={round_} bench=timers impl={impl} cpu_ns_per_op={ns} cpu_ns_per_timer={ns} "
                             f"wall_ms={ns / 100}")
        sys.path.insert(0, os.path.join(BENCH, "reactor"))
        import summarize_reactor_bench
        text = summary_of(summarize_reactor_bench, lines)
        self.assertIn("| **against the peers** | first |", text)
        self.assertIn("| **against epoll (2%)** | within 2% |", text)
        self.assertIn("| **muxio against the peers, within rounds** | first | first | first |", text)


if __name__ == "__main__":
    unittest.main()
