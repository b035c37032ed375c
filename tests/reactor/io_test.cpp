// fd callbacks on every selector: level-triggered readers and writers,
// replacing and removing them, and what callbacks may do to any fd during
// dispatch (their own included) without dangling or stale calls.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/error.hpp"
#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::Tracked;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::Pipe;
using muxio::test::SocketPair;
using muxio::test::UniqueFd;
using muxio::test::write_all;

namespace {

// Reads one byte from non-blocking `fd`; returns whether one was read.
bool read_one(int fd) {
    char byte = 0;
    return ::read(fd, &byte, 1) == 1;
}

// Runs `on_destroy` when destroyed (unless moved from).
class OnDestroy {
public:
    explicit OnDestroy(std::function<void()> on_destroy) : on_destroy_{std::move(on_destroy)} {}
    OnDestroy(OnDestroy&& other) noexcept : on_destroy_{std::exchange(other.on_destroy_, nullptr)} {}
    OnDestroy(const OnDestroy&) = delete;
    OnDestroy& operator=(const OnDestroy&) = delete;
    OnDestroy& operator=(OnDestroy&&) = delete;
    ~OnDestroy() {
        if (on_destroy_) {
            on_destroy_();
        }
    }

private:
    std::function<void()> on_destroy_;
};

// Counts the exceptions that reach the reactor's exception handler.
void count_exceptions(Reactor& reactor, int& count) {
    reactor.set_exception_handler([&count](const std::exception_ptr&) { ++count; });
}

}  // namespace

TEST_CASE("a reader is called in each iteration while its fd is readable") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        int calls = 0;
        reactor.add_reader(pair.right.get(), [&] {
            ++calls;
            CHECK(read_one(pair.right.get()));
        });
        CHECK(reactor.run_once(0s) == 0);
        write_all(pair.left.get(), "abc");
        for (int expected = 1; expected <= 3; ++expected) {
            CHECK(reactor.run_once(1s) == 1);
            CHECK(calls == expected);
        }
        CHECK(reactor.run_once(0s) == 0);
        CHECK(calls == 3);
        CHECK(reactor.remove_reader(pair.right.get()));
    }
}

TEST_CASE("a writer is called in each iteration while its fd is writable") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        int calls = 0;
        reactor.add_writer(pair.left.get(), [&] { ++calls; });
        CHECK(reactor.run_once(1s) == 1);
        CHECK(reactor.run_once(1s) == 1);
        CHECK(calls == 2);
        muxio::test::fill_until_blocked(pair.left.get());
        CHECK(reactor.run_once(0s) == 0);
        CHECK(calls == 2);
        CHECK(reactor.remove_writer(pair.left.get()));
    }
}

TEST_CASE("a reader is called when the peer hangs up") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        bool eof = false;
        reactor.add_reader(pair.right.get(), [&] {
            char byte = 0;
            eof = ::read(pair.right.get(), &byte, 1) == 0;
            reactor.remove_reader(pair.right.get());
        });
        pair.left.reset();
        CHECK(reactor.run_once(1s) == 1);
        CHECK(eof);
    }
}

TEST_CASE("each of many fds gets its own reader in one iteration") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        std::vector<SocketPair> pairs(40);
        std::vector<int> calls(pairs.size(), 0);
        for (std::size_t i = 0; i < pairs.size(); ++i) {
            reactor.add_reader(pairs[i].right.get(), [&, i] {
                ++calls[i];
                muxio::test::drain(pairs[i].right.get());
            });
            write_all(pairs[i].left.get(), "x");
        }
        CHECK(reactor.run_once(1s) == pairs.size());
        CHECK(calls == std::vector<int>(pairs.size(), 1));
        for (const SocketPair& pair : pairs) {
            CHECK(reactor.remove_reader(pair.right.get()));
        }
    }
}

TEST_CASE("add_reader again replaces the reader and destroys the old one") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        std::atomic<int> old_destroyed{0};
        std::vector<std::string> calls;
        reactor.add_reader(pair.right.get(), [&, tracked = Tracked{old_destroyed}] { calls.emplace_back("old"); });
        reactor.add_reader(pair.right.get(), [&] {
            calls.emplace_back("new");
            muxio::test::drain(pair.right.get());
        });
        CHECK(old_destroyed == 1);
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK(calls == std::vector<std::string>{"new"});
        CHECK(reactor.remove_reader(pair.right.get()));
        CHECK_FALSE(reactor.remove_reader(pair.right.get()));
    }
}

TEST_CASE("add_writer again replaces the writer and keeps the reader") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        std::atomic<int> old_destroyed{0};
        std::vector<std::string> calls;
        reactor.add_reader(pair.left.get(), [&] {
            calls.emplace_back("reader");
            muxio::test::drain(pair.left.get());
        });
        reactor.add_writer(pair.left.get(), [&, tracked = Tracked{old_destroyed}] { calls.emplace_back("old"); });
        reactor.add_writer(pair.left.get(), [&] { calls.emplace_back("new"); });
        CHECK(old_destroyed == 1);
        write_all(pair.right.get(), "x");
        CHECK(reactor.run_once(1s) == 2);
        CHECK(calls == std::vector<std::string>{"reader", "new"});
        CHECK(reactor.remove_writer(pair.left.get()));
        CHECK(reactor.remove_reader(pair.left.get()));
    }
}

TEST_CASE("remove_reader and remove_writer return whether something was removed") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        const int fd = pair.left.get();
        CHECK_FALSE(reactor.remove_reader(fd));
        CHECK_FALSE(reactor.remove_writer(fd));
        CHECK_FALSE(reactor.remove_reader(-1));
        CHECK_FALSE(reactor.remove_writer(-1));
        reactor.add_reader(fd, [] {});
        CHECK_FALSE(reactor.remove_writer(fd));
        CHECK(reactor.remove_reader(fd));
        CHECK_FALSE(reactor.remove_reader(fd));
        reactor.add_writer(fd, [] {});
        CHECK_FALSE(reactor.remove_reader(fd));
        CHECK(reactor.remove_writer(fd));
        CHECK_FALSE(reactor.remove_writer(fd));
    }
}

TEST_CASE("has_reader and has_writer tell which sides of an fd have a callback") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(selector) {
        Reactor reactor{with_selector(selector)};
        SocketPair pair;
        const int fd = pair.left.get();
        CHECK_FALSE(reactor.has_reader(fd));
        CHECK_FALSE(reactor.has_writer(fd));
        reactor.add_reader(fd, [] {});
        CHECK(reactor.has_reader(fd));
        CHECK_FALSE(reactor.has_writer(fd));
        reactor.add_writer(fd, [] {});
        CHECK(reactor.has_writer(fd));
        reactor.remove_reader(fd);
        CHECK_FALSE(reactor.has_reader(fd));
        CHECK(reactor.has_writer(fd));
        CHECK_FALSE(reactor.has_reader(-1));
        reactor.close();
        CHECK_FALSE(reactor.has_writer(fd));
    }
}

TEST_CASE("removing one side keeps the other side of the fd") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        const int fd = pair.left.get();
        int reads = 0;
        int writes = 0;
        write_all(pair.right.get(), "x");
        reactor.add_reader(fd, [&] { ++reads; });
        reactor.add_writer(fd, [&] { ++writes; });
        CHECK(reactor.run_once(1s) == 2);
        CHECK(reactor.remove_reader(fd));
        CHECK(reactor.run_once(1s) == 1);
        CHECK(reads == 1);
        CHECK(writes == 2);
        reactor.add_reader(fd, [&] { ++reads; });
        CHECK(reactor.remove_writer(fd));
        CHECK(reactor.run_once(1s) == 1);
        CHECK(reads == 2);
        CHECK(writes == 2);
        CHECK(reactor.remove_reader(fd));
    }
}

TEST_CASE("the fd is unregistered once it has neither reader nor writer") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        const int number = pair.left.get();
        reactor.add_reader(number, [] {});
        reactor.add_writer(number, [] {});
        CHECK(reactor.remove_reader(number));
        CHECK(reactor.remove_writer(number));
        // A closed fd still registered would make select(2) fail with EBADF,
        // and epoll would refuse to modify a number it no longer watches.
        pair.left.reset();
        CHECK_NOTHROW(reactor.run_once(0s));
        Pipe pipe;
        UniqueFd reused{::dup2(pipe.read_end.get(), number)};
        REQUIRE(reused.get() == number);
        int calls = 0;
        CHECK_NOTHROW(reactor.add_reader(number, [&] { ++calls; }));
        write_all(pipe.write_end.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK(calls == 1);
        CHECK(reactor.remove_reader(number));
    }
}

TEST_CASE("remove_reader works after the fd was closed") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        const int fd = pair.left.get();
        SUBCASE("reader only") {
            reactor.add_reader(fd, [] {});
            pair.left.reset();
            CHECK(reactor.remove_reader(fd));
            CHECK_FALSE(reactor.remove_reader(fd));
        }
        SUBCASE("reader and writer") {
            // Only the side removed goes (registration_test.cpp has the rest
            // of the contract).
            std::atomic<int> writer_destroyed{0};
            reactor.add_reader(fd, [] {});
            reactor.add_writer(fd, [tracked = Tracked{writer_destroyed}] {});
            pair.left.reset();
            CHECK(reactor.remove_reader(fd));
            CHECK(reactor.has_writer(fd));
            CHECK(writer_destroyed == 0);
            CHECK(reactor.remove_writer(fd));
            CHECK(writer_destroyed == 1);
        }
        CHECK_NOTHROW(reactor.run_once(0s));
    }
}

TEST_CASE("add_reader refuses a negative fd and the reactor's own descriptor") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        const std::vector<int> before = muxio::reactor_test::open_fds();
        Reactor reactor{with_selector(name)};
        const int wake_fd = muxio::reactor_test::find_new_eventfd(before);
        CHECK_THROWS_AS(reactor.add_reader(-1, [] {}), std::invalid_argument);
        CHECK_THROWS_AS(reactor.add_writer(-3, [] {}), std::invalid_argument);
        CHECK_THROWS_AS(reactor.add_reader(wake_fd, [] {}), std::invalid_argument);
        CHECK_FALSE(reactor.remove_reader(wake_fd));
        // Still wakes up: the eventfd stayed the reactor's.
        bool ran = false;
        reactor.call_soon_threadsafe([&] { ran = true; });
        CHECK(reactor.run_once(1s) == 1);
        CHECK(ran);
    }
}

TEST_CASE("a reader removing itself is not called again and lives until it returns") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        std::atomic<int> destroyed{0};
        int calls = 0;
        int destroyed_inside = -1;
        std::string seen;
        reactor.add_reader(pair.right.get(), [&, tracked = Tracked{destroyed}, text = std::string(100, 'q')] {
            ++calls;
            CHECK(reactor.remove_reader(pair.right.get()));
            destroyed_inside = destroyed;
            seen = text;  // its own captures are still alive
        });
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK(destroyed_inside == 0);
        CHECK(seen == std::string(100, 'q'));
        CHECK(destroyed == 1);
        CHECK(reactor.run_once(0s) == 0);
        CHECK(calls == 1);
    }
}

TEST_CASE("a reader replacing itself finishes and the new reader runs next iteration") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        std::atomic<int> destroyed{0};
        std::vector<std::string> calls;
        int destroyed_inside = -1;
        std::string seen;
        reactor.add_reader(pair.right.get(), [&, tracked = Tracked{destroyed}, text = std::string(100, 'q')] {
            calls.emplace_back("old");
            reactor.add_reader(pair.right.get(), [&] {
                calls.emplace_back("new");
                muxio::test::drain(pair.right.get());
            });
            destroyed_inside = destroyed;
            seen = text;
        });
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK(destroyed_inside == 0);
        CHECK(seen == std::string(100, 'q'));
        CHECK(destroyed == 1);
        CHECK(reactor.run_once(1s) == 1);
        CHECK(calls == std::vector<std::string>{"old", "new"});
        CHECK(reactor.remove_reader(pair.right.get()));
    }
}

TEST_CASE("a reader removing and adding itself again is a new registration") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        std::vector<std::string> calls;
        reactor.add_reader(pair.right.get(), [&] {
            calls.emplace_back("old");
            CHECK(reactor.remove_reader(pair.right.get()));
            reactor.add_reader(pair.right.get(), [&] {
                calls.emplace_back("new");
                muxio::test::drain(pair.right.get());
            });
        });
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK(reactor.run_once(1s) == 1);
        CHECK(reactor.run_once(0s) == 0);
        CHECK(calls == std::vector<std::string>{"old", "new"});
        CHECK(reactor.remove_reader(pair.right.get()));
    }
}

TEST_CASE("a reader adding a writer to its own fd") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        const int fd = pair.right.get();
        std::vector<std::string> calls;
        reactor.add_reader(fd, [&] {
            calls.emplace_back("reader");
            muxio::test::drain(fd);
            reactor.add_writer(fd, [&] {
                calls.emplace_back("writer");
                reactor.remove_writer(fd);
            });
        });
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK(reactor.run_once(1s) == 1);
        CHECK(reactor.run_once(0s) == 0);
        CHECK(calls == std::vector<std::string>{"reader", "writer"});
        CHECK(reactor.remove_reader(fd));
        CHECK_FALSE(reactor.remove_writer(fd));
    }
}

TEST_CASE("a reader removing the writer of its own fd prevents that writer in the iteration") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        const int fd = pair.right.get();
        int reads = 0;
        int writes = 0;
        std::atomic<int> writer_destroyed{0};
        reactor.add_writer(fd, [&, tracked = Tracked{writer_destroyed}] { ++writes; });
        reactor.add_reader(fd, [&] {
            ++reads;
            muxio::test::drain(fd);
            CHECK(reactor.remove_writer(fd));
        });
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK(reads == 1);
        CHECK(writes == 0);
        CHECK(writer_destroyed == 1);
        CHECK(reactor.remove_reader(fd));
    }
}

TEST_CASE("a callback removing another ready fd prevents its callback in the iteration") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair a;
        SocketPair b;
        int a_reads = 0;
        int b_reads = 0;
        int b_writes = 0;
        // b also has a writer, so removing its reader modifies the
        // registration instead of removing it.
        reactor.add_writer(b.right.get(), [&] { ++b_writes; });
        reactor.add_reader(a.right.get(), [&] {
            ++a_reads;
            muxio::test::drain(a.right.get());
            reactor.remove_reader(b.right.get());
        });
        reactor.add_reader(b.right.get(), [&] {
            ++b_reads;
            muxio::test::drain(b.right.get());
            reactor.remove_reader(a.right.get());
        });
        write_all(a.left.get(), "x");
        write_all(b.left.get(), "x");
        reactor.run_once(1s);
        CHECK(a_reads + b_reads == 1);
        CHECK(b_writes == 1);
        reactor.run_once(1s);
        CHECK(a_reads + b_reads == 1);
        CHECK(b_writes == 2);
        reactor.remove_reader(a.right.get());
        reactor.remove_reader(b.right.get());
        CHECK(reactor.remove_writer(b.right.get()));
    }
}

TEST_CASE("a callback closing a ready fd and reusing its number gets no stale event") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        std::array<SocketPair, 2> pairs;
        std::array<UniqueFd, 2> replacements;
        Pipe quiet;  // never written: its read end is never readable
        int original_calls = 0;
        int replacement_calls = 0;
        for (std::size_t i = 0; i < 2; ++i) {
            write_all(pairs[i].left.get(), "x");
            reactor.add_reader(pairs[i].right.get(), [&, i] {
                ++original_calls;
                muxio::test::drain(pairs[i].right.get());
                // Close the other one and put a quiet pipe under its number.
                SocketPair& other = pairs[1 - i];
                const int number = other.right.get();
                CHECK(reactor.remove_reader(number));
                other.right.reset();
                replacements[1 - i].reset(::dup2(quiet.read_end.get(), number));
                REQUIRE(replacements[1 - i].get() == number);
                reactor.add_reader(number, [&] { ++replacement_calls; });
            });
        }
        reactor.run_once(1s);
        CHECK(original_calls == 1);
        CHECK(replacement_calls == 0);
        CHECK(reactor.run_once(0s) == 0);
        CHECK(replacement_calls == 0);
        for (std::size_t i = 0; i < 2; ++i) {
            reactor.remove_reader(pairs[i].right.get());
            reactor.remove_reader(replacements[i].get());
        }
    }
}

TEST_CASE("a reader removing itself and closing its fd") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        int calls = 0;
        reactor.add_reader(pair.right.get(), [&] {
            ++calls;
            CHECK(reactor.remove_reader(pair.right.get()));
            pair.right.reset();
        });
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK_NOTHROW(reactor.run_once(0s));
        CHECK(calls == 1);
    }
}

TEST_CASE("a reader closing its fd before removing itself") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        int calls = 0;
        reactor.add_reader(pair.right.get(), [&] {
            ++calls;
            const int fd = pair.right.get();
            pair.right.reset();
            CHECK(reactor.remove_reader(fd));
        });
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK_NOTHROW(reactor.run_once(0s));
        CHECK(calls == 1);
    }
}

TEST_CASE("an exception escaping a reader keeps it registered") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        int exceptions = 0;
        count_exceptions(reactor, exceptions);
        int calls = 0;
        reactor.add_reader(pair.right.get(), [&] {
            ++calls;
            throw std::runtime_error{"reader failed"};
        });
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK(reactor.run_once(1s) == 1);
        CHECK(calls == 2);
        CHECK(exceptions == 2);
        CHECK(reactor.remove_reader(pair.right.get()));
    }
}

TEST_CASE("replacing a reader whose captures remove the fd on destruction") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        const int fd = pair.right.get();
        std::atomic<int> new_destroyed{0};
        int new_calls = 0;
        // An RAII guard in the old reader removes the fd when it dies; the
        // reactor must be consistent when that happens, not half-way through
        // installing the new reader.
        reactor.add_reader(fd, [guard = OnDestroy{[&] { reactor.remove_reader(fd); }}] {});
        reactor.add_reader(fd, [&, tracked = Tracked{new_destroyed}] { ++new_calls; });
        CHECK(new_destroyed == 1);
        CHECK_FALSE(reactor.remove_reader(fd));
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(0s) == 0);
        CHECK(new_calls == 0);
        reactor.close();
        CHECK(new_destroyed == 1);
    }
}

TEST_CASE("removing a reader whose captures remove the writer on destruction") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        const int fd = pair.left.get();
        int exceptions = 0;
        count_exceptions(reactor, exceptions);
        std::atomic<int> writer_destroyed{0};
        int writes = 0;
        reactor.add_writer(fd, [&, tracked = Tracked{writer_destroyed}] { ++writes; });
        reactor.add_reader(fd, [guard = OnDestroy{[&] { reactor.remove_writer(fd); }}] {});
        CHECK(reactor.remove_reader(fd));
        CHECK(writer_destroyed == 1);
        CHECK_FALSE(reactor.remove_writer(fd));
        CHECK_FALSE(reactor.remove_reader(fd));
        CHECK(reactor.run_once(0s) == 0);
        CHECK(writes == 0);
        CHECK(exceptions == 0);
    }
}

TEST_CASE("a kernel error in select propagates from run_once and leaves the reactor usable") {
    FdLeakCheck leak_check;
    const auto& usable = muxio::reactor_test::usable_selectors();
    if (std::find(usable.begin(), usable.end(), "poll") == usable.end()) {
        return;
    }
    Reactor reactor{with_selector("poll")};
    std::vector<SocketPair> pairs(4);
    for (const SocketPair& pair : pairs) {
        reactor.add_reader(pair.left.get(), [] {});
    }
    // UBSan's first check of a polymorphic type needs a descriptor: the
    // types of the error path are met once while descriptors are to be had.
    try {
        muxio::throw_system_error(EINVAL, fmt::format("{} wait", "poll"));
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::errc::invalid_argument);
    }
    CHECK(reactor.run_once(0s) == 0);
    {
        // poll(2) refuses more entries than RLIMIT_NOFILE (EINVAL); the
        // reactor watches five descriptors, its own included.
        rlimit saved{};
        REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
        rlimit lowered = saved;
        lowered.rlim_cur = 2;
        REQUIRE(::setrlimit(RLIMIT_NOFILE, &lowered) == 0);
        bool threw = false;
        try {
            reactor.run_once(0s);
        } catch (const std::system_error&) {
            threw = true;
        }
        REQUIRE(::setrlimit(RLIMIT_NOFILE, &saved) == 0);
        CHECK(threw);
    }
    CHECK_FALSE(reactor.is_running());
    bool ran = false;
    reactor.call_soon([&] { ran = true; });
    CHECK(reactor.run_once(0s) == 1);
    CHECK(ran);
    for (const SocketPair& pair : pairs) {
        CHECK(reactor.remove_reader(pair.left.get()));
    }
}

TEST_CASE("a reader cancels a timer due in the same iteration") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        muxio::reactor_test::ManualClock clock;
        Reactor reactor{clock.options(name)};
        SocketPair pair;
        bool timer_ran = false;
        muxio::TimerHandle timer = reactor.call_later(1ms, [&] { timer_ran = true; });
        std::optional<bool> cancelled;
        reactor.add_reader(pair.right.get(), [&] {
            muxio::test::drain(pair.right.get());
            cancelled = timer.cancel();
        });
        write_all(pair.left.get(), "x");
        clock.advance(1ms);
        CHECK(reactor.run_once(0s) == 1);
        CHECK(cancelled == true);
        CHECK_FALSE(timer_ran);
        CHECK(reactor.remove_reader(pair.right.get()));
    }
}

TEST_CASE("a timer callback adds and removes readers") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        muxio::reactor_test::ManualClock clock;
        Reactor reactor{clock.options(name)};
        SocketPair a;
        SocketPair b;
        int a_reads = 0;
        int b_reads = 0;
        reactor.add_reader(a.right.get(), [&] {
            ++a_reads;
            muxio::test::drain(a.right.get());
        });
        reactor.call_later(1ms, [&] {
            CHECK(reactor.remove_reader(a.right.get()));
            reactor.add_reader(b.right.get(), [&] {
                ++b_reads;
                muxio::test::drain(b.right.get());
            });
        });
        clock.advance(1ms);
        CHECK(reactor.run_once(0s) == 1);
        write_all(a.left.get(), "x");
        write_all(b.left.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK(a_reads == 0);
        CHECK(b_reads == 1);
        CHECK(reactor.remove_reader(b.right.get()));
    }
}

TEST_CASE("a reader that closes its fd and removes the writer is put back and removed later") {
    // The removal's modify meets a closed fd: the key stays, with the reader
    // only, and the reader goes back into it after it returns.
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        std::atomic<int> destroyed{0};
        int calls = 0;
        const int fd = pair.right.get();
        reactor.add_writer(fd, [] {});
        reactor.add_reader(fd, [&, tracked = Tracked{destroyed}] {
            ++calls;
            pair.right.reset();
            CHECK(reactor.remove_writer(fd));
        });
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(1s) >= 1);
        CHECK(calls == 1);
        CHECK(reactor.has_reader(fd));
        CHECK(destroyed == 0);
        CHECK(reactor.remove_reader(fd));
        CHECK(destroyed == 1);
        CHECK_NOTHROW(reactor.run_once(0s));
        CHECK(calls == 1);
    }
}

TEST_CASE("a reader that adds a writer to its own fd keeps running next iteration") {
    // Touching its own fd's other side makes the reactor look the key up
    // again before putting the reader back: the reader must survive it.
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        int reads = 0;
        int writes = 0;
        const int fd = pair.right.get();
        reactor.add_reader(fd, [&] {
            ++reads;
            if (!reactor.has_writer(fd)) {
                reactor.add_writer(fd, [&] {
                    ++writes;
                    reactor.remove_writer(fd);
                });
            }
        });
        write_all(pair.left.get(), "x");
        CHECK(reactor.run_once(1s) == 1);
        CHECK(reads == 1);
        CHECK(reactor.run_once(1s) == 2);
        CHECK(reads == 2);
        CHECK(writes == 1);
        CHECK(reactor.has_reader(fd));
        CHECK_FALSE(reactor.has_writer(fd));
        CHECK(reactor.remove_reader(fd));
    }
}

TEST_CASE("empty callbacks are refused with invalid_argument") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SocketPair pair;
    CHECK_THROWS_AS(reactor.add_reader(pair.right.get(), muxio::Callback{}), std::invalid_argument);
    CHECK_THROWS_AS(reactor.add_writer(pair.right.get(), muxio::Callback{}), std::invalid_argument);
    CHECK_FALSE(reactor.has_reader(pair.right.get()));
    CHECK_THROWS_AS(reactor.call_soon(muxio::Callback{}), std::invalid_argument);
    CHECK_THROWS_AS(reactor.call_later(1s, muxio::Callback{}), std::invalid_argument);
    CHECK_THROWS_AS(reactor.call_at(reactor.time(), muxio::Callback{}), std::invalid_argument);
    CHECK_THROWS_AS(reactor.call_soon_threadsafe(muxio::Callback{}), std::invalid_argument);
    CHECK_THROWS_AS(reactor.add_signal_handler(SIGUSR2, muxio::Callback{}), std::invalid_argument);
    CHECK(reactor.scheduled_count() == 0);
}
