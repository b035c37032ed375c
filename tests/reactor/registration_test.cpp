// Registrations under misuse, on every selector: a Reactor made while
// allocations fail, descriptors closed or duplicated behind the reactor's
// back, and descriptor numbers reused without telling it. And registrations
// the kernel refuses to change (a seccomp filter in a child).
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "muxio/config.hpp"
#if MUXIO_HAS_IO_URING
#include <linux/io_uring.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/allocation_failure.hpp"
#include "support/seccomp.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;
using muxio::test::UniqueFd;
using muxio::test::write_all;

namespace {

// Moves `fd` onto descriptor number `number` (which must be free).
UniqueFd move_to_number(UniqueFd fd, int number) {
    if (fd.get() == number) {
        return fd;  // it got the number already, being the lowest free one
    }
    REQUIRE(::dup3(fd.get(), number, O_CLOEXEC) == number);
    return UniqueFd{number};
}

bool readable_now(int fd) {
    pollfd entry{fd, POLLIN, 0};
    return ::poll(&entry, 1, 0) == 1 && (entry.revents & POLLIN) != 0;
}

}  // namespace

TEST_CASE("an allocation failing while a reactor is made leaks no descriptor" *
          doctest::skip(!muxio::test::counts_allocations)) {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        const std::size_t failures =
            muxio::test::fail_each_allocation_of([&] { return std::make_unique<Reactor>(with_selector(name)); });
        CHECK(failures >= 3);  // the reactor, its state, its selector at least
        Reactor reactor{with_selector(name)};
        bool ran = false;
        reactor.call_soon_threadsafe([&] { ran = true; });
        CHECK(reactor.run_once(1s) == 1);
        CHECK(ran);
    }
}

TEST_CASE("an idle reactor waits out run_once after an fd was closed behind a duplicate and its reader removed") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        // Where the selector owns a kernel object, the descriptor another loop
        // would watch tells from outside whether the kernel still reports
        // anything: after the stale reports are dealt with, it must not.
        const auto& embeddable = muxio::reactor_test::embeddable_selectors();
        const int embed_fd =
            std::find(embeddable.begin(), embeddable.end(), name) != embeddable.end() ? reactor.embed_fd() : -1;
        SocketPair pair;
        const int number = pair.left.get();
        const UniqueFd duplicate{::dup(number)};
        REQUIRE(duplicate.get() >= 0);
        int calls = 0;
        reactor.add_reader(number, [&] { ++calls; });
        pair.left.reset();
        write_all(pair.right.get(), "stale");
        CHECK(reactor.remove_reader(number));

        const muxio::test::Stopwatch stopwatch;
        CHECK(reactor.run_once(100ms) == 0);
        CHECK(stopwatch.elapsed() >= 100ms);
        if (embed_fd >= 0) {
            CHECK_FALSE(readable_now(embed_fd));
        }
        // Idle from then on: each run_once waits its timeout out.
        const muxio::test::Stopwatch window;
        int iterations = 0;
        while (window.elapsed() < 200ms && iterations < 1000) {
            CHECK(reactor.run_once(20ms) == 0);
            ++iterations;
        }
        CHECK(iterations <= 10);
        CHECK(calls == 0);
    }
}

TEST_CASE("a loop watching embed_fd with its own epoll still hears the reactor after stale registrations are dropped") {
    FdLeakCheck leak_check;
    for (const std::string& name : muxio::reactor_test::embeddable_selectors()) {
        CAPTURE(name);
        Reactor reactor{with_selector(name)};
        // The host's epoll watches the open file behind embed_fd(): dropping
        // the reactor's stale registrations must not replace that file.
        const UniqueFd host{::epoll_create1(EPOLL_CLOEXEC)};
        REQUIRE(host.get() >= 0);
        epoll_event watch{};
        watch.events = EPOLLIN;
        REQUIRE(::epoll_ctl(host.get(), EPOLL_CTL_ADD, reactor.embed_fd(), &watch) == 0);

        SocketPair stale;
        const int number = stale.left.get();
        const UniqueFd duplicate{::dup(number)};
        REQUIRE(duplicate.get() >= 0);
        reactor.add_reader(number, [] {});
        stale.left.reset();
        write_all(stale.right.get(), "stale");
        CHECK(reactor.remove_reader(number));
        CHECK(reactor.run_once(50ms) == 0);

        epoll_event event{};
        CHECK(::epoll_wait(host.get(), &event, 1, 0) == 0);
        SocketPair live;
        int reads = 0;
        reactor.add_reader(live.right.get(), [&] {
            ++reads;
            muxio::test::drain(live.right.get());
        });
        write_all(live.left.get(), "x");
        CHECK(::epoll_wait(host.get(), &event, 1, 5000) == 1);
        CHECK(reactor.run_once(0s) == 1);
        CHECK(reads == 1);
        CHECK(reactor.remove_reader(live.right.get()));
    }
}

TEST_CASE("removing one side of a closed fd keeps the other, called as for an error until it is removed") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        for (const bool remove_reader_first : {true, false}) {
            CAPTURE(remove_reader_first);
            Reactor reactor{with_selector(name)};
            SocketPair pair;
            const int fd = pair.left.get();
            int reads = 0;
            int writes = 0;
            int last_errno = 0;
            reactor.add_reader(fd, [&] {
                ++reads;
                char byte = 0;
                last_errno = ::read(fd, &byte, 1) == -1 ? errno : 0;
            });
            reactor.add_writer(fd, [&] {
                ++writes;
                last_errno = ::write(fd, "x", 1) == -1 ? errno : 0;
            });
            pair.left.reset();  // behind the reactor's back

            const bool removed = remove_reader_first ? reactor.remove_reader(fd) : reactor.remove_writer(fd);
            CHECK(removed);
            CHECK(reactor.has_reader(fd) == !remove_reader_first);
            CHECK(reactor.has_writer(fd) == remove_reader_first);
            // The side left is not a silent dead callback: it is called in
            // every iteration, and its own I/O tells it why.
            for (int round = 1; round <= 3; ++round) {
                CHECK(reactor.run_once(5s) == 1);
                CHECK((remove_reader_first ? writes : reads) == round);
                CHECK(last_errno == EBADF);
            }
            CHECK((remove_reader_first ? reads : writes) == 0);
            const bool removed_other = remove_reader_first ? reactor.remove_writer(fd) : reactor.remove_reader(fd);
            CHECK(removed_other);
            CHECK_FALSE(reactor.has_reader(fd));
            CHECK_FALSE(reactor.has_writer(fd));
            CHECK_FALSE(reactor.remove_reader(fd));
            CHECK_FALSE(reactor.remove_writer(fd));
            CHECK(reactor.run_once(0s) == 0);
        }
    }
}

TEST_CASE("add_reader on a reused fd number that was closed without remove_reader watches the new file") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        for (const bool old_file_lives_on : {false, true}) {
            CAPTURE(old_file_lives_on);
            Reactor reactor{with_selector(name)};
            SocketPair old_pair;
            const int number = old_pair.left.get();
            int old_calls = 0;
            int new_calls = 0;
            reactor.add_reader(number, [&] { ++old_calls; });
            UniqueFd duplicate;
            if (old_file_lives_on) {
                duplicate.reset(::dup(number));
                REQUIRE(duplicate.get() >= 0);
            }
            old_pair.left.reset();  // closed behind the reactor's back
            SocketPair new_pair;
            UniqueFd reused = move_to_number(std::move(new_pair.left), number);
            reactor.add_reader(number, [&] {
                ++new_calls;
                muxio::test::drain(number);
            });

            // The old file's readiness is not the new reader's business.
            if (old_file_lives_on) {
                write_all(old_pair.right.get(), "old");
            }
            CHECK(reactor.run_once(20ms) == 0);
            CHECK(new_calls == 0);
            write_all(new_pair.right.get(), "new");
            for (int round = 0; round < 10 && new_calls == 0; ++round) {
                reactor.run_once(500ms);
            }
            CHECK(new_calls == 1);
            CHECK(old_calls == 0);
            CHECK(reactor.remove_reader(number));
        }
    }
}

TEST_CASE("add_reader and add_writer on a closed fd throw EBADF and change nothing") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        const int fd = pair.left.get();
        int reads = 0;
        int writes = 0;
        int last_errno = 0;
        auto reader = [&] {
            ++reads;
            char byte = 0;
            last_errno = ::read(fd, &byte, 1) == -1 ? errno : 0;
        };
        auto writer = [&] {
            ++writes;
            last_errno = ::write(fd, "x", 1) == -1 ? errno : 0;
        };
        auto refused_with_ebadf = [&](auto add) {
            try {
                add();
            } catch (const std::system_error& error) {
                return error.code() == std::error_code{EBADF, std::system_category()};
            }
            return false;
        };
        SUBCASE("no side yet") {
            pair.left.reset();
            CHECK(refused_with_ebadf([&] { reactor.add_reader(fd, reader); }));
            CHECK(refused_with_ebadf([&] { reactor.add_writer(fd, writer); }));
            CHECK_FALSE(reactor.has_reader(fd));
            CHECK_FALSE(reactor.has_writer(fd));
            CHECK(reactor.run_once(0s) == 0);
        }
        SUBCASE("the other side added before") {
            reactor.add_writer(fd, writer);
            pair.left.reset();
            CHECK(refused_with_ebadf([&] { reactor.add_reader(fd, reader); }));
            CHECK_FALSE(reactor.has_reader(fd));
            CHECK(reactor.has_writer(fd));
            CHECK(reactor.run_once(5s) == 1);
            CHECK(writes == 1);
            CHECK(last_errno == EBADF);
            CHECK(reactor.remove_writer(fd));
        }
        SUBCASE("the same side added before") {
            reactor.add_reader(fd, reader);
            pair.left.reset();
            CHECK(refused_with_ebadf([&] { reactor.add_reader(fd, [] {}); }));
            CHECK(reactor.has_reader(fd));
            CHECK(reactor.run_once(5s) == 1);
            CHECK(reads == 1);  // the reader added first, still in place
            CHECK(last_errno == EBADF);
            CHECK(reactor.remove_reader(fd));
        }
        CHECK_FALSE(reactor.has_reader(fd));
        CHECK_FALSE(reactor.has_writer(fd));
        CHECK(reactor.run_once(0s) == 0);
    }
}

// ---------------------------------------------------------------------------
// The kernel refusing to change a registration: seccomp in a child process

#if MUXIO_TEST_HAS_SECCOMP && (MUXIO_HAS_EPOLL || MUXIO_HAS_IO_URING)

namespace {

// A selector whose modify() asks the kernel, and how to make the kernel
// refuse that request (and only that: waits still work) with ENOMEM.
struct RefusedModify {
    std::string_view selector;
    muxio::test::SyscallRefusal refusal;
};

// epoll: every epoll_ctl; io_uring: every io_uring_enter that only submits
// (a wait sets IORING_ENTER_GETEVENTS, a modify's submission does not).
std::vector<RefusedModify> refused_modifies() {
    std::vector<RefusedModify> cases;
    const auto& usable = muxio::reactor_test::usable_selectors();
    const auto is_usable = [&](std::string_view name) {
        return std::find(usable.begin(), usable.end(), name) != usable.end();
    };
#if MUXIO_HAS_EPOLL
    if (is_usable("epoll")) {
        cases.push_back({"epoll", {.number = SYS_epoll_ctl}});
    }
#endif
#if MUXIO_HAS_IO_URING
    if (is_usable("io_uring")) {
        cases.push_back(
            {"io_uring", {.number = SYS_io_uring_enter, .argument = 3, .unless_flags = IORING_ENTER_GETEVENTS}});
    }
#endif
    return cases;
}

bool install(const RefusedModify& refused) {
    return muxio::test::refuse_syscalls_in_this_process(std::span{&refused.refusal, 1}, ENOMEM);
}

// What a call that the kernel should refuse did, as a word of the report.
template <class F>
std::string refusal_of(F call) {
    try {
        call();
        return "accepted";
    } catch (const std::system_error& error) {
        return error.code() == std::error_code{ENOMEM, std::system_category()} ? "enomem"
                                                                               : std::string{"other:"} + error.what();
    }
}

// One byte to `fd`, outside doctest (this runs in the child).
bool poke(int fd) {
    return ::write(fd, "x", 1) == 1;
}

// Runs `report` in a child and checks that its line is `expected`.
void check_child(const std::function<std::string()>& report, std::string_view expected) {
    const auto line = muxio::test::report_from_child(report, 20s);
    REQUIRE_MESSAGE(line.has_value(), "the child did not finish");
    if (*line == "no-seccomp") {
        MESSAGE("skipped: the kernel refused the seccomp filter");
        return;
    }
    CHECK(*line == expected);
}

}  // namespace

TEST_CASE("remove_reader refused by the kernel throws and leaves the reader and the writer in place") {
    FdLeakCheck leak_check;
    for (const RefusedModify& refused : refused_modifies()) {
        CAPTURE(refused.selector);
        check_child(
            [&] {
                Reactor reactor{with_selector(refused.selector)};
                SocketPair pair;
                const int fd = pair.left.get();
                int reads = 0;
                int writes = 0;
                reactor.add_reader(fd, [&] {
                    ++reads;
                    char byte = 0;
                    (void)::read(fd, &byte, 1);
                });
                reactor.add_writer(fd, [&] { ++writes; });
                if (!install(refused)) {
                    return std::string{"no-seccomp"};
                }
                std::string report = refusal_of([&] { (void)reactor.remove_reader(fd); });
                report += reactor.has_reader(fd) ? " reader" : " no-reader";
                report += reactor.has_writer(fd) ? " writer" : " no-writer";
                // The kernel still watches both sides, and both callbacks are
                // there to be called.
                report += poke(pair.right.get()) ? "" : " poke-failed";
                (void)reactor.run_once(2s);
                report += " reads=" + std::to_string(reads);
                report += writes > 0 ? " wrote" : " not-written";
                // Replacing the reader, refused too, keeps the one in place.
                report += " " + refusal_of([&] { reactor.add_reader(fd, [] {}); });
                report += reactor.has_reader(fd) ? " reader" : " no-reader";
                report += poke(pair.right.get()) ? "" : " poke-failed";
                (void)reactor.run_once(2s);
                report += " reads=" + std::to_string(reads);
                return report;
            },
            "enomem reader writer reads=1 wrote enomem reader reads=2");
    }
}

TEST_CASE("a reader removing itself when the kernel refuses stays registered and fires again") {
    FdLeakCheck leak_check;
    for (const RefusedModify& refused : refused_modifies()) {
        CAPTURE(refused.selector);
        check_child(
            [&] {
                Reactor reactor{with_selector(refused.selector)};
                SocketPair pair;
                const int fd = pair.left.get();
                int reads = 0;
                int writes = 0;
                std::string inside;
                reactor.add_reader(fd, [&] {
                    ++reads;
                    char byte = 0;
                    (void)::read(fd, &byte, 1);
                    if (reads == 1) {
                        inside = refusal_of([&] { (void)reactor.remove_reader(fd); });
                        inside += reactor.has_reader(fd) ? " reader" : " no-reader";
                    }
                });
                reactor.add_writer(fd, [&] { ++writes; });
                if (!install(refused)) {
                    return std::string{"no-seccomp"};
                }
                std::string report = poke(pair.right.get()) ? "" : "poke-failed ";
                (void)reactor.run_once(2s);
                report += inside;
                report += " reads=" + std::to_string(reads);
                // The writer, ready in the same iteration, ran after it.
                report += writes > 0 ? " wrote" : " not-written";
                report += reactor.has_reader(fd) ? " reader" : " no-reader";
                report += reactor.has_writer(fd) ? " writer" : " no-writer";
                report += poke(pair.right.get()) ? "" : " poke-failed";
                (void)reactor.run_once(2s);
                report += " reads=" + std::to_string(reads);
                return report;
            },
            "enomem reader reads=1 wrote reader writer reads=2");
    }
}

#endif  // MUXIO_TEST_HAS_SECCOMP && (MUXIO_HAS_EPOLL || MUXIO_HAS_IO_URING)
