// Counting the system calls a server makes, with ptrace: the server runs in
// a forked child whose every thread is traced, the client runs in a thread
// of this process and is not counted, and only the calls the child enters
// while the client holds the counting window open are counted. A count, not
// a timing: it does not move with the machine's load.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

// 1 where count_server_syscalls() can work: Linux on x86_64 or aarch64
// (PTRACE_GET_SYSCALL_INFO names the call the same way on both).
#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
#define MUXIO_TEST_HAS_SYSCALL_COUNTER 1
#else
#define MUXIO_TEST_HAS_SYSCALL_COUNTER 0
#endif

namespace muxio::test {

/// The system calls counted in the window: how many in all, and by number.
struct SyscallTally {
    std::uint64_t total = 0;
    std::map<std::uint64_t, std::uint64_t> by_number;

    /// "recvfrom 2000, sendto 2000, epoll_wait 2001": the calls, most frequent first.
    [[nodiscard]] std::string describe() const;
};

/// The name of system call `number` on this architecture ("recvfrom"), or
/// "syscall N" for one the table does not know.
[[nodiscard]] std::string syscall_name(std::uint64_t number);

/// Which part of the client's run is counted: the calls the server enters
/// while it is open. The client opens it after its warm-up (so that
/// accepting, registering and the first allocations are not counted) and
/// closes it when its last answer is in. The server may be stopped in a
/// call at either edge, so a count can be off by a call or two: divide by
/// enough messages.
class CountingWindow {
public:
    void open() noexcept { open_.store(true, std::memory_order_release); }
    void close() noexcept { open_.store(false, std::memory_order_release); }
    [[nodiscard]] bool is_open() const noexcept { return open_.load(std::memory_order_acquire); }

private:
    std::atomic<bool> open_{false};
};

/// What the child calls once it is ready for the client: `line` (one line,
/// a port number, say) is handed to the client.
using TellClient = std::function<void(std::string_view line)>;

/// Runs `serve` in a forked child traced by this thread, and `drive` in a
/// new thread of this process with the line the child told. `serve` should
/// serve until it is killed; it runs in a child that leaves with _exit()
/// if it returns or throws, so it must not use doctest's assertions.
/// `drive` must not either: it returns "" when all went well, or what went
/// wrong. When `drive` returns, the child is killed and reaped; if the
/// whole run takes longer than `deadline`, the child is killed at once
/// (and so the client's sockets fail).
///
/// Returns the calls that the child's threads entered while the window was
/// open, or nullopt with `failure` saying why there is no count: the
/// kernel refused ptrace (under a debugger or strace, or a seccomp policy),
/// the child failed before it was ready, the client failed, or the
/// deadline passed.
std::optional<SyscallTally> count_server_syscalls(
    const std::function<void(const TellClient& tell)>& serve,
    const std::function<std::string(std::string_view told, CountingWindow& window)>& drive,
    std::chrono::milliseconds deadline, std::string& failure);

}  // namespace muxio::test
