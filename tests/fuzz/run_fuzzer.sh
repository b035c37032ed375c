#!/usr/bin/env bash
# Runs one libFuzzer binary for a bounded time, starting from its checked-in
# corpus, which it never modifies: new inputs go to a scratch directory in
# the build tree, crash reproducers next to them.
#
#   run_fuzzer.sh FUZZER SECONDS WORK_DIR CORPUS_DIR [libFuzzer flags...]
#
# Exits non-zero when the fuzzer finds a crash, a leak, a timeout or an
# out-of-memory; the reproducer's path is in the output. Replay one with
# `FUZZER path/to/crash-...` or with the <name>_replay binary.
set -euo pipefail
(($# >= 4)) || {
    sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}
fuzzer="$1"
seconds="$2"
work="$3"
corpus="$4"
shift 4
mkdir -p "$work/new" "$work/artifacts"
args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
    -artifact_prefix="$work/artifacts/")
dict="$corpus.dict"
[[ -f "$dict" ]] && args+=(-dict="$dict")
exec "$fuzzer" "${args[@]}" "$@" "$work/new" "$corpus"
