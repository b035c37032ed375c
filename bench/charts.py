#!/usr/bin/env python3
"""SVG bar charts of a bench/muxbench.py results file, one per table: per
group a bar per server at its median, the whisker its 90% interval (none
with fewer than 5 rounds). Standard library only.

    python3 bench/charts.py bench/results/echo-DATE.json [--out DIR]

The results file (schema "muxbench/1"):
  command, argv, settings   what ran, as given
  host                      date, nproc, kernel, cpu, libuv, libevent, asio, load_start, load_end
  runs                      one object per measured run: round, job, bench, server, the job's
                            parameters and every figure the run reported
  rows                      per table, group and server:
    table, group, server    e.g. "Echo: ping-pong, 64-byte messages", "64 conn.", "muxio"
    metric, unit            the figure the verdicts use (lower is better), e.g. server_cpu_ns_per_msg
    rounds, values          the round keys and the metric per round (null where the run failed)
    median, interval        their median and its 90% interval [low, high] (null below 5 rounds)
    spread                  (largest - smallest) / median
    figures                 medians of the other figures, by name
    ratios                  [{over, values, median, interval}]: this server / another, within each
                            round ("best peer NAME", the floor, or a reference such as muxio)
    verdicts                {"peers": ..., FLOOR: ...}: bench/benchstats.py's verdicts
"""
import argparse
import html
import json
import os
import re

COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f", "#bab0ac")


def chart(title, unit, rows):
    groups = list(dict.fromkeys(r["group"] for r in rows))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    top = max((r["interval"][1] if r["interval"] else r["median"] or 0) for r in rows) or 1
    bar, gap, left, height = 14, 24, 80, 220
    # A group is as wide as its bars or its label (11 px sans: about 6.5 px a character), whichever is wider.
    step = max(len(servers) * bar + gap, 6.5 * max(len(group) for group in groups) + 10)
    width = left + len(groups) * step + 160
    width = max(width, left + 7 * len(title) + 20)  # the title must fit (13 px sans: about 7 px a character)
    y = lambda v: 40 + height * (1 - v / top)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 90}" font-family="sans-serif" '
           f'font-size="11"><text x="{left}" y="20" font-size="13">{html.escape(title)}</text>',
           f'<text x="14" y="{40 + height / 2}" transform="rotate(-90 14 {40 + height / 2})" text-anchor="middle">'
           f'{html.escape(unit)}</text>']
    for tick in range(5):
        value = top * tick / 4
        out.append(f'<line x1="{left - 4}" x2="{width - 160}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:,.{0 if top > 40 else 2}f}</text>')
    for g, group in enumerate(groups):
        x0 = left + g * step
        for s, server in enumerate(servers):
            row = next((r for r in rows if r["group"] == group and r["server"] == server), None)
            if not row or row["median"] is None:
                continue
            x = x0 + s * bar
            out.append(f'<rect x="{x}" y="{y(row["median"]):.1f}" width="{bar - 2}" '
                       f'height="{height + 40 - y(row["median"]):.1f}" fill="{COLOURS[s % len(COLOURS)]}">'
                       f'<title>{html.escape(server)}: {row["median"]:,.4g}</title></rect>')
            if row["interval"]:
                low, high = (y(v) for v in row["interval"])
                middle = x + bar / 2 - 1
                out.append(f'<path d="M{middle},{low:.1f}V{high:.1f}M{middle - 3},{low:.1f}h6M{middle - 3},{high:.1f}h6" '
                           'stroke="#222"/>')
        out.append(f'<text x="{x0 + len(servers) * bar / 2}" y="{height + 56}" text-anchor="middle">'
                   f'{html.escape(group)}</text>')
    for s, server in enumerate(servers):
        out.append(f'<rect x="{width - 150}" y="{40 + 16 * s}" width="10" height="10" fill="{COLOURS[s % len(COLOURS)]}"/>'
                   f'<text x="{width - 135}" y="{49 + 16 * s}">{html.escape(server)}</text>')
    return "\n".join(out + ["</svg>\n"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("--out", help="directory of the SVG files (default: beside the results file)")
    args = parser.parse_args()
    with open(args.results) as results:
        data = json.load(results)
    out = args.out or os.path.dirname(os.path.abspath(args.results))
    os.makedirs(out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.results))[0]
    for table in dict.fromkeys(r["table"] for r in data["rows"]):
        rows = [r for r in data["rows"] if r["table"] == table]
        path = os.path.join(out, f"{stem}-{re.sub(r'[^a-z0-9]+', '-', table.lower()).strip('-')}.svg")
        with open(path, "w") as svg:
            svg.write(chart(table, rows[0]["unit"], rows))
        print(path)


if __name__ == "__main__":
    main()
