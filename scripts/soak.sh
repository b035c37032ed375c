#!/usr/bin/env bash
# A bounded soak of muxio's servers: muxio-echo, muxio-http, muxio-resp and
# muxio-daemon under a mixed load (well-behaved clients checking every byte,
# slow readers, slowloris heads, resets, SIGHUP reloads) for MINUTES,
# sampling each server's memory, descriptors and CPU every second.
#
#   bash scripts/soak.sh              # 5 minutes, release build
#   bash scripts/soak.sh 60           # an hour
#   bash scripts/soak.sh 1 --json soak.json
#
# Fails (exit 1) on any error a well-behaved client sees, a server that
# dies or exits non-zero, memory growing after the warm-up, descriptors
# left open or more than two per connection, and CPU used while idle.
# scripts/soak.py has the details; extra arguments go to it. Environment:
# MUXIO_SKIP_SETUP=1 (no package check), MUXIO_SOAK_PRESET (default release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

minutes="${1:-5}"
(($# > 0)) && shift
[[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || {
    sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}
preset="${MUXIO_SOAK_PRESET:-release}"
bash scripts/setup.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" --target muxio-echo muxio-http muxio-resp muxio-daemon muxio-loadgen
seconds="$(python3 -c "print(float('$minutes') * 60)")"
exec python3 scripts/soak.py --seconds "$seconds" --bin-dir "build/$preset/apps" "$@"
