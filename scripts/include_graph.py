#!/usr/bin/env python3
"""The include graph of muxio's layers, checked and drawn.

Every header of include/muxio/ and every file of lib/ belongs to one layer:
base, selector, reactor, coro, net, tls (lowest first), or the umbrella header on
top. A file may include files of its own layer and of the layers below it,
never above: that is what lets each layer be read, tested and replaced
without the ones that use it.

    python3 scripts/include_graph.py --check          # exit 1 on an upward include
    python3 scripts/include_graph.py --svg docs/include-graph.svg
    python3 scripts/include_graph.py --check --current docs/include-graph.svg
                                                      # also fail if the picture is stale
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["base", "selector", "reactor", "coro", "net", "tls", "umbrella"]

# Public headers by layer; lib/ files take the layer of their folder.
HEADER_LAYERS = {
    "base": [
        "error.hpp", "log.hpp", "events.hpp", "config.hpp",
        "detail/unique_function.hpp", "detail/ring_queue.hpp", "detail/chunked_table.hpp",
        "detail/manual_lifetime.hpp", "detail/prefetch.hpp",
    ],
    "selector": ["selector.hpp", "selectors.hpp", "file_object.hpp", "detail/poller.hpp",
                 "detail/registration_token.hpp", "detail/selector_loop.hpp"],
    "reactor": ["reactor.hpp", "detail/soon_queue.hpp", "reactor_group.hpp"],
    "coro": ["task.hpp", "awaitables.hpp", "run.hpp", "combinators.hpp", "task_group.hpp",
             "detail/resume_loop.hpp"],
    "net": ["net.hpp", "transport.hpp", "server.hpp"],
    "tls": ["tls.hpp"],
    "umbrella": ["muxio.hpp"],
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def layer_of_header(name: str) -> str | None:
    for layer, names in HEADER_LAYERS.items():
        if name in names:
            return layer
    return None


def collect() -> tuple[dict[str, str], dict[str, list[str]], list[str]]:
    """Files with their layer, their project includes, and files no layer claims."""
    layers: dict[str, str] = {}
    includes: dict[str, list[str]] = {}
    unclaimed: list[str] = []
    include_root = ROOT / "include" / "muxio"
    for path in sorted(include_root.rglob("*")):
        if path.suffix not in (".hpp", ".in"):
            continue
        name = str(path.relative_to(include_root)).removesuffix(".in")
        node = f"muxio/{name}"
        layer = layer_of_header(name)
        if layer is None:
            unclaimed.append(node)
            continue
        layers[node] = layer
        includes[node] = INCLUDE.findall(path.read_text())
    lib_root = ROOT / "lib"
    for path in sorted(lib_root.rglob("*")):
        if path.suffix not in (".hpp", ".cpp"):
            continue
        relative = path.relative_to(lib_root)
        node = f"lib/{relative}"
        if len(relative.parts) != 2 or relative.parts[0] not in LAYERS:
            unclaimed.append(node)
            continue
        layers[node] = relative.parts[0]
        # lib/ includes its private headers by layer folder: "selector/x.hpp".
        includes[node] = [include if include.startswith("muxio/") else f"lib/{include}"
                          for include in INCLUDE.findall(path.read_text())]
    return layers, includes, unclaimed


def check(layers: dict[str, str], includes: dict[str, list[str]], unclaimed: list[str]) -> list[str]:
    problems = [f"{node}: in no layer (add it to HEADER_LAYERS or a lib/ layer folder)" for node in unclaimed]
    rank = {layer: index for index, layer in enumerate(LAYERS)}
    for node, targets in includes.items():
        for target in targets:
            if target not in layers:
                if target.startswith(("muxio/", "lib/")):
                    problems.append(f"{node}: includes {target}, which is in no layer")
                continue
            if rank[layers[target]] > rank[layers[node]]:
                problems.append(f"{node} ({layers[node]}) includes {target} ({layers[target]}), a layer above it")
    return problems


def transitive_reduction(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The edges that no longer path implies: a picture of what each box
    needs directly, not of everything it reaches."""
    successors: dict[str, set[str]] = {}
    for source, target in edges:
        successors.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str, skip: tuple[str, str]) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            for following in successors.get(node, ()):
                if (node, following) == skip or following in seen:
                    continue
                if following == goal:
                    return True
                seen.add(following)
                stack.append(following)
        return False

    return {edge for edge in edges if not reaches(edge[0], edge[1], edge)}


def draw(layers: dict[str, str], includes: dict[str, list[str]]) -> str:
    """An SVG: one band per layer, lowest at the bottom; public headers as
    boxes, each lib/ folder as one box; an arrow for each include between
    different boxes. Every arrow between bands points down."""

    def box_of(node: str) -> str:
        if node.startswith("lib/"):
            return f"lib/{layers[node]}/"
        return node.removeprefix("muxio/")

    boxes: dict[str, str] = {}
    for node, layer in layers.items():
        boxes.setdefault(box_of(node), layer)
    all_edges = {(box_of(node), box_of(target)) for node, targets in includes.items()
                 for target in targets if target in layers and box_of(node) != box_of(target)}
    edges = sorted(transitive_reduction(all_edges))

    char_width, box_height, gap, band_height, margin, label_width = 7.2, 24, 14, 92, 16, 86
    positions: dict[str, tuple[float, float, float]] = {}  # box -> (x, y, width)
    order = {layer: sorted(name for name, box_layer in boxes.items() if box_layer == layer) for layer in LAYERS}
    neighbours: dict[str, list[str]] = {box: [] for box in boxes}
    for source, target in edges:
        neighbours[source].append(target)
        neighbours[target].append(source)

    def place() -> float:
        width = 0.0
        for row, layer in enumerate(reversed(LAYERS)):
            y = margin + row * band_height + (band_height - box_height) / 2
            x = margin + label_width
            for box in order[layer]:
                box_width = len(box) * char_width + 16
                positions[box] = (x, y, box_width)
                x += box_width + gap
            width = max(width, x + margin)
        return width

    # A few sweeps of the barycentre heuristic: each box moves towards the
    # boxes it is joined to, so that fewer arrows cross boxes and each other.
    width = place()
    for _ in range(4):
        for layer in LAYERS:
            def centre(box: str) -> float:
                xs = [positions[other][0] + positions[other][2] / 2 for other in neighbours[box]
                      if boxes[other] != layer]
                return sum(xs) / len(xs) if xs else positions[box][0]
            order[layer].sort(key=lambda box: (centre(box), box))
            width = place()
    height = margin * 2 + band_height * len(LAYERS)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'font-family="monospace" font-size="12">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
           f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>']
    for row, layer in enumerate(reversed(LAYERS)):
        y = margin + row * band_height
        fill = "#f4f6fa" if row % 2 == 0 else "#e9edf4"
        out.append(f'<rect x="{margin}" y="{y}" width="{width - 2 * margin:.0f}" height="{band_height}" fill="{fill}"/>')
        out.append(f'<text x="{margin + 6}" y="{y + band_height / 2 + 4:.0f}" font-weight="bold">{layer}</text>')
    for source, target in edges:
        sx, sy, sw = positions[source]
        tx, ty, tw = positions[target]
        if abs(sy - ty) < 1:  # same layer: an arc above the boxes
            x1, x2, y0 = sx + sw / 2, tx + tw / 2, sy
            out.append(f'<path d="M{x1:.0f},{y0:.0f} Q{(x1 + x2) / 2:.0f},{y0 - 22:.0f} {x2:.0f},{y0:.0f}" '
                       'fill="none" stroke="#555" stroke-width="1" marker-end="url(#arrow)"/>')
        else:
            out.append(f'<line x1="{sx + sw / 2:.0f}" y1="{sy + box_height:.0f}" x2="{tx + tw / 2:.0f}" y2="{ty:.0f}" '
                       'stroke="#555" stroke-width="1" stroke-opacity="0.6" marker-end="url(#arrow)"/>')
    for box, (x, y, box_width) in positions.items():
        fill = "#fff7e0" if box.startswith("lib/") else "white"
        out.append(f'<rect x="{x:.0f}" y="{y:.0f}" width="{box_width:.0f}" height="{box_height}" rx="4" '
                   f'fill="{fill}" stroke="#333"/>')
        out.append(f'<text x="{x + 8:.0f}" y="{y + 16:.0f}">{html.escape(box)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail on an include that points to a higher layer")
    parser.add_argument("--svg", type=Path, help="write the picture to this file")
    parser.add_argument("--current", type=Path, help="fail unless this file holds the picture of the tree as it is")
    arguments = parser.parse_args()
    layers, includes, unclaimed = collect()
    status = 0
    if arguments.check:
        problems = check(layers, includes, unclaimed)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            status = 1
        else:
            print(f"{len(layers)} files in {len(LAYERS)} layers, no include points up")
    picture = draw(layers, includes)
    if arguments.svg:
        arguments.svg.write_text(picture)
    if arguments.current and arguments.current.read_text() != picture:
        print(f"{arguments.current} is not the picture of the tree as it is: "
              f"python3 scripts/include_graph.py --svg {arguments.current}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
