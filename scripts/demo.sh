#!/usr/bin/env bash
# Sets the machine up, builds the release preset and runs the demo.
#
#   bash scripts/demo.sh [arguments for muxio-demo...]
#
# Environment: MUXIO_CMAKE_ARGS (more configure arguments), MUXIO_JOBS
# (build parallelism), MUXIO_SKIP_SETUP=1 (do not check or install packages).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

preset=release
demo="build/$preset/apps/muxio-demo"
jobs="${MUXIO_JOBS:-$(nproc 2>/dev/null || echo 2)}"
read -r -a extra_cmake_args <<<"${MUXIO_CMAKE_ARGS:-}"

bash scripts/setup.sh
cmake --preset "$preset" "${extra_cmake_args[@]}"
if ! cmake --build --preset "$preset" --parallel "$jobs" --target muxio-demo; then
    echo "demo.sh: building target 'muxio-demo' failed (is it defined in apps/CMakeLists.txt?)" >&2
    exit 1
fi
if [[ ! -x "$demo" ]]; then
    echo "demo.sh: $demo was not produced; apps/CMakeLists.txt must build the target muxio-demo into build/$preset/apps/" >&2
    exit 1
fi
echo "==> $demo $*"
exec "$demo" "$@"
