// Many concurrent tasks: 10 000 of them ping-ponging over 5 000 socketpairs.
#include <unistd.h>

#include <cstddef>
#include <vector>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/awaitables.hpp"
#include "muxio/run.hpp"
#include "muxio/task.hpp"
#include "muxio/task_group.hpp"
#include "support/support.hpp"

using muxio::Reactor;
using muxio::Task;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;

namespace {

// Sends `rounds` bytes and waits for each to come back.
Task<void> ping(Reactor& reactor, int fd, int rounds, int& completed, Live /*held*/) {
    for (int i = 0; i < rounds; ++i) {
        REQUIRE(::write(fd, "p", 1) == 1);
        co_await muxio::readable(reactor, fd);
        char byte = 0;
        REQUIRE(::read(fd, &byte, 1) == 1);
    }
    ++completed;
}

// Sends back every byte it reads, `rounds` times.
Task<void> pong(Reactor& reactor, int fd, int rounds, int& completed, Live /*held*/) {
    for (int i = 0; i < rounds; ++i) {
        co_await muxio::readable(reactor, fd);
        char byte = 0;
        REQUIRE(::read(fd, &byte, 1) == 1);
        co_await muxio::writable(reactor, fd);
        REQUIRE(::write(fd, &byte, 1) == 1);
    }
    ++completed;
}

}  // namespace

TEST_CASE("ten thousand tasks ping-pong over five thousand socketpairs") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    constexpr int pairs = 5'000;
    constexpr int rounds = 5;
    REQUIRE(muxio::test::raise_fd_limit(2 * pairs + 100) >= 2 * pairs + 100);
    std::vector<SocketPair> sockets(pairs);
    Reactor reactor;
    int completed = 0;
    auto all = [](Reactor& loop, std::vector<SocketPair>& socks, int count, int& done) -> Task<void> {
        muxio::TaskGroup group;
        for (SocketPair& pair : socks) {
            group.spawn(pong(loop, pair.right.get(), count, done, Live{}));
            group.spawn(ping(loop, pair.left.get(), count, done, Live{}));
        }
        co_await group.join();
    };
    muxio::run_until_complete(reactor, all(reactor, sockets, rounds, completed));
    CHECK(completed == 2 * pairs);
}
