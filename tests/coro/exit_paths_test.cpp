// Every way out of a combinator or an await releases what it armed: a value,
// Cancelled, any other exception, the frame destroyed while suspended, the
// awaiter destroyed before what it awaits. What could survive is a timer or
// a resumption pointing into a freed frame; each test checks that none is
// left (scheduled_count(), a counter the freed frame would bump) and then
// lets the loop run past the moment it would have fired, for ASan to see.
#include <array>
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/net.hpp"
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
using muxio::test::write_all;

namespace {

// A reactor on a clock the test moves, so that "after the timeout" costs no
// waiting.
class ClockedReactor {
public:
    ClockedReactor() : reactor{options()} {}

    void advance(Reactor::Duration by) noexcept { now_ += by; }

    Reactor::TimePoint now_{std::chrono::hours{1}};
    Reactor reactor;

private:
    muxio::ReactorOptions options() {
        muxio::ReactorOptions result;
        result.clock = [this] { return now_; };
        return result;
    }
};

Task<int> throw_at_once(Live /*held*/) {
    throw std::runtime_error("inner failed");
    co_return 0;
}

Task<int> throw_after_yield(Reactor& reactor, Live /*held*/) {
    co_await muxio::yield(reactor);
    throw std::runtime_error("inner failed");
}

Task<void> sleep_an_hour(Reactor& reactor, Live /*held*/) {
    co_await muxio::sleep_for(reactor, 1h);
}

Task<void> read_once(Reactor& reactor, int fd, Live /*held*/) {
    co_await muxio::readable(reactor, fd);
}

}  // namespace

TEST_CASE("with_timeout cancels its timer when the task throws something other than Cancelled") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    ClockedReactor clocked;
    Reactor& reactor = clocked.reactor;
    SUBCASE("thrown before the task suspends") {
        CHECK_THROWS_WITH_AS(
            muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20ms, throw_at_once(Live{}))),
            "inner failed", std::runtime_error);
    }
    SUBCASE("thrown after the task suspended") {
        CHECK_THROWS_WITH_AS(
            muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20ms, throw_after_yield(reactor, Live{}))),
            "inner failed", std::runtime_error);
    }
    SUBCASE("an empty task") {
        CHECK_THROWS_AS(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20ms, Task<int>{})),
                        std::logic_error);
    }
    // The timer would write into the freed frame when it fires.
    REQUIRE(reactor.scheduled_count() == 0);
    clocked.advance(1s);
    CHECK(reactor.run_once(0s) == 0);
}

TEST_CASE("with_timeout cancels its timer when its frame is destroyed while suspended") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    ClockedReactor clocked;
    Reactor& reactor = clocked.reactor;
    // The reactor stops before the task ends: run_until_complete destroys it.
    reactor.call_soon([&reactor] { reactor.stop(); });
    CHECK_THROWS_AS(
        muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20ms, sleep_an_hour(reactor, Live{}))),
        std::logic_error);
    REQUIRE(reactor.scheduled_count() == 0);
    clocked.advance(1s);
    CHECK(reactor.run_once(0s) == 0);
}

TEST_CASE("with_timeout leaves nothing armed on success, timeout and outer cancellation") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    ClockedReactor clocked;
    Reactor& reactor = clocked.reactor;
    SUBCASE("the task ends in time") {
        muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20ms, [](Reactor& loop) -> Task<void> {
                                      co_await muxio::yield(loop);
                                  }(reactor)));
    }
    SUBCASE("the timeout") {
        // In the second iteration, once the task has armed the timer.
        reactor.call_soon([&] { reactor.call_soon([&clocked] { clocked.advance(1s); }); });
        CHECK_THROWS_AS(
            muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20ms, sleep_an_hour(reactor, Live{}))),
            muxio::TimeoutError);
    }
    SUBCASE("the awaiter's token") {
        std::stop_source source;
        reactor.call_soon([&source] { source.request_stop(); });
        CHECK_THROWS_AS(
            muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 20ms, sleep_an_hour(reactor, Live{})),
                                      source.get_token()),
            muxio::Cancelled);
    }
    REQUIRE(reactor.scheduled_count() == 0);
    clocked.advance(1h);
    CHECK(reactor.run_once(0s) == 0);
}

TEST_CASE("when_all and when_any destroyed while suspended leave nothing armed") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    ClockedReactor clocked;
    Reactor& reactor = clocked.reactor;
    SocketPair pair;
    reactor.call_soon([&reactor] { reactor.stop(); });
    SUBCASE("when_all") {
        CHECK_THROWS_AS(
            muxio::run_until_complete(
                reactor, muxio::when_all(sleep_an_hour(reactor, Live{}), read_once(reactor, pair.left.get(), Live{}))),
            std::logic_error);
    }
    SUBCASE("when_any") {
        CHECK_THROWS_AS(
            muxio::run_until_complete(
                reactor, muxio::when_any(sleep_an_hour(reactor, Live{}), read_once(reactor, pair.left.get(), Live{}))),
            std::logic_error);
    }
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
    REQUIRE(reactor.scheduled_count() == 0);
    clocked.advance(2h);
    write_all(pair.right.get(), "x");
    CHECK(reactor.run_once(0s) == 0);
}

TEST_CASE("a task awaiting a group's join may be destroyed before the group's children end") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    int resumed = 0;
    {
        muxio::TaskGroup group;  // outlives the task that awaits it
        group.spawn(read_once(reactor, pair.left.get(), Live{}));
        reactor.call_soon([&reactor] { reactor.stop(); });
        CHECK_THROWS_AS(muxio::run_until_complete(reactor,
                                                  [](muxio::TaskGroup& awaited, int& count) -> Task<void> {
                                                      co_await awaited.join();
                                                      ++count;
                                                  }(group, resumed)),
                        std::logic_error);
        // The child ends now; it must not resume the destroyed awaiter.
        write_all(pair.right.get(), "x");
        for (int i = 0; i < 10 && group.running() != 0; ++i) {
            reactor.run_once(1s);
        }
        CHECK(group.running() == 0);
        CHECK(resumed == 0);
    }
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("a second task awaiting the same group's join is refused") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    muxio::TaskGroup group;
    group.spawn(read_once(reactor, pair.left.get(), Live{}));
    int joined = 0;  // the sum of the ids of the awaiters that resumed
    auto joiner = [](muxio::TaskGroup& awaited, int& sum, int id) -> Task<void> {
        co_await awaited.join();
        sum += id;
    };
    std::string refused;
    reactor.set_exception_handler([&refused](const std::exception_ptr& error) {
        try {
            std::rethrow_exception(error);
        } catch (const std::logic_error& e) {
            refused = e.what();
        }
    });
    muxio::spawn(reactor, joiner(group, joined, 1));
    muxio::spawn(reactor, joiner(group, joined, 2));
    reactor.run_once(0s);
    write_all(pair.right.get(), "x");
    for (int i = 0; i < 10 && joined == 0; ++i) {
        reactor.run_once(1s);
    }
    reactor.run_once(0s);  // the refusal reaches the handler in the iteration after
    CHECK(joined == 1);    // the first awaiter resumed; it was not replaced by the second
    CHECK(refused.find("join") != std::string::npos);
}

TEST_CASE("a group destroyed while a task awaits its join leaves that task safe to cancel and destroy") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    std::stop_source source;
    int resumed = 0;
    auto group = std::make_unique<muxio::TaskGroup>();
    group->spawn(read_once(reactor, pair.left.get(), Live{}));
    muxio::spawn(
        reactor,
        [](muxio::TaskGroup& awaited, int& count) -> Task<void> {
            co_await awaited.join();
            ++count;
        }(*group, resumed),
        source.get_token());
    reactor.run_once(0s);
    group.reset();  // the child's frame goes; the awaiting task stays suspended
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
    source.request_stop();  // reaches no freed stop_source
    reactor.run_once(0s);
    CHECK(resumed == 0);
    reactor.close();  // destroys the awaiting task's frame
}

TEST_CASE("a stream operation awaited a second time is refused and leaks nothing") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = muxio::UnixStream::pair(reactor);
    std::stop_source source;
    std::string second;
    muxio::run_until_complete(reactor,
                              [](Reactor& loop, muxio::UnixStream& reader, muxio::UnixStream& writer,
                                 std::stop_token token, std::string& refused) -> Task<void> {
                                  std::array<std::byte, 4> buffer{};
                                  auto read = reader.read_some(buffer, std::move(token));
                                  // The first await waits (nothing sent yet), holding the token.
                                  co_await muxio::when_all(
                                      [](muxio::StreamOperation<std::size_t>& operation) -> Task<std::size_t> {
                                          co_return co_await operation;
                                      }(read),
                                      [](Reactor& l, muxio::UnixStream& to) -> Task<void> {
                                          co_await muxio::yield(l);
                                          co_await to.write_all(std::string_view{"x"});
                                      }(loop, writer));
                                  co_await writer.write_all(std::string_view{"y"});
                                  try {
                                      (void)co_await read;
                                  } catch (const std::logic_error& error) {
                                      refused = error.what();
                                  }
                              }(reactor, left, right, source.get_token(), second));
    CHECK(second.find("awaited once") != std::string::npos);
}

TEST_CASE("a task awaiting a task held elsewhere may be destroyed before that task ends") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    int resumed = 0;
    Task<void> child = read_once(reactor, pair.left.get(), Live{});  // outlives its awaiter
    reactor.call_soon([&reactor] { reactor.stop(); });
    CHECK_THROWS_AS(muxio::run_until_complete(reactor,
                                              [](Task<void>& awaited, int& count) -> Task<void> {
                                                  co_await awaited;
                                                  ++count;
                                              }(child, resumed)),
                    std::logic_error);
    // The child ends now, with nobody to resume.
    write_all(pair.right.get(), "x");
    for (int i = 0; i < 10 && !child.done(); ++i) {
        reactor.run_once(1s);
    }
    CHECK(child.done());
    CHECK(resumed == 0);
}

TEST_CASE("a task destroyed while another awaits it leaves the awaiter safe to destroy") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    int resumed = 0;
    auto child = std::make_unique<Task<void>>(read_once(reactor, pair.left.get(), Live{}));
    muxio::spawn(reactor, [](Task<void>& awaited, int& count) -> Task<void> {
        co_await awaited;
        ++count;
    }(*child, resumed));
    reactor.run_once(0s);
    CHECK(reactor.has_reader(pair.left.get()));
    child.reset();  // the awaiter stays suspended, pointing nowhere
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
    reactor.close();  // destroys the awaiter's frame
    CHECK(resumed == 0);
}

TEST_CASE("run_until_complete refused by a running or closed reactor leaves nothing behind") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    bool refused = false;
    reactor.call_soon([&] {
        // From inside the loop: the task is destroyed unstarted, its start unscheduled.
        CHECK_THROWS_AS(muxio::run_until_complete(reactor, sleep_an_hour(reactor, Live{})), std::logic_error);
        refused = true;
    });
    reactor.run_once(0s);
    CHECK(refused);
    CHECK(reactor.scheduled_count() == 0);
    CHECK(reactor.run_once(0s) == 0);
    reactor.close();
    CHECK_THROWS_AS(muxio::run_until_complete(reactor, sleep_an_hour(reactor, Live{})), std::logic_error);
    CHECK_THROWS_AS(muxio::spawn(reactor, sleep_an_hour(reactor, Live{})), std::logic_error);
}
