#!/usr/bin/env bash
# Installs the Debian packages muxio needs to build and test, when missing.
#
#   bash scripts/setup.sh            # compilers, CMake, Ninja, fmt, spdlog, doctest, liburing, doxygen, GLib, ...
#   bash scripts/setup.sh --bench    # also the benchmark peers: libuv, libevent, asio
#   bash scripts/setup.sh --lint     # also clang-format and clang-tidy
#   bash scripts/setup.sh --check    # only report what is missing (exit 1 if anything is)
#
# Idempotent: each package is looked up with dpkg-query first, and apt-get
# (update, then install) runs only when something is missing, so a second run
# does nothing and takes well under a second. Runs apt-get directly as root,
# through sudo otherwise. MUXIO_SKIP_SETUP=1 skips everything (for machines
# set up by other means). Works on a bare Debian 12 (debootstrap minbase),
# which has neither sudo nor most of these.
set -euo pipefail

# What the build and the tests need. g++ is the default compiler (presets
# dev, release, asan, tsan; its sanitizer runtimes come with it), clang the
# second one (preset clang; with libclang-rt-dev's libFuzzer, preset fuzz).
# pkg-config finds liburing and is what the install test checks muxio.pc
# with. python3 runs the project's helper scripts. doxygen builds the API
# reference (target docs), which CI builds with preset dev so that an
# undocumented public name fails it. libglib2.0-dev is for one example,
# apps/examples/glib_loop.cpp (the reactor in a GLib main loop). libssl-dev
# builds muxio::tls (MUXIO_TLS); its tests run openssl s_client/s_server and
# curl against it.
BUILD_PACKAGES=(
    g++
    clang
    cmake
    ninja-build
    pkg-config
    libfmt-dev
    libspdlog-dev
    doctest-dev
    liburing-dev
    libcli11-dev
    redis-tools
    libhttp-parser-dev
    libclang-rt-dev
    curl
    git
    python3
    doxygen
    libglib2.0-dev
    libssl-dev
    openssl
)
# Peer libraries and load generators, for bench/ only (never linked into the
# library); valgrind for `muxbench.py callgrind`, perf for `muxbench.py ab --perf`.
BENCH_PACKAGES=(libuv1-dev libevent-dev libasio-dev wrk nginx-light redis-server valgrind linux-perf)
# Linters, for developers who want them.
LINT_PACKAGES=(clang-format clang-tidy)

say() { printf 'setup: %s\n' "$*"; }
die() {
    printf 'setup: error: %s\n' "$*" >&2
    exit 1
}

usage() { sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

wanted=("${BUILD_PACKAGES[@]}")
check_only=0
for arg in "$@"; do
    case "$arg" in
    --bench) wanted+=("${BENCH_PACKAGES[@]}") ;;
    --lint) wanted+=("${LINT_PACKAGES[@]}") ;;
    --check) check_only=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown argument: $arg"
        ;;
    esac
done

if [[ "${MUXIO_SKIP_SETUP:-0}" == 1 ]]; then
    say "MUXIO_SKIP_SETUP=1: not checking or installing packages"
    exit 0
fi

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    say "warning: not a Debian-like system (no dpkg-query/apt-get); install these by other means:"
    say "  ${wanted[*]}"
    exit 0
fi

# True when the package is installed. Only the old, always-present ${Status}
# field is read ("install ok installed"; "hold ok installed" for a held one),
# and the output is captured rather than piped so that pipefail cannot turn
# an early-exiting grep into a failure.
is_installed() {
    local status
    status="$(dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null)" || return 1
    [[ "$status" == *" ok installed"* ]]
}

missing=()
for package in "${wanted[@]}"; do
    if ! is_installed "$package"; then
        missing+=("$package")
    fi
done

if ((${#missing[@]} == 0)); then
    say "all ${#wanted[@]} packages already installed"
    exit 0
fi

say "missing: ${missing[*]}"
if ((check_only)); then
    exit 1
fi

if [[ "$(id -u)" == 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
    say "not root: using sudo"
else
    die "not root and no sudo; as root, run:
    apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
fi

apt_env=(env DEBIAN_FRONTEND=noninteractive)
# Wait for a concurrent apt or unattended-upgrades instead of failing at once.
apt_options=(-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)

say "apt-get update"
"${as_root[@]}" "${apt_env[@]}" apt-get "${apt_options[@]}" update ||
    die "apt-get update failed (network, or the sources in /etc/apt/sources.list*)"

say "apt-get install ${missing[*]}"
"${as_root[@]}" "${apt_env[@]}" apt-get "${apt_options[@]}" install --no-install-recommends "${missing[@]}" ||
    die "apt-get install failed for: ${missing[*]}"

still_missing=()
for package in "${missing[@]}"; do
    if ! is_installed "$package"; then
        still_missing+=("$package")
    fi
done
if ((${#still_missing[@]} > 0)); then
    die "still not installed after apt-get: ${still_missing[*]}"
fi
say "installed ${#missing[@]} package(s); all ${#wanted[@]} present"
