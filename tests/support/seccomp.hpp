// Making the kernel refuse chosen system calls, with a seccomp filter in a
// forked child (a filter cannot be removed once installed): how the suites
// show what happens when epoll_create1, epoll_ctl or io_uring_enter fail.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>

// 1 where refuse_syscalls_in_this_process() can work: Linux on x86_64 or
// aarch64, the architectures whose audit number the filter checks.
#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
#define MUXIO_TEST_HAS_SECCOMP 1
#else
#define MUXIO_TEST_HAS_SECCOMP 0
#endif

namespace muxio::test {

/// One system call for refuse_syscalls_in_this_process() to refuse. With
/// `unless_flags` set, only the calls whose argument number `argument` (its
/// low 32 bits) has none of those bits: io_uring_enter without
/// IORING_ENTER_GETEVENTS, say, which refuses submissions and lets waits
/// through.
struct SyscallRefusal {
    std::uint32_t number = 0;
    unsigned argument = 0;
    std::uint32_t unless_flags = 0;
};

/// Makes every call of the system calls `numbers` fail with `errnum` in the
/// calling thread and the threads and processes it starts from now on, for
/// good (so: in a child, see report_from_child()). Returns false if the
/// kernel would not install the filter, or on an architecture the filter does
/// not know (MUXIO_TEST_HAS_SECCOMP is 0).
bool refuse_syscalls_in_this_process(std::span<const std::uint32_t> numbers, int errnum);
/// The same with conditions on arguments (see SyscallRefusal).
bool refuse_syscalls_in_this_process(std::span<const SyscallRefusal> refusals, int errnum);

/// Runs `report` in a forked child and returns the line it returned, or
/// nullopt if the child did not finish within `deadline` (it is killed
/// then). The child leaves with _exit(): no atexit handlers, no doctest
/// report of its own, so `report` must not use doctest's assertions; it says
/// what it found in its line instead. If `report` throws, the line is
/// "threw: " and the exception's what(), and the child exits with status 3.
/// CHECKs that the child exited with status 0.
std::optional<std::string> report_from_child(const std::function<std::string()>& report,
                                             std::chrono::milliseconds deadline);

}  // namespace muxio::test
