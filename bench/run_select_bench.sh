#!/usr/bin/env bash
# Builds bench/select_bench (Release) and runs it side by side with Python's
# selectors (bench/select_bench.py) in interleaved rounds: in each round every
# contender x K runs once, as its own process, in an order rotated from round
# to round. Prints the median over the rounds in ns per select() call, the
# ratios that matter, and the spread, as Markdown tables (docs/BENCHMARKS.md).
#
# Environment (all optional):
#   BUILD_DIR   build directory             (default: build/bench)
#   ROUNDS      interleaved rounds          (default: 7)
#   REPS        repetitions inside one run  (default: 5; the run reports their median)
#   TARGET_MS   length of one repetition    (default: 20)
#   KS          idle descriptors            (default: 10,100,1000,10000)
#   CLOCK       cpu (thread CPU time) or wall (default: cpu)
#   CPU         core to pin every run to    (default: the last one; "none" to not pin)
#   IO_URING    MUXIO_IO_URING for cmake    (default: AUTO once lib/io_uring_poller.cpp exists, else OFF)
#   DIAGNOSTIC  1 adds raw-epoll_pwait2, the raw loop waiting as muxio does (default: 1)
#   PYTHON      interpreter                 (default: python3)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${BUILD_DIR:-$root/build/bench}"
rounds="${ROUNDS:-7}"
reps="${REPS:-5}"
target_ms="${TARGET_MS:-20}"
ks="${KS:-10,100,1000,10000}"
diagnostic="${DIAGNOSTIC:-1}"
python="${PYTHON:-python3}"
clock="${CLOCK:-cpu}"
if [[ -z "${IO_URING:-}" ]]; then
    if [[ -f "$root/lib/io_uring_poller.cpp" ]]; then IO_URING=AUTO; else IO_URING=OFF; fi
fi

generator=()
if command -v ninja >/dev/null && [[ ! -f "$build_dir/CMakeCache.txt" ]]; then generator=(-G Ninja); fi
cmake -S "$root" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DMUXIO_BUILD_BENCH=ON \
    -DMUXIO_BUILD_TESTS=OFF -DMUXIO_BUILD_APPS=OFF -DMUXIO_WARNINGS_AS_ERRORS=ON -DMUXIO_IO_URING="$IO_URING" >/dev/null
cmake --build "$build_dir" --target select_bench -j2 >/dev/null
bench="$build_dir/bench/select_bench"

pin=()
cpu="${CPU:-$(($(nproc) - 1))}"
if [[ "$cpu" != none ]] && command -v taskset >/dev/null; then pin=(taskset -c "$cpu"); else cpu=none; fi

# Every contender x K is one job; a job is one process.
mapfile -t cpp_contenders < <("$bench" --list)
if [[ "$diagnostic" == 1 ]]; then cpp_contenders+=(raw-epoll_pwait2); fi
py_contenders=(select poll epoll)
jobs=()
IFS=, read -r -a k_values <<<"$ks"
for k in "${k_values[@]}"; do
    for c in "${cpp_contenders[@]}"; do jobs+=("cpp $c $k"); done
    for c in "${py_contenders[@]}"; do jobs+=("py $c $k"); done
done

mkdir -p "$root/bench/results"
results="$root/bench/results/select_bench-$(date +%Y%m%d-%H%M%S).txt"
{
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# nproc: $(nproc); kernel: $(uname -r); cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
    cxx="$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$build_dir/CMakeCache.txt")"
    echo "# compiler: $("$cxx" --version | head -1) (Release); python: $("$python" -c 'import sys; print(sys.version.split()[0])')"
    echo "# pinned to cpu: $cpu; rounds: $rounds; repetitions per run: $reps; target per repetition: ${target_ms} ms; clock: $clock; io_uring: $IO_URING"
} >"$results"

start=$SECONDS
count=${#jobs[@]}
for ((round = 0; round < rounds; round++)); do
    # Rotate the start by a different offset each round, so no job always
    # runs first, last or after the same neighbour.
    offset=$(((round * count) / rounds))
    for ((n = 0; n < count; n++)); do
        read -r lang contender k <<<"${jobs[$(((n + offset) % count))]}"
        if [[ "$lang" == cpp ]]; then
            command=("$bench")
        else
            command=("$python" "$root/bench/select_bench.py")
        fi
        "${pin[@]}" "${command[@]}" --k "$k" --contenders "$contender" --repetitions "$reps" \
            --target-ms "$target_ms" --clock "$clock" | sed -n "/^[^#]/s/^/$round /p" >>"$results"
    done
    echo "round $((round + 1))/$rounds done ($((SECONDS - start)) s)" >&2
done

echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$results"
echo "raw results: ${results#"$root"/}" >&2
echo
sed -n 's/^# //p' "$results"
echo
"$python" - "$results" <<'EOF'
import collections
import statistics
import sys

runs = collections.defaultdict(list)
skipped = set()
ks = []
for line in open(sys.argv[1]):
    if line.startswith("#"):
        continue
    fields = line.split()
    contender, k = fields[1], int(fields[2])
    if k not in ks:
        ks.append(k)
    if fields[3] == "skipped":
        skipped.add((contender, k))
    else:
        runs[(contender, k)].append(float(fields[3]))
ks.sort()

order = ["raw-epoll", "raw-epoll_pwait2", "muxio-epoll", "muxio-io_uring", "muxio-poll", "muxio-select",
         "python-epoll", "python-poll", "python-select"]
names = sorted({c for c, _ in list(runs) + list(skipped)}, key=lambda c: (order.index(c) if c in order else 99, c))
med = {key: statistics.median(values) for key, values in runs.items()}


def row(label, cells):
    print(f"| {label} | " + " | ".join(cells) + " |")


def header(title):
    row(title, [f"K = {k:,}".replace(",", " ") for k in ks])
    print("|---|" + "---:|" * len(ks))


def ns(value):
    return f"{value:,.0f}".replace(",", " ")


header("ns per select()")
for name in names:
    row(name, [ns(med[(name, k)]) if (name, k) in med else "skipped" if (name, k) in skipped else "-"
               for k in ks])
print()


def ratio(a, b, fmt):
    return [fmt(med[(a, k)] / med[(b, k)]) if (a, k) in med and (b, k) in med else "-" for k in ks]


header("ratio")
if ("muxio-epoll", ks[0]) in med:
    row("muxio-epoll / raw-epoll", ratio("muxio-epoll", "raw-epoll", lambda r: f"{r:.2f}"))
    if any(("raw-epoll_pwait2", k) in med for k in ks):
        row("muxio-epoll / raw-epoll_pwait2", ratio("muxio-epoll", "raw-epoll_pwait2", lambda r: f"{r:.2f}"))
if ("muxio-io_uring", ks[0]) in med:
    row("muxio-io_uring / muxio-epoll", ratio("muxio-io_uring", "muxio-epoll", lambda r: f"{r:.2f}"))
for backend in ("select", "poll", "epoll"):
    row(f"python-{backend} / muxio-{backend}",
        ratio(f"python-{backend}", f"muxio-{backend}", lambda r: f"{r:.2f}"))
print()

header("spread (max-min)/median")
for name in names:
    row(name, [f"{(max(runs[(name, k)]) - min(runs[(name, k)])) / med[(name, k)]:.0%}" if (name, k) in med
               else "-" for k in ks])
print()
print(f"Medians of {len(next(iter(runs.values())))} interleaved rounds; each run is the median of its repetitions.")
print("Spread: (slowest run - fastest run) / median, over the rounds.")
EOF
