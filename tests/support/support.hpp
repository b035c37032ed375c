// Helpers shared by the test suites: owned descriptors, socket pairs, pipes
// and the fd-leak check every test runs.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

// 1 in a ThreadSanitizer build, whose runtime defines operator new itself:
// the allocation-counting replacements are left out there.
#if defined(__SANITIZE_THREAD__)
#define MUXIO_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MUXIO_TEST_TSAN 1
#endif
#endif
#ifndef MUXIO_TEST_TSAN
#define MUXIO_TEST_TSAN 0
#endif

namespace muxio::test {

/// Number of descriptors open in this process (from /proc/self/fd).
int count_open_fds();

/// Checks, when it goes out of scope, that the process has as many open
/// descriptors as when it was made. Put one at the top of every test.
class FdLeakCheck {
public:
    FdLeakCheck();
    ~FdLeakCheck();
    FdLeakCheck(const FdLeakCheck&) = delete;
    FdLeakCheck& operator=(const FdLeakCheck&) = delete;

private:
    int before_;
};

/// An owned descriptor, closed on destruction.
class UniqueFd {
public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) noexcept : fd_{fd} {}
    UniqueFd(UniqueFd&& other) noexcept : fd_{std::exchange(other.fd_, -1)} {}
    UniqueFd& operator=(UniqueFd&& other) noexcept {
        if (this != &other) {
            reset(std::exchange(other.fd_, -1));
        }
        return *this;
    }
    ~UniqueFd() { reset(); }

    [[nodiscard]] int get() const noexcept { return fd_; }
    /// Same as get(): lets a UniqueFd be registered as a file object.
    [[nodiscard]] int fileno() const noexcept { return fd_; }
    [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept;

private:
    int fd_ = -1;
};

/// A connected non-blocking AF_UNIX stream socket pair.
struct SocketPair {
    SocketPair();
    UniqueFd left;
    UniqueFd right;
};

/// A non-blocking pipe.
struct Pipe {
    Pipe();
    UniqueFd read_end;
    UniqueFd write_end;
};

/// Writes all of `bytes` to `fd` (which must have room); fails the test otherwise.
void write_all(int fd, std::string_view bytes);
/// Reads and discards whatever is readable on non-blocking `fd`; returns the byte count.
std::size_t drain(int fd);
/// Fills non-blocking `fd`'s send buffer until it would block.
void fill_until_blocked(int fd);

/// How many times a non-aligned operator new has run in this process
/// (tests/support/allocation_counter.cpp). Always 0 under ThreadSanitizer.
[[nodiscard]] std::size_t allocation_count() noexcept;
/// Whether allocation_count() counts (not under ThreadSanitizer).
inline constexpr bool counts_allocations = MUXIO_TEST_TSAN == 0;

/// For its lifetime, the `nth` operator new on this thread from now (1: the
/// next one) fails once, as the system's would: the throwing forms throw
/// std::bad_alloc, the nothrow forms return nullptr. Does nothing under
/// ThreadSanitizer (see counts_allocations).
class FailNthAllocation {
public:
    explicit FailNthAllocation(std::size_t nth) noexcept;
    ~FailNthAllocation();
    FailNthAllocation(const FailNthAllocation&) = delete;
    FailNthAllocation& operator=(const FailNthAllocation&) = delete;

    /// Whether the armed allocation has failed yet.
    [[nodiscard]] bool failed() const noexcept;
};

/// Raises RLIMIT_NOFILE's soft limit towards `wanted` (bounded by the hard
/// limit); returns the soft limit now in force.
long raise_fd_limit(long wanted);

/// For its lifetime no descriptor can be made: the soft RLIMIT_NOFILE is
/// the lowest free descriptor number, so the next accept(), socket() or
/// pipe() fails with EMFILE. (UBSan's first check of a polymorphic type
/// needs a pipe: meet such types once before, and keep logging off.)
class NoFreeDescriptors {
public:
    NoFreeDescriptors();
    ~NoFreeDescriptors();
    NoFreeDescriptors(const NoFreeDescriptors&) = delete;
    NoFreeDescriptors& operator=(const NoFreeDescriptors&) = delete;

private:
    unsigned long long saved_soft_limit_ = 0;
};

/// A close-on-exec duplicate of `fd` numbered `lowest` or above (the lowest
/// free number there); fails the test if there is none.
UniqueFd dup_at_or_above(int fd, int lowest);

/// True while `fd` is an open descriptor of this process.
bool is_open_fd(int fd);

/// Sets (or, with nullopt, removes) an environment variable for its lifetime
/// and restores the previous state afterwards.
class ScopedEnv {
public:
    ScopedEnv(std::string name, const std::optional<std::string>& value);
    ~ScopedEnv();
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

private:
    std::string name_;
    std::optional<std::string> saved_;
};

/// Time elapsed on std::chrono::steady_clock since construction.
class Stopwatch {
public:
    Stopwatch() : start_{std::chrono::steady_clock::now()} {}
    [[nodiscard]] std::chrono::nanoseconds elapsed() const { return std::chrono::steady_clock::now() - start_; }

private:
    std::chrono::steady_clock::time_point start_;
};

/// For its lifetime every descriptor number below `limit` is in use (each
/// free one holds a duplicate of /dev/null), so the next descriptor the
/// process makes (an accepted socket) is numbered `limit` or above: how a
/// test gives a server a descriptor that select() cannot watch
/// (FD_SETSIZE). Raises the soft RLIMIT_NOFILE to `limit + headroom` first
/// and fails the test if the hard limit is lower. Closes what it took.
class OccupyDescriptorsBelow {
public:
    explicit OccupyDescriptorsBelow(int limit, int headroom = 64);
    ~OccupyDescriptorsBelow();
    OccupyDescriptorsBelow(const OccupyDescriptorsBelow&) = delete;
    OccupyDescriptorsBelow& operator=(const OccupyDescriptorsBelow&) = delete;

    /// How many numbers it holds.
    [[nodiscard]] std::size_t count() const noexcept { return taken_.size(); }

private:
    std::vector<int> taken_;
};

}  // namespace muxio::test
