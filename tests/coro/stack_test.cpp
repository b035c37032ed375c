// Chains of awaits run in constant stack, whatever the optimisation level
// and sanitizer: loops of awaits that end at once, tasks nested a million
// deep, socket operations that are always ready, the combinators. Checked
// structurally: the stack position of the same code at the first iteration
// and at the last (or at the top and the bottom of a chain) is the same, so
// a chain that grows the stack fails even where the stack is big enough.
#include <sys/socket.h>

#include <array>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <utility>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/combinators.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "muxio/task_group.hpp"
#include "net/net_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::coro_test::stack_position;
using muxio::test::FdLeakCheck;

namespace {

// The stack positions of one place in the code, at its first pass and at
// its last.
struct Positions {
    std::uintptr_t first = 0;
    std::uintptr_t last = 0;

    void record(bool is_first) { (is_first ? first : last) = stack_position(); }
    void check() const {
        CHECK(first != 0);
        CHECK(last == first);
    }
};

Task<int> one_at(Positions& child, bool is_first) {
    child.record(is_first);
    co_return 1;
}

Task<long> sequential_awaits(int count, Positions& parent, Positions& child) {
    long sum = 0;
    for (int i = 0; i < count; ++i) {
        sum += co_await one_at(child, i == 0);
        parent.record(i == 0);
    }
    co_return sum;
}

// Each level awaits the next; `down` is recorded at the outermost level and
// at the innermost one that awaits, before their awaits, `up` after them.
Task<int> nested(int depth, int top_depth, Positions& down, Positions& up) {
    if (depth == 0) {
        co_return 0;
    }
    const bool recorded = depth == top_depth || depth == 1;
    if (recorded) {
        down.record(depth == top_depth);
    }
    const int below = co_await nested(depth - 1, top_depth, down, up);
    if (recorded) {
        up.record(depth == 1);
    }
    co_return below + 1;
}

// Like nested(), but the innermost level suspends on the reactor first, so
// the chain unwinds from a reactor callback; `unwound` records the levels
// just above the bottom and at the top, after their awaits.
Task<int> nested_suspending(Reactor& reactor, int depth, int top_depth, Positions& unwound) {
    if (depth == 0) {
        co_await muxio::yield(reactor);
        co_return 0;
    }
    const int below = co_await nested_suspending(reactor, depth - 1, top_depth, unwound);
    if (depth == 1 || depth == top_depth) {
        unwound.record(depth == 1);
    }
    co_return below + 1;
}

// An awaitable of another library: resumes its coroutine straight from a
// reactor callback, outside any of muxio's resumptions.
struct ResumedByHand {
    Reactor& reactor;
    [[nodiscard]] bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> awaiter) const {
        reactor.call_soon([awaiter] { awaiter.resume(); });
    }
    void await_resume() const noexcept {}
};

Task<int> nested_resumed_by_hand(Reactor& reactor, int depth, int top_depth, Positions& unwound) {
    if (depth == 0) {
        co_await ResumedByHand{reactor};
        co_return 0;
    }
    const int below = co_await nested_resumed_by_hand(reactor, depth - 1, top_depth, unwound);
    if (depth == 1 || depth == top_depth) {
        unwound.record(depth == 1);
    }
    co_return below + 1;
}

}  // namespace

TEST_CASE("a million sequential awaits of tasks that end at once run in constant stack") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Positions parent;
    Positions child;
    CHECK(muxio::run_until_complete(reactor, sequential_awaits(1'000'000, parent, child)) == 1'000'000);
    parent.check();
    child.check();
}

TEST_CASE("a million nested awaits run in constant stack down and back up") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Positions down;
    Positions up;
    CHECK(muxio::run_until_complete(reactor, nested(1'000'000, 1'000'000, down, up)) == 1'000'000);
    down.check();
    up.check();
}

TEST_CASE("a million nested awaits unwind in constant stack from a reactor callback") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Positions unwound;
    CHECK(muxio::run_until_complete(reactor, nested_suspending(reactor, 1'000'000, 1'000'000, unwound)) == 1'000'000);
    unwound.check();
}

TEST_CASE("a chain resumed by another library's awaitable runs in constant stack too") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Positions unwound;
    CHECK(muxio::run_until_complete(reactor, nested_resumed_by_hand(reactor, 1'000'000, 1'000'000, unwound)) ==
          1'000'000);
    unwound.check();
}

TEST_CASE("a task resumed by hand runs its synchronous awaits in constant stack") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Positions parent;
    Positions child;
    Task<long> task = sequential_awaits(1'000'000, parent, child);
    muxio::detail::TaskAccess::handle(task).resume();  // no reactor, no muxio driver
    REQUIRE(task.done());
    CHECK(muxio::detail::take_result(task) == 1'000'000);
    parent.check();
    child.check();
}

TEST_CASE("loops over combinators of tasks that end at once run in constant stack") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    Positions parent;
    Positions child;
    constexpr int rounds = 100'000;
    SUBCASE("when_all") {
        muxio::run_until_complete(reactor, [](Positions& p, Positions& c) -> Task<void> {
            for (int i = 0; i < rounds; ++i) {
                auto [a, b] = co_await muxio::when_all(one_at(c, i == 0), one_at(c, i == 0));
                CHECK(a + b == 2);
                p.record(i == 0);
            }
        }(parent, child));
    }
    SUBCASE("when_any") {
        muxio::run_until_complete(reactor, [](Positions& p, Positions& c) -> Task<void> {
            for (int i = 0; i < rounds; ++i) {
                const auto result = co_await muxio::when_any(one_at(c, i == 0), one_at(c, i == 0));
                CHECK(result.value == 1);
                p.record(i == 0);
            }
        }(parent, child));
    }
    SUBCASE("with_timeout") {
        muxio::run_until_complete(reactor, [](Reactor& loop, Positions& p, Positions& c) -> Task<void> {
            for (int i = 0; i < rounds; ++i) {
                CHECK(co_await muxio::with_timeout(loop, 1h, one_at(c, i == 0)) == 1);
                p.record(i == 0);
            }
        }(reactor, parent, child));
    }
    SUBCASE("TaskGroup") {
        muxio::run_until_complete(reactor, [](Positions& p, Positions& c) -> Task<void> {
            muxio::TaskGroup group;
            for (int i = 0; i < rounds; ++i) {
                group.spawn(one_at(c, i == 0));
                co_await group.join();
                p.record(i == 0);
            }
        }(parent, child));
    }
    parent.check();
    child.check();
}

TEST_CASE("a loop of UDP receives and sends that are always ready runs in constant stack") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    muxio::UdpSocket socket = muxio::UdpSocket::bind(reactor, muxio::net_test::loopback(AF_INET));
    Positions after_send;
    Positions after_receive;
    muxio::run_until_complete(reactor, [](muxio::UdpSocket& udp, Positions& sent, Positions& received) -> Task<void> {
        std::array<std::byte, 16> buffer{};
        const muxio::SocketAddress self = udp.local_address();
        for (int i = 0; i < 100'000; ++i) {
            // To itself: the datagram is there before the receive.
            CHECK(co_await udp.send_to(muxio::net_test::bytes("ping"), self) == 4);
            sent.record(i == 0);
            const muxio::Datagram datagram = co_await udp.recv_from(buffer);
            CHECK(datagram.size == 4);
            received.record(i == 0);
        }
    }(socket, after_send, after_receive));
    after_send.check();
    after_receive.check();
}

TEST_CASE("a loop of stream reads made Tasks, always ready, runs in constant stack") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    auto [left, right] = muxio::UnixStream::pair(reactor);
    Positions after_read;
    muxio::run_until_complete(reactor,
                              [](muxio::UnixStream& reader, muxio::UnixStream& writer, Positions& read) -> Task<void> {
                                  std::array<std::byte, 1> buffer{};
                                  for (int i = 0; i < 100'000; ++i) {
                                      co_await writer.write_all(muxio::net_test::bytes("x"));
                                      Task<std::size_t> one = reader.read_some(buffer);
                                      CHECK(co_await std::move(one) == 1);
                                      read.record(i == 0);
                                  }
                              }(left, right, after_read));
    after_read.check();
}

TEST_CASE("a loop of accepts of connections already queued runs in constant stack") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    muxio::TcpListener listener = muxio::TcpListener::bind(reactor, muxio::net_test::loopback(AF_INET));
    constexpr int clients = 64;
    std::array<muxio::test::UniqueFd, clients> connections;
    for (auto& connection : connections) {
        connection = muxio::test::UniqueFd{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
        const muxio::SocketAddress address = listener.local_address();
        REQUIRE(::connect(connection.get(), address.data(), address.size()) == 0);
    }
    Positions after_accept;
    muxio::run_until_complete(reactor, [](muxio::TcpListener& from, Positions& accepted) -> Task<void> {
        for (int i = 0; i < clients; ++i) {
            muxio::TcpStream stream = co_await from.accept();
            CHECK(stream.fileno() >= 0);
            accepted.record(i == 0);
        }
    }(listener, after_accept));
    after_accept.check();
}
