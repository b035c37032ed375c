"""The statistics that decide whether one server is ahead of another on a
noisy machine (bench/muxbench.py's verdicts).

The figures compared are ratios taken within a round (two servers run back to
back, so the ratio cancels the drift between rounds). Their median is the
estimate; a distribution-free interval around it says how far the noise of
this run lets it move. "Within noise" then has a definition: the interval
reaches the threshold.
"""
import math
import statistics


def clean(values):
    """The numbers among `values`, without NaN and None."""
    return [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]


def median_coverage(n, k):
    """Probability that the k-th smallest and the k-th largest of n values
    drawn independently from one continuous distribution enclose its median:
    1 - 2 P(Binomial(n, 1/2) <= k - 1)."""
    if n < 1 or k < 1 or 2 * k > n + 1:
        return 0.0
    below = sum(math.comb(n, i) for i in range(k)) / 2**n
    return 1.0 - 2.0 * below


def median_interval(values, confidence=0.90):
    """(low, high) enclosing the median of the distribution `values` come
    from with at least `confidence`, from order statistics: no assumption on
    the shape of the noise. The narrowest such pair; None when there are too
    few values (fewer than 5 for 90%)."""
    values = sorted(clean(values))
    n = len(values)
    best = None
    for k in range(1, (n + 1) // 2 + 1):
        if median_coverage(n, k) >= confidence:
            best = k
    if best is None:
        return None
    return values[best - 1], values[n - best]


class Comparison:
    """Within-round ratios subject / reference (lower is better): their
    median and its interval."""

    def __init__(self, ratios, confidence=0.90):
        self.ratios = clean(ratios)
        self.median = statistics.median(self.ratios) if self.ratios else None
        self.interval = median_interval(self.ratios, confidence)

    def cell(self):
        """"0.987 [0.951, 1.020]", or the median alone without an interval."""
        if self.median is None:
            return "-"
        if self.interval is None:
            return f"{self.median:.3f}"
        low, high = self.interval
        return f"{self.median:.3f} [{low:.3f}, {high:.3f}]"


def verdict_against_peers(comparisons, confidence=0.90):
    """Where the subject stands among peers, from {peer: Comparison of
    subject / peer}: "first" when its median is below every peer's;
    "within noise of first" when no peer is ahead beyond the noise (each
    peer's interval reaches 1); "behind P" naming the peers whose whole
    interval lies above 1; "unresolved" when there are too few rounds for
    the intervals and the subject is not first.

    The verdict is one statement about all the peers, so each peer's
    interval is taken at 1 - (1 - confidence) / peers (Bonferroni): with
    four peers at 97.5%, which takes 7 rounds. Otherwise a row of four
    peers that are all level with the subject would come out "behind" one
    of them in one run out of eight with five rounds."""
    present = {peer: c for peer, c in comparisons.items() if c.median is not None}
    if not present:
        return "-"
    if all(c.median < 1.0 for c in present.values()):
        return "first"
    each = 1.0 - (1.0 - confidence) / len(present)
    intervals = {peer: median_interval(c.ratios, each) for peer, c in present.items()}
    ahead = sorted(peer for peer, interval in intervals.items() if interval is not None and interval[0] > 1.0)
    if ahead:
        return "behind " + ", ".join(ahead)
    if any(interval is None for interval in intervals.values()):
        return "unresolved (too few rounds)"
    return "within noise of first"


def verdict_against_floor(comparison, tolerance=0.05):
    """Whether subject / floor is within `tolerance` (5%: 1.05): "within 5%"
    when the median is; "above 5%, within noise" when only the interval
    reaches it; "above 5%" when the whole interval lies above."""
    if comparison.median is None:
        return "-"
    limit = 1.0 + tolerance
    percent = f"{tolerance * 100:g}%"
    if comparison.median <= limit:
        return f"within {percent}"
    if comparison.interval is not None and comparison.interval[0] <= limit:
        return f"above {percent}, within noise"
    if comparison.interval is None:
        return f"above {percent} (too few rounds to tell)"
    return f"above {percent}"

