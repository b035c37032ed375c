// TaskGroup's failure policies: cancel() then join() returns, a group that
// keeps the siblings of a failing child, and failures that are reported,
// never dropped.
#include <chrono>
#include <exception>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/error.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "muxio/task_group.hpp"
#include "support/captured_log.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::ChildFailure;
using muxio::Reactor;
using muxio::Task;
using muxio::TaskGroup;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::test::FdLeakCheck;

namespace {

// Sleeps for an hour unless cancelled; counts the cancellations.
Task<void> sleeper(Reactor& reactor, int& cancelled, Live /*held*/) {
    try {
        co_await muxio::sleep_for(reactor, 1h);
    } catch (const muxio::Cancelled&) {
        ++cancelled;
        throw;
    }
}

Task<void> fail_after(Reactor& reactor, Reactor::Duration delay, std::string message, Live /*held*/) {
    co_await muxio::sleep_for(reactor, delay);
    throw std::runtime_error(message);
}

std::string message_of(const std::exception_ptr& failure) {
    try {
        std::rethrow_exception(failure);
    } catch (const std::exception& error) {
        return error.what();
    }
}

}  // namespace

TEST_CASE("cancel() followed by join() returns normally") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    int cancelled = 0;
    auto parent = [](Reactor& loop, int& count) -> Task<std::size_t> {
        TaskGroup group;
        for (int i = 0; i < 3; ++i) {
            group.spawn(sleeper(loop, count, Live{}));
        }
        co_await muxio::yield(loop);
        group.cancel();
        co_await group.join();
        co_return group.failed();
    };
    CHECK(muxio::run_until_complete(reactor, parent(reactor, cancelled)) == 0U);
    CHECK(cancelled == 3);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("cancel() then join() on an isolating group returns normally, children spawned after start cancelled") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    int cancelled = 0;
    auto parent = [](Reactor& loop, int& count) -> Task<void> {
        TaskGroup group{ChildFailure::isolate};
        group.spawn(sleeper(loop, count, Live{}));
        group.cancel();
        group.spawn(sleeper(loop, count, Live{}));
        co_await group.join();
        CHECK(group.failed() == 0U);
    };
    muxio::run_until_complete(reactor, parent(reactor, cancelled));
    CHECK(cancelled == 2);
}

TEST_CASE("a child's real failure after cancel() is still rethrown by join()") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto cleanup_fails = [](Reactor& loop) -> Task<void> {
        try {
            co_await muxio::sleep_for(loop, 1h);
        } catch (const muxio::Cancelled&) {
            throw std::runtime_error("cleanup failed");
        }
    };
    auto parent = [&cleanup_fails](Reactor& loop) -> Task<void> {
        TaskGroup group;
        group.spawn(cleanup_fails(loop));
        co_await muxio::yield(loop);
        group.cancel();
        co_await group.join();
    };
    CHECK_THROWS_WITH_AS(muxio::run_until_complete(reactor, parent(reactor)), "cleanup failed", std::runtime_error);
}

TEST_CASE("an isolating group lets 90 of 100 children complete while 10 fail, each failure reported") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    int completed = 0;
    std::vector<std::string> failures;
    auto child = [](Reactor& loop, int id, int& done, Live /*held*/) -> Task<void> {
        co_await muxio::yield(loop);
        if (id % 10 == 3) {
            throw std::runtime_error("client " + std::to_string(id) + " failed");
        }
        for (int i = 0; i < 3; ++i) {
            co_await muxio::yield(loop);  // still running after its failing siblings ended
        }
        ++done;
    };
    auto parent = [&child](Reactor& loop, int& done, std::vector<std::string>& failed) -> Task<std::size_t> {
        TaskGroup group{ChildFailure::isolate,
                        [&failed](std::exception_ptr failure) { failed.push_back(message_of(failure)); }};
        CHECK(group.policy() == ChildFailure::isolate);
        for (int id = 0; id < 100; ++id) {
            group.spawn(child(loop, id, done, Live{}));
        }
        co_await group.join();  // does not rethrow
        co_return group.failed();
    };
    CHECK(muxio::run_until_complete(reactor, parent(reactor, completed, failures)) == 10U);
    CHECK(completed == 90);
    REQUIRE(failures.size() == 10U);
    CHECK(failures.front() == "client 3 failed");
    CHECK(failures.back() == "client 93 failed");
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("an isolating group without a handler logs each failure through the muxio logger") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    muxio::test::CapturedLog log{spdlog::level::err};
    auto parent = [](Reactor& loop) -> Task<void> {
        TaskGroup group{ChildFailure::isolate};
        group.spawn(fail_after(loop, 1ms, "first client failed", Live{}));
        group.spawn(fail_after(loop, 2ms, "second client failed", Live{}));
        group.spawn(muxio::sleep_for(loop, 5ms));
        co_await group.join();
        CHECK(group.failed() == 2U);
    };
    muxio::run_until_complete(reactor, parent(reactor));
    const std::string text = log.text();
    CHECK(text.find("TaskGroup") != std::string::npos);
    CHECK(text.find("first client failed") != std::string::npos);
    CHECK(text.find("second client failed") != std::string::npos);
}

TEST_CASE("under cancel_group the failures after the first go to the handler, not nowhere") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::vector<std::string> reported;
    auto cleanup_fails = [](Reactor& loop) -> Task<void> {
        try {
            co_await muxio::sleep_for(loop, 1h);
        } catch (const muxio::Cancelled&) {
            throw std::runtime_error("cleanup failed");
        }
    };
    auto parent = [&cleanup_fails](Reactor& loop, std::vector<std::string>& seen) -> Task<void> {
        TaskGroup group{ChildFailure::cancel_group,
                        [&seen](std::exception_ptr failure) { seen.push_back(message_of(failure)); }};
        group.spawn(cleanup_fails(loop));
        group.spawn(fail_after(loop, 1ms, "first failure", Live{}));
        co_await group.join();
    };
    CHECK_THROWS_WITH_AS(muxio::run_until_complete(reactor, parent(reactor, reported)), "first failure",
                         std::runtime_error);
    CHECK(reported == std::vector<std::string>{"cleanup failed"});
}

TEST_CASE("a task group destroyed before joining a failure logs it") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    muxio::test::CapturedLog log{spdlog::level::err};
    auto parent = [](Reactor& loop) -> Task<void> {
        TaskGroup group;
        group.spawn(fail_after(loop, 0ms, "nobody joined me", Live{}));
        for (int i = 0; i < 10 && group.running() != 0; ++i) {
            co_await muxio::yield(loop);
        }
        CHECK(group.failed() == 1U);
        throw std::logic_error("parent gave up");  // unwinds past the group without joining
    };
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, parent(reactor)), std::logic_error);
    CHECK(log.text().find("nobody joined me") != std::string::npos);
}

TEST_CASE("a failure handler that throws has the failure logged instead") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    muxio::test::CapturedLog log{spdlog::level::err};
    auto parent = [](Reactor& loop) -> Task<void> {
        TaskGroup group{ChildFailure::isolate,
                        [](const std::exception_ptr& /*failure*/) { throw std::runtime_error("handler broke"); }};
        group.spawn(fail_after(loop, 0ms, "child broke", Live{}));
        co_await group.join();
    };
    muxio::run_until_complete(reactor, parent(reactor));
    const std::string text = log.text();
    CHECK(text.find("child broke") != std::string::npos);
    CHECK(text.find("handler threw") != std::string::npos);
}

TEST_CASE("cancelling the task awaiting an isolating group cancels its children and join() throws Cancelled") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::stop_source source;
    int cancelled = 0;
    auto parent = [](Reactor& loop, int& count) -> Task<void> {
        TaskGroup group{ChildFailure::isolate};
        group.spawn(sleeper(loop, count, Live{}));
        group.spawn(sleeper(loop, count, Live{}));
        co_await group.join();
        CHECK(group.failed() == 0U);
    };
    reactor.call_later(1ms, [&] { source.request_stop(); });
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, parent(reactor, cancelled), source.get_token()),
                    muxio::Cancelled);
    CHECK(cancelled == 2);
}

TEST_CASE("a child that throws Cancelled of its own while the group runs is a failure") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::vector<std::string> reported;
    auto own_token = [](Reactor& loop) -> Task<void> {
        std::stop_source mine;
        mine.request_stop();
        co_await muxio::sleep_for(loop, 1h, mine.get_token());
    };
    auto parent = [&own_token](Reactor& loop, std::vector<std::string>& seen) -> Task<void> {
        TaskGroup group{ChildFailure::isolate,
                        [&seen](std::exception_ptr failure) { seen.push_back(message_of(failure)); }};
        group.spawn(own_token(loop));
        co_await group.join();
    };
    muxio::run_until_complete(reactor, parent(reactor, reported));
    CHECK(reported == std::vector<std::string>{"operation cancelled"});
}
