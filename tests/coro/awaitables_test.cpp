// The reactor awaits: readiness on socketpairs, sleeps, yield, and what a
// wait leaves registered (nothing, once it resumed).
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;
using muxio::test::Stopwatch;
using muxio::test::write_all;

namespace {

Task<char> read_byte(Reactor& reactor, int fd) {
    co_await muxio::readable(reactor, fd);
    char byte = 0;
    REQUIRE(::read(fd, &byte, 1) == 1);
    co_return byte;
}

Task<void> record_after(Reactor& reactor, Reactor::Duration delay, std::vector<int>& order, int id) {
    co_await muxio::sleep_for(reactor, delay);
    order.push_back(id);
}

Task<void> yielding(Reactor& reactor, std::vector<int>& order, int id, int rounds) {
    for (int i = 0; i < rounds; ++i) {
        order.push_back(id);
        co_await muxio::yield(reactor);
    }
}

}  // namespace

TEST_CASE("readable resumes once data arrives and leaves no reader behind") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    reactor.call_later(1ms, [&] { write_all(pair.right.get(), "x"); });
    CHECK(muxio::run_until_complete(reactor, read_byte(reactor, pair.left.get())) == 'x');
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
}

TEST_CASE("readable on an fd with data already waiting resumes in the next iteration") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SocketPair pair;
    write_all(pair.right.get(), "y");
    CHECK(muxio::run_until_complete(reactor, read_byte(reactor, pair.left.get())) == 'y');
}

TEST_CASE("writable resumes when the fd has room and leaves no writer behind") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SocketPair pair;
    muxio::test::fill_until_blocked(pair.left.get());
    reactor.call_later(1ms, [&] { muxio::test::drain(pair.right.get()); });
    muxio::run_until_complete(reactor, [](Reactor& loop, int fd) -> Task<void> {
        co_await muxio::writable(loop, fd);
    }(reactor, pair.left.get()));
    CHECK_FALSE(reactor.has_writer(pair.left.get()));
}

TEST_CASE("two tasks reading the same fd is an error and reading with writing is fine") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    auto second_reader = [](Reactor& loop, int fd) -> Task<std::string> {
        try {
            co_await muxio::readable(loop, fd);
        } catch (const std::logic_error& e) {
            co_return e.what();
        }
        co_return "no error";
    };
    auto both = [&](Reactor& loop, int fd) -> Task<std::string> {
        muxio::spawn(loop, read_byte(loop, fd));
        co_await muxio::yield(loop);  // the spawned reader is waiting now
        CHECK(loop.has_reader(fd));
        std::string error = co_await second_reader(loop, fd);
        co_await muxio::writable(loop, fd);  // a writer alongside the reader
        write_all(pair.right.get(), "z");    // lets the spawned reader finish
        co_return error;
    };
    const std::string error = muxio::run_until_complete(reactor, both(reactor, pair.left.get()));
    CHECK(error.find("already has a reader") != std::string::npos);
    for (int i = 0; i < 100 && reactor.has_reader(pair.left.get()); ++i) {
        reactor.run_once(1s);
    }
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
}

TEST_CASE("sleep_for waits at least its delay") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const Stopwatch watch;
    muxio::run_until_complete(reactor,
                              [](Reactor& loop) -> Task<void> { co_await muxio::sleep_for(loop, 20ms); }(reactor));
    CHECK(watch.elapsed() >= 20ms);
    CHECK(watch.elapsed() < 5s);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("sleeps resume in deadline order and equal deadlines in await order") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::vector<int> order;
    muxio::spawn(reactor, record_after(reactor, 30ms, order, 3));
    muxio::spawn(reactor, record_after(reactor, 10ms, order, 1));
    muxio::spawn(reactor, record_after(reactor, 20ms, order, 2));
    muxio::spawn(reactor, record_after(reactor, 0ms, order, 0));
    muxio::spawn(reactor, record_after(reactor, 0ms, order, 10));
    for (int i = 0; i < 100 && order.size() < 5; ++i) {
        reactor.run_once(1s);
    }
    CHECK(order == std::vector<int>{0, 10, 1, 2, 3});
}

TEST_CASE("sleep_until a past instant resumes in the next iteration") {
    FdLeakCheck leak_check;
    Reactor reactor;
    muxio::run_until_complete(reactor, [](Reactor& loop) -> Task<void> {
        co_await muxio::sleep_until(loop, loop.time() - 1s);
        co_await muxio::sleep_for(loop, -5s);
    }(reactor));
}

TEST_CASE("yield lets other tasks run between iterations") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::vector<int> order;
    muxio::spawn(reactor, yielding(reactor, order, 1, 3));
    muxio::spawn(reactor, yielding(reactor, order, 2, 3));
    for (int i = 0; i < 10 && order.size() < 6; ++i) {
        reactor.run_once(1s);
    }
    CHECK(order == std::vector<int>{1, 2, 1, 2, 1, 2});
    reactor.run_once(0s);  // the last yields return and the tasks end
}

TEST_CASE("a ping-pong over a socketpair makes no allocation per await") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SocketPair pair;
    constexpr int rounds = 200;
    auto echo = [](Reactor& loop, int fd, int count) -> Task<void> {
        for (int i = 0; i < count; ++i) {
            const char byte = co_await read_byte(loop, fd);
            co_await muxio::writable(loop, fd);
            REQUIRE(::write(fd, &byte, 1) == 1);
        }
    };
    auto ping = [](Reactor& loop, int fd, int count, std::size_t& allocations) -> Task<void> {
        std::size_t before = 0;
        for (int i = 0; i < count; ++i) {
            if (i == count / 2) {
                before = muxio::test::allocation_count();
            }
            REQUIRE(::write(fd, "p", 1) == 1);
            co_await muxio::readable(loop, fd);
            char byte = 0;
            REQUIRE(::read(fd, &byte, 1) == 1);
        }
        allocations = muxio::test::allocation_count() - before;
    };
    std::size_t allocations = 0;
    muxio::spawn(reactor, echo(reactor, pair.right.get(), rounds));
    muxio::run_until_complete(reactor, ping(reactor, pair.left.get(), rounds, allocations));
    reactor.run_once(0s);
    if (muxio::test::counts_allocations) {
        // The echo's read_byte() frames: one per round, nothing per await.
        CHECK(allocations <= static_cast<std::size_t>(rounds / 2 + 2));
    }
}
