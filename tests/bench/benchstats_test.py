#!/usr/bin/env python3
"""The statistics behind the benchmark verdicts (bench/benchstats.py) and
the summary bench/muxbench.py builds on them, on synthetic results."""
import contextlib
import io
import os
import sys
import unittest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench")
sys.path.insert(0, BENCH)

import benchstats  # noqa: E402
import muxbench  # noqa: E402
from benchstats import Comparison, median_coverage, median_interval  # noqa: E402


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


def echo_runs(rounds=7):
    """Rounds of one echo cell: muxio level with libevent, far ahead of
    libuv, 3% above epoll."""
    runs = []
    wobble = (0.97, 1.02, 1.0, 1.03, 0.98, 1.01, 0.99)
    for round_ in range(rounds):
        for server, cpu in (("muxio", 1000.0), ("libevent", 1000.0), ("libuv", 1500.0), ("epoll", 970.0)):
            scale = wobble[round_] if server == "muxio" else 1.0
            runs.append(dict(bench="echo", round=round_, server=server, size=64, connections=64, idle=0,
                             msgs_per_s=1000.0, p99_us=10.0, server_cpu_ns_per_msg=cpu * scale,
                             server_vmhwm_kb=100.0))
    return runs


class Summary(unittest.TestCase):
    """bench/muxbench.py's rows: medians, intervals, ratios and verdicts."""

    def test_echo_verdicts(self):
        rows, _ = muxbench.summarize(echo_runs(), "echo")
        muxio = next(r for r in rows if r["server"] == "muxio")
        self.assertEqual(muxio["group"], "64 conn.")
        self.assertEqual(muxio["verdicts"], {"peers": "within noise of first", "epoll": "within 5%"})
        self.assertEqual(len(muxio["values"]), 7)
        self.assertAlmostEqual(muxio["median"], 1000.0)
        self.assertEqual([r["over"] for r in muxio["ratios"]], ["best peer libevent", "epoll"])
        self.assertEqual(muxio["ratios"][0]["interval"], [0.97, 1.03])
        self.assertEqual(next(r for r in rows if r["server"] == "libuv")["verdicts"], {})

    def test_behind_a_peer_in_every_round(self):
        runs = [dict(r, server_cpu_ns_per_msg=1100.0 + r["round"]) if r["server"] == "muxio" else r
                for r in echo_runs()]
        rows, _ = muxbench.summarize(runs, "echo")
        self.assertEqual(next(r for r in rows if r["server"] == "muxio")["verdicts"]["peers"], "behind libevent")

    def test_ab_ratios_to_the_first_contender_within_each_round(self):
        runs = [dict(bench="ab-echo", round=r, server=name, index=index, config="64 B, 1000 conn.",
                     metric="server_cpu_ns_per_msg", server_cpu_ns_per_msg=cpu * (r + 1))
                for r in range(5) for index, (name, cpu) in enumerate((("old:muxio", 100.0), ("new:muxio", 90.0)))]
        rows, _ = muxbench.summarize(runs, "ab")
        self.assertEqual([r["server"] for r in rows], ["old:muxio", "new:muxio"])
        self.assertEqual(rows[0]["ratios"], [])
        self.assertEqual(rows[1]["ratios"][0]["over"], "old:muxio")
        self.assertAlmostEqual(rows[1]["ratios"][0]["median"], 0.9)
        self.assertAlmostEqual(rows[1]["ratios"][0]["interval"][1], 0.9)

    def test_the_completion_floor_gets_a_ratio_and_no_verdict(self):
        runs = echo_runs()
        runs += [dict(r, server="uring", server_cpu_ns_per_msg=800.0) for r in runs if r["server"] == "epoll"]
        rows, _ = muxbench.summarize(runs, "echo")
        muxio = next(r for r in rows if r["server"] == "muxio")
        self.assertEqual([r["over"] for r in muxio["ratios"]], ["best peer libevent", "epoll", "uring"])
        self.assertAlmostEqual(muxio["ratios"][2]["median"], 1.25)
        self.assertEqual(set(muxio["verdicts"]), {"peers", "epoll"})
        uring = next(r for r in rows if r["server"] == "uring")
        self.assertEqual([r["over"] for r in uring["ratios"]], ["epoll"])
        self.assertEqual([r["server"] for r in rows][:3], ["muxio", "epoll", "uring"])

    def test_syscalls_per_message_is_a_column_only_when_counted(self):
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            muxbench.print_tables(*muxbench.summarize(echo_runs(), "echo"))
        self.assertNotIn("syscalls/msg", output.getvalue())
        runs = [dict(r, syscalls_per_msg=2.0 if r["server"] == "epoll" else 0.5) for r in echo_runs()]
        rows, cells = muxbench.summarize(runs, "echo")
        self.assertEqual(next(r for r in rows if r["server"] == "epoll")["figures"]["syscalls_per_msg"], 2.0)
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            muxbench.print_tables(rows, cells)
        self.assertIn("| VmHWM KiB | syscalls/msg |", output.getvalue())
        self.assertIn("| 100 | 2.00 |", output.getvalue())

    def test_tables_print(self):
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            muxbench.print_tables(*muxbench.summarize(echo_runs(), "echo"))
        self.assertIn("| 64 conn. | muxio | 1 000 [970, 1 030] |", output.getvalue())
        self.assertIn("peers: within noise of first; epoll: within 5%", output.getvalue())


class Charts(unittest.TestCase):
    """bench/charts.py draws a bar per server and group, a whisker per interval."""

    def test_svg(self):
        import xml.dom.minidom
        import charts
        rows, _ = muxbench.summarize(echo_runs(), "echo")
        svg = xml.dom.minidom.parseString(charts.chart("Echo", "ns/msg", rows))
        self.assertEqual(len([r for r in svg.getElementsByTagName("rect") if r.getElementsByTagName("title")]), 4)
        self.assertEqual(len(svg.getElementsByTagName("path")), 4)


if __name__ == "__main__":
    unittest.main()
