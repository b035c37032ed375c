// poll(2) only: any descriptor number, descriptors checked at register_, and
// the table of pollfd entries kept compact as fds come and go.
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <map>
#include <string>
#include <system_error>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/selectors.hpp"
#include "support/selector_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::EVENT_READ;
using muxio::EVENT_READ_WRITE;
using muxio::EVENT_WRITE;
using muxio::Events;
using muxio::test::FdLeakCheck;
using muxio::test::ready_by_fd;
using muxio::test::SocketPair;
using muxio::test::UniqueFd;

TEST_CASE("poll refuses a closed fd at register_ with EBADF naming the fd") {
    FdLeakCheck leak_check;
    SocketPair pair;
    const int closed = pair.left.release();
    REQUIRE(::close(closed) == 0);
    muxio::PollSelector<int> selector;
    try {
        (void)selector.register_(closed, EVENT_READ, 1);
        FAIL("register_ accepted a closed fd");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::error_code{EBADF, std::system_category()});
        CHECK(std::string{error.what()}.find(fmt::format("fd {}", closed)) != std::string::npos);
    }
    CHECK(selector.get_map().empty());
    (void)selector.register_(pair.right.get(), EVENT_WRITE, 2);
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.right.get(), EVENT_WRITE}});
}

TEST_CASE("poll watches fd numbers far above FD_SETSIZE") {
    FdLeakCheck leak_check;
    REQUIRE(muxio::test::raise_fd_limit(12'000) > 10'100);
    SocketPair pair;
    const UniqueFd far = muxio::test::dup_at_or_above(pair.left.get(), 10'000);
    const UniqueFd farther = muxio::test::dup_at_or_above(pair.right.get(), 10'050);
    muxio::PollSelector<int> selector;
    (void)selector.register_(far.get(), EVENT_READ, 1);
    (void)selector.register_(farther.get(), EVENT_WRITE, 2);
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{farther.get(), EVENT_WRITE}});
    muxio::test::write_all(farther.get(), "x");
    CHECK(ready_by_fd(selector.select(5s)) ==
          std::map<int, Events>{{far.get(), EVENT_READ}, {farther.get(), EVENT_WRITE}});
}

TEST_CASE("poll reports each fd with its own key as others are unregistered") {
    FdLeakCheck leak_check;
    // Unregistering moves the last pollfd entry into the freed place; every
    // remaining fd must keep its own events and token.
    std::vector<SocketPair> pairs(10);
    muxio::PollSelector<int> selector;
    for (int i = 0; i < 10; ++i) {
        (void)selector.register_(pairs[static_cast<std::size_t>(i)].left.get(), EVENT_READ, i);
    }
    for (const int removed : {0, 4, 9, 5}) {
        (void)selector.unregister(pairs[static_cast<std::size_t>(removed)].left.get());
    }
    (void)selector.modify(pairs[7].left.get(), EVENT_READ_WRITE, 70);
    for (auto& pair : pairs) {
        muxio::test::write_all(pair.right.get(), "x");
    }
    std::map<int, Events> expected;
    for (const int kept : {1, 2, 3, 6, 8}) {
        expected[pairs[static_cast<std::size_t>(kept)].left.get()] = EVENT_READ;
    }
    expected[pairs[7].left.get()] = EVENT_READ_WRITE;
    const auto ready = selector.select(5s);
    CHECK(ready_by_fd(ready) == expected);
    for (const auto& entry : ready) {
        const int data = entry.key().data;
        const auto index = static_cast<std::size_t>(data == 70 ? 7 : data);
        REQUIRE(index < pairs.size());
        CHECK(entry.key().fd == pairs[index].left.get());
    }
    // And registering again reuses the freed room correctly.
    (void)selector.register_(pairs[4].left.get(), EVENT_READ, 4);
    expected[pairs[4].left.get()] = EVENT_READ;
    CHECK(ready_by_fd(selector.select(5s)) == expected);
}

TEST_CASE("poll reports a registered fd closed without unregister as ready") {
    FdLeakCheck leak_check;
    SocketPair pair;
    muxio::PollSelector<int> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    const int closed = pair.left.get();
    pair.left.reset();
    // poll(2) flags the entry POLLNVAL instead of failing the call: the
    // owner hears about it through its key, and unregisters.
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{closed, EVENT_READ}});
    (void)selector.unregister(closed);
    CHECK(selector.select(0s).empty());
}
