// io_uring(7) only: one-shot polls re-armed so readiness stays
// level-triggered (and is checked again at each select), a ring that stays
// pollable once handed out, refusal at register_, prompt release of
// unregistered files, stale completions of replaced arms, nanosecond
// timeouts, one io_uring_enter per select, and more ready fds than the
// rings hold.
#include "muxio/config.hpp"

#if MUXIO_HAS_IO_URING

#include <fcntl.h>
#include <poll.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <map>
#include <string>
#include <system_error>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/detail/poller.hpp"
#include "muxio/selectors.hpp"
#include "support/selector_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::EVENT_READ;
using muxio::EVENT_READ_WRITE;
using muxio::EVENT_WRITE;
using muxio::Events;
using muxio::KeyError;
using muxio::test::FdLeakCheck;
using muxio::test::Pipe;
using muxio::test::ready_by_fd;
using muxio::test::SocketPair;
using muxio::test::Stopwatch;
using muxio::test::UniqueFd;

namespace {

// True when the peer of `fd` is already gone: no waiting, because the
// release must be complete when unregister() or close() returns.
bool peer_closed_now(int fd) {
    pollfd entry{fd, POLLIN, 0};
    if (::poll(&entry, 1, 0) != 1 || (entry.revents & POLLIN) == 0) {
        return false;
    }
    char byte = 0;
    return ::read(fd, &byte, 1) == 0;
}

bool readable_now(int fd) {
    pollfd entry{fd, POLLIN, 0};
    return ::poll(&entry, 1, 0) == 1 && (entry.revents & POLLIN) != 0;
}

}  // namespace

TEST_CASE("io_uring reports a still readable fd on every select until it is drained") {
    FdLeakCheck leak_check;
    muxio::IoUringSelector<int> selector;
    SocketPair pair;
    (void)selector.register_(pair.left.get(), EVENT_READ, 7);
    muxio::test::write_all(pair.right.get(), "level");
    // The one-shot poll fires once; the re-arm with each select fires again
    // because the data is still there.
    for (int round = 0; round < 5; ++round) {
        CAPTURE(round);
        const auto ready = selector.select(5s);
        REQUIRE(ready.size() == 1);
        CHECK(ready[0].key().fd == pair.left.get());
        CHECK(ready[0].events() == EVENT_READ);
        CHECK(ready[0].key().data == 7);
    }
    for (int round = 0; round < 3; ++round) {
        CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
    }
    CHECK(muxio::test::drain(pair.left.get()) == 5);
    CHECK(selector.select(0s).empty());
    CHECK(selector.select(1ms).empty());
}

TEST_CASE("io_uring does not report an fd drained after its poll fired between selects") {
    FdLeakCheck leak_check;
    muxio::IoUringSelector<int> selector;
    SocketPair pair;
    (void)selector.register_(pair.left.get(), EVENT_READ, 0);
    CHECK(selector.select(0s).empty());  // armed
    // The poll completes now, while nobody selects; the data is gone before
    // the next select, which must look again rather than trust the completion.
    muxio::test::write_all(pair.right.get(), "gone");
    CHECK(muxio::test::drain(pair.left.get()) == 4);
    CHECK(selector.select(0s).empty());
    CHECK(selector.select(1ms).empty());
    muxio::test::write_all(pair.right.get(), "here");
    CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
}

TEST_CASE("io_uring keeps its ring readable while a registered fd is ready once fileno was taken") {
    FdLeakCheck leak_check;
    // What an outer loop embedding the selector relies on: the ring polls
    // readable exactly when a select would report something.
    muxio::IoUringSelector<int> selector;
    const int ring = selector.fileno();
    SocketPair pair;
    (void)selector.register_(pair.left.get(), EVENT_READ, 0);
    CHECK_FALSE(readable_now(ring));
    muxio::test::write_all(pair.right.get(), "12");
    CHECK(readable_now(ring));
    for (int round = 0; round < 3; ++round) {
        CAPTURE(round);
        CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
        CHECK(readable_now(ring));  // still readable: polled again already
    }
    CHECK(muxio::test::drain(pair.left.get()) == 2);
    CHECK(selector.select(0s).empty());
    CHECK_FALSE(readable_now(ring));
    muxio::test::write_all(pair.right.get(), "3");
    CHECK(readable_now(ring));
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
}

TEST_CASE("io_uring refuses a closed fd at register_ and leaves the selector unchanged") {
    FdLeakCheck leak_check;
    // The selector first, so that its ring does not take the closed number.
    muxio::IoUringSelector<int> selector;
    SocketPair pair;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    SocketPair doomed;
    const int closed = doomed.left.release();
    REQUIRE(::close(closed) == 0);
    try {
        (void)selector.register_(closed, EVENT_READ, 2);
        FAIL("register_ accepted a closed fd");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::error_code{EBADF, std::system_category()});
        const std::string message = error.what();
        CHECK(message.find("POLL_ADD") != std::string::npos);
        CHECK(message.find(fmt::format("fd {}", closed)) != std::string::npos);
    }
    CHECK(selector.get_map().size() == 1);
    CHECK_THROWS_AS((void)selector.get_key(closed), KeyError);
    CHECK(selector.select(0s).empty());
    muxio::test::write_all(pair.right.get(), "x");
    CHECK(ready_by_fd(selector.select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
    // The number is usable once it names an open file again.
    UniqueFd reopened{::dup3(doomed.right.get(), closed, O_CLOEXEC)};
    REQUIRE(reopened.get() == closed);
    CHECK(selector.register_(closed, EVENT_WRITE, 3).data == 3);
    CHECK(ready_by_fd(selector.select(5s)) ==
          std::map<int, Events>{{pair.left.get(), EVENT_READ}, {closed, EVENT_WRITE}});
}

TEST_CASE("io_uring lets the peer see end of file when an fd is closed right after unregister") {
    FdLeakCheck leak_check;
    muxio::IoUringSelector<int> selector;
    SocketPair pair;
    (void)selector.register_(pair.left.get(), EVENT_READ, 0);
    CHECK(selector.select(0s).empty());  // the poll is armed and holds the file
    (void)selector.unregister(pair.left.get());
    pair.left.reset();
    // No select in between: the cancellation must already have released
    // the file, or the socket would stay open and the peer see nothing.
    CHECK(peer_closed_now(pair.right.get()));
}

TEST_CASE("io_uring lets the peer see end of file when an fd is closed right after the selector") {
    FdLeakCheck leak_check;
    muxio::IoUringSelector<int> selector;
    SocketPair pair;
    (void)selector.register_(pair.left.get(), EVENT_READ, 0);
    CHECK(selector.select(0s).empty());
    // The kernel would cancel the poll from a worker some time after the
    // ring is closed; the selector cancels it before.
    selector.close();
    pair.left.reset();
    CHECK(peer_closed_now(pair.right.get()));
}

TEST_CASE("io_uring modify of an armed poll reports only the new events") {
    FdLeakCheck leak_check;
    SocketPair pair;

    SUBCASE("through the poller, which does not mask events") {
        const auto poller = muxio::detail::make_io_uring_poller();
        constexpr std::uint64_t token = 42;
        poller->add(pair.left.get(), EVENT_READ, token);
        CHECK(poller->wait(0s).empty());  // armed for reading, nothing to read
        poller->modify(pair.left.get(), EVENT_READ, EVENT_WRITE, token);
        // Readable now: the replaced arm would fire if it were still there,
        // and its completion must not be taken for the current one.
        muxio::test::write_all(pair.right.get(), "x");
        for (int round = 0; round < 3; ++round) {
            CAPTURE(round);
            const auto ready = poller->wait(5s);
            REQUIRE(ready.size() == 1);
            CHECK(ready[0].token == token);
            CHECK(ready[0].events == EVENT_WRITE);
        }
        poller->modify(pair.left.get(), EVENT_WRITE, EVENT_READ, token);
        const auto ready = poller->wait(5s);
        REQUIRE(ready.size() == 1);
        CHECK(ready[0].events == EVENT_READ);
    }
    SUBCASE("through the selector") {
        muxio::IoUringSelector<int> selector;
        (void)selector.register_(pair.left.get(), EVENT_READ, 1);
        CHECK(selector.select(0s).empty());
        (void)selector.modify(pair.left.get(), EVENT_WRITE, 2);
        muxio::test::write_all(pair.right.get(), "x");
        for (int round = 0; round < 3; ++round) {
            CAPTURE(round);
            const auto ready = selector.select(5s);
            REQUIRE(ready.size() == 1);
            CHECK(ready[0].events() == EVENT_WRITE);
            CHECK(ready[0].key().data == 2);
        }
    }
}

TEST_CASE("io_uring gives no stale completion to an fd unregistered and registered again") {
    FdLeakCheck leak_check;
    SocketPair pair;
    const auto poller = muxio::detail::make_io_uring_poller();
    constexpr std::uint64_t old_token = 1;
    constexpr std::uint64_t new_token = 2;

    SUBCASE("while the old poll was still armed") {
        poller->add(pair.left.get(), EVENT_READ, old_token);
        CHECK(poller->wait(0s).empty());
        CHECK_FALSE(poller->remove(pair.left.get(), EVENT_READ));
    }
    SUBCASE("after the old poll fired but before a wait reaped it") {
        poller->add(pair.left.get(), EVENT_READ, old_token);
        muxio::test::write_all(pair.right.get(), "early");
        // The completion is queued now; whether the cancellation still finds
        // the poll (ENOENT) or not is a race the caller never sees.
        (void)poller->remove(pair.left.get(), EVENT_READ);
    }
    SUBCASE("after the old poll fired and was reaped") {
        poller->add(pair.left.get(), EVENT_READ, old_token);
        muxio::test::write_all(pair.right.get(), "early");
        REQUIRE(poller->wait(5s).size() == 1);
        CHECK_FALSE(poller->remove(pair.left.get(), EVENT_READ));
    }
    poller->add(pair.left.get(), EVENT_READ, new_token);
    muxio::test::write_all(pair.right.get(), "x");
    for (int round = 0; round < 3; ++round) {
        CAPTURE(round);
        const auto ready = poller->wait(5s);
        REQUIRE(ready.size() == 1);
        CHECK(ready[0].token == new_token);
        CHECK(ready[0].events == EVENT_READ);
    }
}

TEST_CASE("io_uring honours a sub-millisecond timeout") {
    FdLeakCheck leak_check;
    muxio::IoUringSelector<int> selector;
    Pipe pipe;
    (void)selector.register_(pipe.read_end.get(), EVENT_READ, 0);
    std::chrono::nanoseconds shortest = 1h;
    for (int round = 0; round < 20; ++round) {
        CAPTURE(round);
        const Stopwatch stopwatch;
        CHECK(selector.select(200us).empty());
        const auto elapsed = stopwatch.elapsed();
        CHECK(elapsed >= 200us);
        CHECK(elapsed < 50ms);
        shortest = std::min(shortest, elapsed);
    }
    // A timeout rounded up to a millisecond would never come back sooner.
    CHECK(shortest < 1ms);
}

namespace {

volatile std::sig_atomic_t alarms = 0;

extern "C" void count_alarm(int /*signal*/) {
    alarms = alarms + 1;
}

// Installs a SIGALRM handler without SA_RESTART and arms a one-shot timer;
// restores both on destruction.
class ScopedAlarm {
public:
    explicit ScopedAlarm(std::chrono::microseconds after) {
        alarms = 0;
        struct sigaction action {};
        action.sa_handler = count_alarm;
        sigemptyset(&action.sa_mask);
        REQUIRE(::sigaction(SIGALRM, &action, &saved_) == 0);
        itimerval timer{};
        timer.it_value.tv_sec = static_cast<time_t>(after.count() / 1'000'000);
        timer.it_value.tv_usec = static_cast<suseconds_t>(after.count() % 1'000'000);
        REQUIRE(::setitimer(ITIMER_REAL, &timer, nullptr) == 0);
    }
    ~ScopedAlarm() {
        const itimerval off{};
        ::setitimer(ITIMER_REAL, &off, nullptr);
        ::sigaction(SIGALRM, &saved_, nullptr);
    }
    ScopedAlarm(const ScopedAlarm&) = delete;
    ScopedAlarm& operator=(const ScopedAlarm&) = delete;

private:
    struct sigaction saved_ {};
};

}  // namespace

TEST_CASE("io_uring does not end a wait early for a signal that arrives while re-arms were submitted") {
    FdLeakCheck leak_check;
    muxio::IoUringSelector<int> selector;
    Pipe pipe;
    (void)selector.register_(pipe.read_end.get(), EVENT_READ, 0);
    muxio::test::write_all(pipe.write_end.get(), "x");
    REQUIRE(selector.select(5s).size() == 1);
    CHECK(muxio::test::drain(pipe.read_end.get()) == 1);
    // The next select submits the re-arm with the wait; the kernel then
    // reports a signal as "one request submitted", not as EINTR.
    const ScopedAlarm alarm{20ms};
    const Stopwatch stopwatch;
    CHECK(selector.select(150ms).empty());
    CHECK(stopwatch.elapsed() >= 150ms);
    CHECK(alarms == 1);
}

TEST_CASE("io_uring reports an fd closed without unregister as an error condition") {
    FdLeakCheck leak_check;
    // Unlike epoll, which forgets a closed file, the re-arm at the next
    // select finds the number closed and says so, as poll's POLLNVAL does.
    muxio::IoUringSelector<int> selector;
    SocketPair pair;
    (void)selector.register_(pair.left.get(), EVENT_READ_WRITE, 1);
    REQUIRE(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}});
    const int closed = pair.left.get();
    pair.left.reset();
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{closed, EVENT_READ_WRITE}});
    CHECK(selector.unregister(closed).data == 1);
    CHECK(selector.select(0s).empty());
}

TEST_CASE("io_uring fileno is the close-on-exec ring descriptor") {
    FdLeakCheck leak_check;
    muxio::IoUringSelector<int> selector;
    const int ring = selector.fileno();
    REQUIRE(ring >= 0);
    std::array<char, 128> target{};
    const ssize_t length = ::readlink(fmt::format("/proc/self/fd/{}", ring).c_str(), target.data(), target.size());
    REQUIRE(length > 0);
    CHECK(std::string(target.data(), static_cast<std::size_t>(length)) == "anon_inode:[io_uring]");
    const int flags = ::fcntl(ring, F_GETFD);
    REQUIRE(flags != -1);
    CHECK((flags & FD_CLOEXEC) != 0);
    selector.close();
    CHECK(selector.fileno() == -1);
}

TEST_CASE("io_uring reports more ready fds than its submission and completion queues hold") {
    FdLeakCheck leak_check;
    // 4200 ready fds: more than the 256 submission and 4096 completion
    // entries, so re-arms go in batches and completions wait in the kernel.
    constexpr std::size_t pair_count = 2100;
    REQUIRE(muxio::test::raise_fd_limit(5000) >= 4300);
    std::vector<SocketPair> pairs(pair_count);
    muxio::IoUringSelector<int> selector;
    std::map<int, Events> expected;
    for (const auto& pair : pairs) {
        (void)selector.register_(pair.left.get(), EVENT_WRITE, 0);
        (void)selector.register_(pair.right.get(), EVENT_READ_WRITE, 1);
        expected[pair.left.get()] = EVENT_WRITE;
        expected[pair.right.get()] = EVENT_WRITE;
    }
    for (int round = 0; round < 3; ++round) {
        CAPTURE(round);
        const auto ready = selector.select(5s);
        CHECK(ready.size() == 2 * pair_count);
        CHECK(ready_by_fd(ready) == expected);
    }
    for (std::size_t i = 0; i < pairs.size(); i += 2) {
        (void)selector.unregister(pairs[i].left.get());
        expected.erase(pairs[i].left.get());
    }
    CHECK(ready_by_fd(selector.select(5s)) == expected);
}

namespace {

// The traced child's exit codes.
constexpr int child_ok = 0;
constexpr int child_cannot_be_traced = 2;
constexpr int child_failed = 3;

constexpr int traced_rounds = 20;

// Runs in a forked child traced by the test: four phases of `traced_rounds`
// selects, each phase between two SIGSTOPs so the tracer can tell them apart.
// No doctest assertions here: the exit code is the verdict.
int run_traced_selects() noexcept {
    if (::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) {
        return child_cannot_be_traced;
    }
    ::raise(SIGSTOP);  // lets the tracer set its options
    try {
        std::array<int, 2> busy{};
        std::array<int, 2> idle{};
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, busy.data()) != 0 ||
            ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, idle.data()) != 0 ||
            ::write(busy[1], "x", 1) != 1) {
            return child_failed;
        }
        muxio::IoUringSelector<int> ready_selector;
        (void)ready_selector.register_(busy[0], EVENT_READ_WRITE, 0);
        (void)ready_selector.register_(busy[1], EVENT_WRITE, 1);
        (void)ready_selector.register_(idle[0], EVENT_READ, 2);
        muxio::IoUringSelector<int> idle_selector;
        (void)idle_selector.register_(idle[0], EVENT_READ, 0);
        // Past the first select everything is in its steady state.
        if (ready_selector.select(1s).size() != 2 || idle_selector.select(0s).size() != 0) {
            return child_failed;
        }
        ::raise(SIGSTOP);  // phase 1: ready fds, timeout
        for (int round = 0; round < traced_rounds; ++round) {
            if (ready_selector.select(1s).size() != 2) {
                return child_failed;
            }
        }
        ::raise(SIGSTOP);  // phase 2: ready fds, zero timeout
        for (int round = 0; round < traced_rounds; ++round) {
            if (ready_selector.select(0s).size() != 2) {
                return child_failed;
            }
        }
        ::raise(SIGSTOP);  // phase 3: nothing ready, the timeout expires
        for (int round = 0; round < traced_rounds; ++round) {
            if (!idle_selector.select(100us).empty()) {
                return child_failed;
            }
        }
        ::raise(SIGSTOP);  // phase 4, not measured: the ring is handed out
        // From now on polls are re-armed right after each wait too, so that
        // the ring stays readable.
        if (ready_selector.fileno() < 0 || ready_selector.select(1s).size() != 2) {
            return child_failed;
        }
        ::raise(SIGSTOP);  // phase 5: ready fds, timeout, ring handed out
        for (int round = 0; round < traced_rounds; ++round) {
            if (ready_selector.select(1s).size() != 2) {
                return child_failed;
            }
        }
        ::raise(SIGSTOP);
    } catch (...) {
        return child_failed;
    }
    return child_ok;
}

// Kills and reaps the child if the test stops early.
class ChildGuard {
public:
    explicit ChildGuard(pid_t pid) noexcept : pid_{pid} {}
    ~ChildGuard() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int status = 0;
            ::waitpid(pid_, &status, 0);
        }
    }
    ChildGuard(const ChildGuard&) = delete;
    ChildGuard& operator=(const ChildGuard&) = delete;
    void reaped() noexcept { pid_ = -1; }

private:
    pid_t pid_;
};

void* as_ptrace_data(long value) noexcept {
    return reinterpret_cast<void*>(value);  // NOLINT(performance-no-int-to-ptr): ptrace's data is a long
}

}  // namespace

TEST_CASE("io_uring makes exactly one io_uring_enter per steady state select") {
    FdLeakCheck leak_check;
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::_exit(run_traced_selects());
    }
    ChildGuard guard{child};
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    if (WIFEXITED(status) && WEXITSTATUS(status) == child_cannot_be_traced) {
        guard.reaped();
        WARN_MESSAGE(false, "ptrace is not permitted here: io_uring_enter calls not counted");
        return;
    }
    REQUIRE(WIFSTOPPED(status));
    REQUIRE(WSTOPSIG(status) == SIGSTOP);
    REQUIRE(::ptrace(PTRACE_SETOPTIONS, child, nullptr, as_ptrace_data(PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)) ==
            0);

    // enters[phase]: io_uring_enter calls after the phase-th SIGSTOP.
    std::array<int, 7> enters{};
    std::size_t phase = 0;
    int deliver = 0;
    bool exited = false;
    for (int stop = 0; stop < 1'000'000 && !exited; ++stop) {
        REQUIRE(::ptrace(PTRACE_SYSCALL, child, nullptr, as_ptrace_data(deliver)) == 0);
        deliver = 0;
        REQUIRE(::waitpid(child, &status, 0) == child);
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            exited = true;
        } else if (WSTOPSIG(status) == (SIGTRAP | 0x80)) {
            __ptrace_syscall_info info{};
            REQUIRE(::ptrace(PTRACE_GET_SYSCALL_INFO, child, as_ptrace_data(sizeof info), &info) > 0);
            if (info.op == PTRACE_SYSCALL_INFO_ENTRY && info.entry.nr == SYS_io_uring_enter) {
                ++enters.at(phase);
            }
        } else if (WSTOPSIG(status) == SIGSTOP) {
            phase = std::min(phase + 1, enters.size() - 1);  // suppressed: the child goes on
        } else {
            deliver = WSTOPSIG(status);
        }
    }
    REQUIRE(exited);
    guard.reaped();
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == child_ok);
    MESSAGE("io_uring_enter calls for ", traced_rounds, " selects: ready with timeout ", enters[1], ", ready polling ",
            enters[2], ", idle until timeout ", enters[3], ", ready with the ring handed out ", enters[5]);
    CHECK(enters[1] == traced_rounds);
    CHECK(enters[2] == traced_rounds);
    CHECK(enters[3] == traced_rounds);
    CHECK(enters[5] == 2 * traced_rounds);
}

#endif  // MUXIO_HAS_IO_URING
