// when_all, when_any and TaskGroup: results, first failure cancelling the
// siblings, losers cancelled and awaited, children not outliving the group.
#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <tuple>
#include <type_traits>
#include <variant>
#include <vector>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "muxio/task_group.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;

namespace {

Task<int> value_after(Reactor& reactor, Reactor::Duration delay, int value, Live /*held*/) {
    co_await muxio::sleep_for(reactor, delay);
    co_return value;
}

Task<int> fail_after(Reactor& reactor, Reactor::Duration delay) {
    co_await muxio::sleep_for(reactor, delay);
    throw std::runtime_error("child failed");
}

// Sleeps for an hour unless cancelled; counts how it ended.
Task<void> sleeper(Reactor& reactor, int& cancelled, Live /*held*/) {
    try {
        co_await muxio::sleep_for(reactor, 1h);
    } catch (const muxio::Cancelled&) {
        ++cancelled;
        throw;
    }
}

Task<int> sleeper_int(Reactor& reactor, int& cancelled) {
    co_await sleeper(reactor, cancelled, Live{});
    co_return 0;
}

}  // namespace

TEST_CASE("when_all returns every value in order") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto result = muxio::run_until_complete(
        reactor, muxio::when_all(value_after(reactor, 3ms, 1, Live{}), value_after(reactor, 1ms, 2, Live{}),
                                 [](Reactor& loop) -> Task<void> { co_await muxio::yield(loop); }(reactor)));
    CHECK(std::get<0>(result) == 1);
    CHECK(std::get<1>(result) == 2);
    static_assert(std::is_same_v<std::tuple_element_t<2, decltype(result)>, std::monostate>);
}

TEST_CASE("when_all cancels the others at the first failure and rethrows it") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    int cancelled = 0;
    CHECK_THROWS_WITH_AS(
        muxio::run_until_complete(reactor, muxio::when_all(sleeper_int(reactor, cancelled), fail_after(reactor, 1ms),
                                                           sleeper_int(reactor, cancelled))),
        "child failed", std::runtime_error);
    CHECK(cancelled == 2);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("when_any returns the first to end and cancels and awaits the losers") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    int cancelled = 0;
    const auto result = muxio::run_until_complete(
        reactor, muxio::when_any(sleeper_int(reactor, cancelled), value_after(reactor, 1ms, 5, Live{}),
                                 sleeper_int(reactor, cancelled)));
    CHECK(result.index == 1);
    CHECK(result.value == 5);
    CHECK(cancelled == 2);  // both losers ended before when_any returned
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("when_all and when_any refuse an empty task") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    CHECK_THROWS_AS(
        muxio::run_until_complete(reactor, muxio::when_all(value_after(reactor, 1ms, 1, Live{}), Task<int>{})),
        std::logic_error);
    CHECK_THROWS_AS(
        muxio::run_until_complete(reactor, muxio::when_any(Task<int>{}, value_after(reactor, 1ms, 1, Live{}))),
        std::logic_error);
}

TEST_CASE("when_any rethrows the exception of the first to end") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int cancelled = 0;
    CHECK_THROWS_WITH_AS(
        muxio::run_until_complete(reactor, muxio::when_any(fail_after(reactor, 1ms), sleeper_int(reactor, cancelled))),
        "child failed", std::runtime_error);
    CHECK(cancelled == 1);
}

TEST_CASE("a task group waits for all its children") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::vector<int> ended;
    auto parent = [](Reactor& loop, std::vector<int>& order) -> Task<void> {
        muxio::TaskGroup group;
        for (int i = 3; i > 0; --i) {
            group.spawn([](Reactor& l, int id, std::vector<int>& o) -> Task<void> {
                co_await muxio::sleep_for(l, std::chrono::milliseconds{id});
                o.push_back(id);
            }(loop, i, order));
        }
        CHECK(group.running() == 3);
        co_await group.join();
        CHECK(group.running() == 0);
    };
    muxio::run_until_complete(reactor, parent(reactor, ended));
    CHECK(ended == std::vector<int>{1, 2, 3});
}

TEST_CASE("the first failure in a task group cancels its siblings and reaches the awaiter") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    int cancelled = 0;
    auto parent = [](Reactor& loop, int& count) -> Task<void> {
        muxio::TaskGroup group;
        group.spawn(sleeper(loop, count, Live{}));
        group.spawn(fail_after(loop, 1ms));
        group.spawn(sleeper(loop, count, Live{}));
        co_await group.join();
    };
    CHECK_THROWS_WITH_AS(muxio::run_until_complete(reactor, parent(reactor, cancelled)), "child failed",
                         std::runtime_error);
    CHECK(cancelled == 2);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("children of a task group do not outlive it") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    int cancelled = 0;
    auto parent = [](Reactor& loop, int fd, int& count) -> Task<void> {
        muxio::TaskGroup group;
        group.spawn(sleeper(loop, count, Live{}));
        group.spawn([](Reactor& l, int f) -> Task<void> { co_await muxio::readable(l, f); }(loop, fd));
        co_await muxio::yield(loop);
        throw std::runtime_error("parent failed");  // unwinds past the group without joining
    };
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, parent(reactor, pair.left.get(), cancelled)),
                    std::runtime_error);
    CHECK(cancelled == 0);  // destroyed, not resumed
    CHECK(Live::count() == 0);
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("cancelling the task awaiting a group cancels its children") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::stop_source source;
    int cancelled = 0;
    auto parent = [](Reactor& loop, int& count) -> Task<void> {
        muxio::TaskGroup group;
        group.spawn(sleeper(loop, count, Live{}));
        group.spawn(sleeper(loop, count, Live{}));
        co_await group.join();
    };
    reactor.call_later(1ms, [&] { source.request_stop(); });
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, parent(reactor, cancelled), source.get_token()),
                    muxio::Cancelled);
    CHECK(cancelled == 2);
}

TEST_CASE("a task group frees each child's frame as it ends") {
    // A server's group lives as long as the server: ended children must not
    // pile up. Counted with Live: a frame alive holds one.
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto child = [](Reactor& loop, int rounds, Live /*held*/) -> Task<void> {
        for (int i = 0; i < rounds; ++i) {
            co_await muxio::yield(loop);
        }
    };
    auto parent = [&child](Reactor& loop) -> Task<void> {
        muxio::TaskGroup group;
        const int before = Live::count();
        for (int wave = 0; wave < 50; ++wave) {
            for (int i = 0; i < 20; ++i) {
                group.spawn(child(loop, 1 + i % 3, Live{}));
            }
            group.spawn(child(loop, 0, Live{}));  // ends inside spawn()
            for (int i = 0; i < 4; ++i) {
                co_await muxio::yield(loop);
            }
            CHECK(group.running() == 0);
            CHECK(Live::count() == before);  // every ended child's frame is gone
        }
        co_await group.join();
    };
    muxio::run_until_complete(reactor, parent(reactor));
}
