// Fork: in a child process the parent's reactor refuses to run with a clear
// std::logic_error, and the child can build and run a reactor of its own.
// The child reports through its exit code; the parent waits for it with a
// bound (a pidfd polled with a timeout).
#include <poll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::Pipe;

namespace {

// What the child found; each failure has its own exit code.
enum ChildResult : int {
    ok = 0,
    parent_run_allowed = 10,
    parent_run_once_allowed = 11,
    parent_call_soon_allowed = 12,
    parent_add_reader_allowed = 13,
    unclear_message = 14,
    wrong_exception = 15,
    own_reactor_failed = 20,
    own_reactor_did_not_run = 21,
};

// Expects `call` to throw std::logic_error that mentions fork.
int expect_refusal(Reactor& parent, int code_if_allowed, void (*call)(Reactor&)) {
    try {
        call(parent);
        return code_if_allowed;
    } catch (const std::logic_error& refusal) {
        return std::string_view{refusal.what()}.find("fork") == std::string_view::npos ? unclear_message : ok;
    } catch (...) {
        return wrong_exception;
    }
}

int child_main(Reactor& parent, const std::string& name, int parent_fd) {
    for (const auto& [code, call] : {
             std::pair<int, void (*)(Reactor&)>{parent_run_allowed, [](Reactor& r) { r.run(); }},
             std::pair<int, void (*)(Reactor&)>{parent_run_once_allowed, [](Reactor& r) { (void)r.run_once(0s); }},
             std::pair<int, void (*)(Reactor&)>{parent_call_soon_allowed, [](Reactor& r) { r.call_soon([] {}); }},
         }) {
        if (const int result = expect_refusal(parent, code, call); result != ok) {
            return result;
        }
    }
    try {
        parent.add_reader(parent_fd, [] {});
        return parent_add_reader_allowed;
    } catch (const std::logic_error&) {
    } catch (...) {
        return wrong_exception;
    }
    try {
        Reactor own{with_selector(name)};
        Pipe pipe;
        bool soon = false;
        bool timer = false;
        bool reader = false;
        own.call_soon([&] { soon = true; });
        own.call_later(1ms, [&] { timer = true; });
        own.add_reader(pipe.read_end.get(), [&] {
            reader = true;
            own.remove_reader(pipe.read_end.get());
        });
        muxio::test::write_all(pipe.write_end.get(), "x");
        own.call_later(5s, [&] { own.stop(); });
        own.call_later(2ms, [&] { own.stop(); });
        own.run();
        return soon && timer && reader ? ok : own_reactor_did_not_run;
    } catch (...) {
        return own_reactor_failed;
    }
}

// Waits at most `limit` for `pid` to exit; returns its wait status, or kills
// it and fails the test.
int wait_bounded(pid_t pid, std::chrono::milliseconds limit) {
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    REQUIRE_MESSAGE(pidfd >= 0, "pidfd_open: ", std::strerror(errno));
    const muxio::test::UniqueFd owned{pidfd};
    pollfd watch{pidfd, POLLIN, 0};
    int ready = 0;
    do {
        ready = ::poll(&watch, 1, static_cast<int>(limit.count()));
    } while (ready == -1 && errno == EINTR);
    if (ready != 1) {
        ::kill(pid, SIGKILL);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE_MESSAGE(ready == 1, "the child did not exit in time");
    return status;
}

}  // namespace

TEST_CASE("in a forked child the parent's reactor refuses and a new one runs") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor parent{with_selector(name)};
        Pipe pipe;
        int parent_reads = 0;
        parent.add_reader(pipe.read_end.get(), [&] {
            ++parent_reads;
            muxio::test::drain(pipe.read_end.get());
        });
        parent.call_later(1h, [] {});

        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::_exit(child_main(parent, name, pipe.read_end.get()));
        }
        const int status = wait_bounded(pid, 10'000ms);
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == ok);

        // The parent's reactor is untouched and still works in the parent.
        muxio::test::write_all(pipe.write_end.get(), "x");
        CHECK(parent.run_once(1s) == 1);
        CHECK(parent_reads == 1);
        CHECK(parent.remove_reader(pipe.read_end.get()));
    }
}

TEST_CASE("a reactor built after a fork runs in the parent") {
    FdLeakCheck leak_check;
    {
        Reactor before{};
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::_exit(0);
        }
        const int status = wait_bounded(pid, 10'000ms);
        CHECK(WIFEXITED(status));
        // The fork happened in the child only: the parent's reactors run.
        bool ran = false;
        before.call_soon([&] { ran = true; });
        CHECK(before.run_once(0s) == 1);
        CHECK(ran);
    }
    Reactor after{};
    bool ran = false;
    after.call_soon([&] { ran = true; });
    CHECK(after.run_once(0s) == 1);
    CHECK(ran);
}
