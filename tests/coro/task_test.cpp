// Task<T> on its own and run on a reactor: values, exceptions, laziness,
// moves, frames freed whatever state they are destroyed in, deep chains,
// spawn() and run_until_complete().
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "support/support.hpp"

using muxio::Reactor;
using muxio::Task;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;

namespace {

Task<int> answer(Live /*held*/) {
    co_return 42;
}

Task<std::string> concat(std::string a, std::string b) {
    co_return a + b;
}

Task<void> set_flag(bool& flag) {
    flag = true;
    co_return;
}

Task<int> fail(Live /*held*/) {
    throw std::runtime_error("task failed");
    co_return 0;
}

Task<int> add_one(Task<int> inner) {
    co_return co_await std::move(inner) + 1;
}

Task<int> immediate(int value) {
    co_return value;
}

Task<long> sum_of_sequential_awaits(int count) {
    long sum = 0;
    for (int i = 0; i < count; ++i) {
        sum += co_await immediate(1);
    }
    co_return sum;
}

Task<int> nested(int depth) {
    if (depth == 0) {
        co_return 0;
    }
    co_return co_await nested(depth - 1) + 1;
}

Task<void> wait_readable(Reactor& reactor, int fd, Live /*held*/) {
    co_await muxio::readable(reactor, fd);
}

}  // namespace

TEST_CASE("a task returns its value to its awaiter") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    CHECK(muxio::run_until_complete(reactor, answer(Live{})) == 42);
    CHECK(muxio::run_until_complete(reactor, add_one(add_one(answer(Live{})))) == 44);
    CHECK(muxio::run_until_complete(reactor, concat("mu", "xio")) == "muxio");
}

TEST_CASE("a void task runs its body when awaited and not before") {
    FdLeakCheck leak_check;
    Reactor reactor;
    bool flag = false;
    Task<void> task = set_flag(flag);
    CHECK_FALSE(flag);
    CHECK(task.valid());
    CHECK_FALSE(task.done());
    muxio::run_until_complete(reactor, std::move(task));
    CHECK(flag);
}

TEST_CASE("an exception in a task propagates to its awaiter") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    CHECK_THROWS_WITH_AS(muxio::run_until_complete(reactor, fail(Live{})), "task failed", std::runtime_error);
    CHECK_THROWS_WITH_AS(muxio::run_until_complete(reactor, add_one(fail(Live{}))), "task failed", std::runtime_error);
}

TEST_CASE("a moved task keeps its frame and leaves an empty task") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    Task<int> first = answer(Live{});
    Task<int> second = std::move(first);
    CHECK_FALSE(first.valid());  // NOLINT(bugprone-use-after-move): the point of the test
    CHECK(second.valid());
    Task<int> third;
    third = std::move(second);
    CHECK(muxio::run_until_complete(reactor, std::move(third)) == 42);
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, Task<int>{}), std::logic_error);
}

TEST_CASE("destroying an unstarted task frees its frame and what it holds") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    {
        Task<int> task = answer(Live{});
        CHECK(Live::count() == 1);
    }
    CHECK(Live::count() == 0);
}

TEST_CASE("destroying a suspended task frees its frame and removes its reader") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    auto task = std::make_unique<Task<void>>(wait_readable(reactor, pair.left.get(), Live{}));
    // Started by a driver awaiting it; the driver never resumes.
    bool started = false;
    reactor.call_soon([&] {
        auto driver = [](Task<void>& inner, bool& flag) -> Task<void> {
            flag = true;
            co_await inner;
        }(*task, started);
        // Resume the driver by hand: it starts `inner`, which suspends on the reader.
        muxio::detail::TaskAccess::handle(driver).resume();
        CHECK(reactor.has_reader(pair.left.get()));
        task.reset();  // destroyed while suspended
    });
    reactor.run_once(std::chrono::seconds{0});
    CHECK(started);
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
}

TEST_CASE("a million sequential synchronous awaits do not overflow the stack") {
    FdLeakCheck leak_check;
    Reactor reactor;
    CHECK(muxio::run_until_complete(reactor, sum_of_sequential_awaits(1'000'000)) == 1'000'000);
}

TEST_CASE("a chain of a million nested awaits completes without overflowing the stack") {
    FdLeakCheck leak_check;
    Reactor reactor;
    CHECK(muxio::run_until_complete(reactor, nested(1'000'000)) == 1'000'000);
}

TEST_CASE("run_until_complete throws when the reactor stops before the task ends") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    reactor.call_soon([&reactor] { reactor.stop(); });
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, wait_readable(reactor, pair.left.get(), Live{})),
                    std::logic_error);
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("spawn runs a task detached from the next iteration") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    bool flag = false;
    muxio::spawn(reactor, set_flag(flag));
    CHECK_FALSE(flag);
    reactor.run_once(std::chrono::seconds{0});
    CHECK(flag);
    muxio::spawn(reactor, answer(Live{}));
    reactor.run_once(std::chrono::seconds{0});
}

TEST_CASE("an exception escaping a spawned task reaches the exception handler") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::vector<std::string> errors;
    reactor.set_exception_handler([&errors](const std::exception_ptr& error) {
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            errors.emplace_back(e.what());
        }
    });
    muxio::spawn(reactor, fail(Live{}));
    for (int i = 0; i < 10 && errors.empty(); ++i) {
        reactor.run_once(std::chrono::seconds{1});
    }
    REQUIRE(errors.size() == 1);
    CHECK(errors[0] == "task failed");
}

TEST_CASE("a spawned task that never started is freed when the reactor closes") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    muxio::spawn(reactor, answer(Live{}));
    CHECK(Live::count() == 1);
    reactor.close();
    CHECK(Live::count() == 0);
}
