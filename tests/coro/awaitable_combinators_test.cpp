// with_timeout, when_all and when_any of any awaitable, not only Task:
// readable(), sleep_for(), socket operations and a user's own awaiters, their
// cancellation, the result types, and the concept that names the requirement.
#include <unistd.h>

#include <array>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <functional>
#include <span>
#include <stop_token>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "support/captured_log.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::coro_test::FrameLeakCheck;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;

namespace {

// A user's awaiter that listens to the awaiting task's stop token, as the
// enable_stop_aware documentation describes: it resumes with `value` after
// `delay`, or, once stopped, in the next iteration with Cancelled.
class StopAwareDelay {
public:
    StopAwareDelay(Reactor& reactor, Reactor::Duration delay, std::size_t value) noexcept
        : reactor_{&reactor}, delay_{delay}, value_{value} {}
    StopAwareDelay(StopAwareDelay&& other) noexcept
        : reactor_{other.reactor_}, delay_{other.delay_}, value_{other.value_} {}
    StopAwareDelay& operator=(StopAwareDelay&&) = delete;
    StopAwareDelay(const StopAwareDelay&) = delete;
    StopAwareDelay& operator=(const StopAwareDelay&) = delete;
    ~StopAwareDelay() {
        timer_.cancel();
        soon_.cancel();
    }

    [[nodiscard]] bool await_ready() const noexcept { return false; }
    template <class Promise>
    void await_suspend(std::coroutine_handle<Promise> awaiter) {
        awaiter_ = awaiter;
        timer_ = reactor_->call_later(delay_, [this] { finish(false); });
        on_stop_.emplace(awaiter.promise().get_stop_token(), OnStop{this});
    }
    std::size_t await_resume() const {
        if (cancelled_) {
            throw muxio::Cancelled{};
        }
        return value_;
    }

private:
    struct OnStop {
        StopAwareDelay* self;
        // Stopped on the loop thread in these tests; resumes through the loop.
        void operator()() const {
            self->soon_ = self->reactor_->call_soon([s = self] { s->finish(true); });
        }
    };
    void finish(bool cancelled) {
        timer_.cancel();
        soon_.cancel();
        cancelled_ = cancelled;
        on_stop_.reset();
        awaiter_.resume();
    }

    Reactor* reactor_;
    Reactor::Duration delay_;
    std::size_t value_;
    bool cancelled_ = false;
    std::coroutine_handle<> awaiter_;
    muxio::TimerHandle timer_;
    muxio::TimerHandle soon_;
    std::optional<std::stop_callback<OnStop>> on_stop_;
};

// A user's awaiter that ignores every stop token: resumes with `value`
// after `delay`, whatever happens. Its await_suspend takes any handle.
class DeafDelay {
public:
    DeafDelay(Reactor& reactor, Reactor::Duration delay, std::size_t value) noexcept
        : reactor_{&reactor}, delay_{delay}, value_{value} {}
    DeafDelay(DeafDelay&& other) noexcept : reactor_{other.reactor_}, delay_{other.delay_}, value_{other.value_} {}
    DeafDelay& operator=(DeafDelay&&) = delete;
    DeafDelay(const DeafDelay&) = delete;
    DeafDelay& operator=(const DeafDelay&) = delete;
    ~DeafDelay() { timer_.cancel(); }

    [[nodiscard]] bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> awaiter) {
        timer_ = reactor_->call_later(delay_, [awaiter] { awaiter.resume(); });
    }
    [[nodiscard]] std::size_t await_resume() const noexcept { return value_; }

private:
    Reactor* reactor_;
    Reactor::Duration delay_;
    std::size_t value_;
    muxio::TimerHandle timer_;
};

// Ready at once, returning a reference to an int it refers to.
struct RefAwaitable {
    int* target;
    [[nodiscard]] bool await_ready() const noexcept { return true; }
    void await_suspend(std::coroutine_handle<> /*awaiter*/) const noexcept {}
    [[nodiscard]] int& await_resume() const noexcept { return *target; }
};

// Awaitable through a member operator co_await, which only an rvalue has.
struct ViaCoAwait {
    int value;
    auto operator co_await() && noexcept {
        struct Awaiter {
            int value;
            [[nodiscard]] bool await_ready() const noexcept { return true; }
            void await_suspend(std::coroutine_handle<> /*awaiter*/) const noexcept {}
            [[nodiscard]] std::string await_resume() const { return std::to_string(value); }
        };
        return Awaiter{value};
    }
};

struct NotAwaitable {
    int value;
};

}  // namespace

template <>
inline constexpr bool muxio::enable_stop_aware<StopAwareDelay> = true;

namespace {

void write_byte(int fd) {
    const char byte = 'x';
    REQUIRE(::write(fd, &byte, 1) == 1);
}

Task<int> plain_value(int value) {
    co_return value;
}

}  // namespace

TEST_CASE("muxio::Awaitable names what the combinators accept") {
    static_assert(muxio::Awaitable<muxio::detail::ReactorWait>);
    static_assert(muxio::Awaitable<Task<int>>);
    static_assert(muxio::Awaitable<Task<void>&>);
    static_assert(muxio::Awaitable<muxio::StreamOperation<std::size_t>>);
    static_assert(muxio::Awaitable<StopAwareDelay>);
    static_assert(muxio::Awaitable<DeafDelay&>);
    static_assert(muxio::Awaitable<RefAwaitable>);
    static_assert(muxio::Awaitable<ViaCoAwait>);
    static_assert(!muxio::Awaitable<ViaCoAwait&>);  // operator co_await is for rvalues only
    static_assert(!muxio::Awaitable<int>);
    static_assert(!muxio::Awaitable<NotAwaitable>);
    static_assert(!muxio::Awaitable<std::string>);
    static_assert(std::is_same_v<muxio::await_result_t<muxio::detail::ReactorWait>, void>);
    static_assert(std::is_same_v<muxio::await_result_t<RefAwaitable>, int&>);
    static_assert(std::is_same_v<muxio::await_result_t<ViaCoAwait>, std::string>);
    static_assert(std::is_same_v<muxio::await_result_t<muxio::StreamOperation<std::size_t>>, std::size_t>);
    static_assert(muxio::enable_stop_aware<muxio::detail::ReactorWait>);
    static_assert(muxio::enable_stop_aware<StopAwareDelay>);
    static_assert(!muxio::enable_stop_aware<DeafDelay>);
    Reactor reactor;
    static_assert(std::is_same_v<decltype(muxio::with_timeout(reactor, 1s, muxio::readable(reactor, 0))), Task<void>>);
    static_assert(
        std::is_same_v<decltype(muxio::with_timeout(reactor, 1s, RefAwaitable{})), Task<std::reference_wrapper<int>>>);
    static_assert(std::is_same_v<decltype(muxio::when_any(muxio::sleep_for(reactor, 1s), muxio::readable(reactor, 0))),
                                 Task<muxio::AnyResult<void>>>);
    CHECK(muxio::Awaitable<Task<int>>);
}

TEST_CASE("with_timeout of readable() resumes when the fd turns readable") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    reactor.call_later(1ms, [&] { write_byte(pair.right.get()); });
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 10s, muxio::readable(reactor, pair.left.get())));
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("with_timeout of readable() on a silent fd throws TimeoutError and removes the reader") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    muxio::test::Stopwatch stopwatch;
    CHECK_THROWS_AS(muxio::run_until_complete(
                        reactor, muxio::with_timeout(reactor, 20ms, muxio::readable(reactor, pair.left.get()))),
                    muxio::TimeoutError);
    CHECK(stopwatch.elapsed() >= 20ms);
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("with_timeout of an lvalue awaitable awaits it in place") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    auto body = [](Reactor& loop, int fd) -> Task<int> {
        auto wait = muxio::readable(loop, fd);
        try {
            co_await muxio::with_timeout(loop, 5ms, wait);
        } catch (const muxio::TimeoutError&) {
            co_return 1;
        }
        co_return 0;
    };
    CHECK(muxio::run_until_complete(reactor, body(reactor, pair.left.get())) == 1);
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
}

TEST_CASE("with_timeout of sleep_for() returns when the sleep is shorter and throws TimeoutError when longer") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 10s, muxio::sleep_for(reactor, 1ms)));
    CHECK_THROWS_AS(
        muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 1ms, muxio::sleep_for(reactor, 1h))),
        muxio::TimeoutError);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("with_timeout keeps an lvalue reference that an awaitable returns") {
    Reactor reactor;
    int target = 5;
    auto body = [](Reactor& loop, int& where) -> Task<void> {
        int& got = co_await muxio::with_timeout(loop, 1s, RefAwaitable{&where});
        got = 6;
    };
    muxio::run_until_complete(reactor, body(reactor, target));
    CHECK(target == 6);
}

TEST_CASE("with_timeout of a stop-aware user awaitable cancels it and logs nothing") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    muxio::test::CapturedLog log{spdlog::level::warn};
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 1s, StopAwareDelay{reactor, 1ms, 7})) == 7U);
    CHECK_THROWS_AS(
        muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 1ms, StopAwareDelay{reactor, 1h, 7})),
        muxio::TimeoutError);
    CHECK(reactor.scheduled_count() == 0);
    CHECK(log.text().empty());
}

TEST_CASE("with_timeout waits for an awaitable that ignores the stop token and logs a warning") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    muxio::test::CapturedLog log{spdlog::level::warn};
    muxio::test::Stopwatch stopwatch;
    // Like a task that catches the cancellation and returns anyway: its value.
    CHECK(muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 1ms, DeafDelay{reactor, 30ms, 7})) == 7U);
    CHECK(stopwatch.elapsed() >= 30ms);
    const std::string text = log.text();
    CHECK(text.find("with_timeout") != std::string::npos);
    CHECK(text.find("enable_stop_aware") != std::string::npos);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("with_timeout of a TCP read on loopback returns the bytes or times out") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto body = [](Reactor& loop) -> Task<void> {
        auto listener = muxio::TcpListener::bind(loop, muxio::SocketAddress::ipv4("127.0.0.1", 0));
        muxio::TcpStream client = co_await muxio::TcpStream::connect(loop, listener.local_address());
        muxio::TcpStream server = co_await listener.accept();
        std::array<std::byte, 16> buffer{};
        // Nothing sent yet: the read times out, and the socket stays usable.
        CHECK_THROWS_AS(co_await muxio::with_timeout(loop, 5ms, server.read_some(buffer)), muxio::TimeoutError);
        co_await client.write_all("hi");
        const std::size_t got = co_await muxio::with_timeout(loop, 10s, server.read_some(buffer));
        CHECK(got == 2U);
        // An lvalue operation is awaited in place.
        auto read = server.read_some(buffer);
        co_await client.write_all("abc");
        CHECK(co_await muxio::with_timeout(loop, 10s, read) == 3U);
    };
    muxio::run_until_complete(reactor, body(reactor));
}

TEST_CASE("when_any of readable() and sleep_for() reports the first and cancels the other") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    write_byte(pair.right.get());
    auto first = muxio::run_until_complete(
        reactor, muxio::when_any(muxio::sleep_for(reactor, 1h), muxio::readable(reactor, pair.left.get())));
    CHECK(first.index == 1);
    CHECK(reactor.scheduled_count() == 0);
    SocketPair silent;
    auto second = muxio::run_until_complete(
        reactor, muxio::when_any(muxio::readable(reactor, silent.left.get()), muxio::sleep_for(reactor, 1ms)));
    CHECK(second.index == 1);
    CHECK_FALSE(reactor.has_reader(silent.left.get()));
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("when_any mixes Tasks, socket reads and user awaitables of one type") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto body = [](Reactor& loop) -> Task<void> {
        auto listener = muxio::TcpListener::bind(loop, muxio::SocketAddress::ipv4("127.0.0.1", 0));
        muxio::TcpStream client = co_await muxio::TcpStream::connect(loop, listener.local_address());
        muxio::TcpStream server = co_await listener.accept();
        std::array<std::byte, 16> buffer{};
        // The user's awaiter wins; the pending socket read is cancelled.
        auto won = co_await muxio::when_any(server.read_some(buffer), StopAwareDelay{loop, 1ms, 42},
                                            [](Reactor& l) -> Task<std::size_t> {
                                                co_await muxio::sleep_for(l, 1h);
                                                co_return 0;
                                            }(loop));
        CHECK(won.index == 1);
        CHECK(won.value == 42U);
        // The read was cancelled cleanly: the next one works.
        co_await client.write_all("abcd");
        auto read = co_await muxio::when_any(server.read_some(buffer), StopAwareDelay{loop, 1h, 0});
        CHECK(read.index == 0);
        CHECK(read.value == 4U);
    };
    muxio::run_until_complete(reactor, body(reactor));
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("when_all mixes Tasks, readable(), sleep_for(), a socket read and user awaitables") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    int target = 1;
    auto body = [](Reactor& loop, int fd, int peer, int& where) -> Task<void> {
        auto listener = muxio::TcpListener::bind(loop, muxio::SocketAddress::ipv4("127.0.0.1", 0));
        muxio::TcpStream client = co_await muxio::TcpStream::connect(loop, listener.local_address());
        muxio::TcpStream server = co_await listener.accept();
        std::array<std::byte, 16> buffer{};
        loop.call_later(2ms, [peer] { write_byte(peer); });
        co_await client.write_all("xyz");
        auto [value, readable, slept, got, user, ref, text] = co_await muxio::when_all(
            plain_value(3), muxio::readable(loop, fd), muxio::sleep_for(loop, 1ms), server.read_some(buffer),
            StopAwareDelay{loop, 1ms, 9}, RefAwaitable{&where}, ViaCoAwait{12});
        CHECK(value == 3);
        static_assert(std::is_same_v<decltype(readable), std::monostate>);
        static_assert(std::is_same_v<decltype(slept), std::monostate>);
        CHECK(got == 3U);
        CHECK(user == 9U);
        static_assert(std::is_same_v<decltype(ref), std::reference_wrapper<int>>);
        ref.get() = 2;
        CHECK(text == "12");
    };
    muxio::run_until_complete(reactor, body(reactor, pair.left.get(), pair.right.get(), target));
    CHECK(target == 2);
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("when_all of awaitables cancels the others at a failure and rethrows it") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    auto failing = [](Reactor& loop) -> Task<void> {
        co_await muxio::sleep_for(loop, 1ms);
        throw std::runtime_error("child failed");
    };
    CHECK_THROWS_WITH_AS(muxio::run_until_complete(
                             reactor, muxio::when_all(muxio::readable(reactor, pair.left.get()), failing(reactor),
                                                      muxio::sleep_for(reactor, 1h), StopAwareDelay{reactor, 1h, 0})),
                         "child failed", std::runtime_error);
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("a stop request on the awaiter reaches awaitables inside when_all") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    SocketPair pair;
    std::stop_source source;
    reactor.call_later(1ms, [&] { source.request_stop(); });
    CHECK_THROWS_AS(
        muxio::run_until_complete(
            reactor, muxio::when_all(muxio::readable(reactor, pair.left.get()), muxio::sleep_for(reactor, 1h)),
            source.get_token()),
        muxio::Cancelled);
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("when_any waits for a loser that ignores the stop token and logs a warning") {
    FrameLeakCheck frame_check;
    Reactor reactor;
    muxio::test::CapturedLog log{spdlog::level::warn};
    auto first = muxio::run_until_complete(
        reactor, muxio::when_any(DeafDelay{reactor, 20ms, 1}, StopAwareDelay{reactor, 1ms, 2}));
    CHECK(first.index == 1);
    CHECK(first.value == 2U);
    CHECK(log.text().find("when_any") != std::string::npos);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("destroying a pending when_any of awaitables removes their registrations") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    SocketPair pair;
    Reactor reactor;
    muxio::spawn(reactor, [](Reactor& loop, int fd, muxio::coro_test::Live /*held*/) -> Task<void> {
        (void)co_await muxio::when_any(muxio::readable(loop, fd), muxio::sleep_for(loop, 1h), muxio::yield(loop));
    }(reactor, pair.left.get(), muxio::coro_test::Live{}));
    reactor.run_once(0s);
    CHECK(reactor.has_reader(pair.left.get()));
    reactor.close();  // destroys the spawned task, suspended in when_any
}
