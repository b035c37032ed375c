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
seconds="$2"
mkdir -p "$3/new" "$3/artifacts"
fuzzer="$(realpath "$1")"
work="$(realpath "$3")"
corpus="$(realpath "$4")"
shift 4
# libFuzzer writes its -jobs logs (fuzz-N.log) to the current directory.
cd "$work"
args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
    -artifact_prefix="$work/artifacts/")
dict="$corpus.dict"
[[ -f "$dict" ]] && args+=(-dict="$dict")
exec "$fuzzer" "${args[@]}" "$@" "$work/new" "$corpus"
