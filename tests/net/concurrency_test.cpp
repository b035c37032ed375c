// Many concurrent socket tasks: 10 000 of them ping-ponging over 5 000
// socket pairs through adopted UnixStreams.
#include <array>
#include <chrono>
#include <cstddef>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/combinators.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "muxio/task_group.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Task;
using muxio::UnixStream;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::test::FdLeakCheck;

namespace {

// Sends a numbered byte `rounds` times and checks each comes back.
Task<void> ping(UnixStream& stream, int rounds, int& completed, Live /*held*/) {
    for (int i = 0; i < rounds; ++i) {
        const std::array<std::byte, 1> sent{static_cast<std::byte>(i)};
        co_await stream.write_all(sent);
        std::array<std::byte, 1> echoed{};
        co_await stream.read_exact(echoed);
        REQUIRE(echoed == sent);
    }
    ++completed;
}

// Sends back every byte it reads, `rounds` times, then expects the end.
Task<void> pong(UnixStream& stream, int rounds, int& completed, Live /*held*/) {
    std::array<std::byte, 1> byte{};
    for (int i = 0; i < rounds; ++i) {
        co_await stream.read_exact(byte);
        co_await stream.write_all(byte);
    }
    ++completed;
}

}  // namespace

TEST_CASE("ten thousand tasks ping-pong over five thousand adopted socket pairs") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    constexpr int pairs = 5'000;
    constexpr int rounds = 5;
    REQUIRE(muxio::test::raise_fd_limit(2 * pairs + 100) >= 2 * pairs + 100);
    Reactor reactor;
    std::vector<std::pair<UnixStream, UnixStream>> streams;
    streams.reserve(pairs);
    for (int i = 0; i < pairs; ++i) {
        // Half made by pair(), half adopted from raw descriptors.
        if (i % 2 == 0) {
            streams.push_back(UnixStream::pair(reactor));
        } else {
            muxio::test::SocketPair raw;
            streams.emplace_back(UnixStream::adopt(reactor, raw.left.release()),
                                 UnixStream::adopt(reactor, raw.right.release()));
        }
    }
    int completed = 0;
    auto all = [](std::vector<std::pair<UnixStream, UnixStream>>& all_streams, int count, int& done) -> Task<void> {
        muxio::TaskGroup group;
        for (auto& [left, right] : all_streams) {
            group.spawn(pong(right, count, done, Live{}));
            group.spawn(ping(left, count, done, Live{}));
        }
        co_await group.join();
    };
    const muxio::test::Stopwatch watch;
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 100s, all(streams, rounds, completed)));
    CHECK(completed == 2 * pairs);
    CHECK(watch.elapsed() < 60s);
    streams.clear();
}
