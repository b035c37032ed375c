// select(2) only: the FD_SETSIZE ceiling and descriptors checked at register_.
#include <sys/select.h>

#include <cerrno>
#include <chrono>
#include <map>
#include <stdexcept>
#include <string>
#include <system_error>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/selectors.hpp"
#include "support/selector_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::EVENT_READ;
using muxio::EVENT_WRITE;
using muxio::Events;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;
using muxio::test::UniqueFd;

TEST_CASE("select refuses an fd at FD_SETSIZE with a message naming the limit") {
    FdLeakCheck leak_check;
    REQUIRE(muxio::test::raise_fd_limit(FD_SETSIZE + 64) > FD_SETSIZE + 1);
    SocketPair pair;
    muxio::SelectSelector<int> selector;
    for (const int lowest : {FD_SETSIZE, FD_SETSIZE + 37}) {
        const UniqueFd high = muxio::test::dup_at_or_above(pair.left.get(), lowest);
        try {
            (void)selector.register_(high.get(), EVENT_READ, 1);
            FAIL("register_ accepted fd ", high.get());
        } catch (const std::invalid_argument& error) {
            const std::string message = error.what();
            CHECK(message.find(fmt::format("fd {}", high.get())) != std::string::npos);
            CHECK(message.find("FD_SETSIZE") != std::string::npos);
            CHECK(message.find(std::to_string(FD_SETSIZE)) != std::string::npos);
        }
        CHECK(selector.get_map().empty());
    }
}

TEST_CASE("select takes the highest fd below FD_SETSIZE") {
    FdLeakCheck leak_check;
    REQUIRE(muxio::test::raise_fd_limit(FD_SETSIZE + 64) > FD_SETSIZE);
    SocketPair pair;
    const UniqueFd highest = muxio::test::dup_at_or_above(pair.left.get(), FD_SETSIZE - 1);
    REQUIRE(highest.get() == FD_SETSIZE - 1);
    muxio::SelectSelector<int> selector;
    (void)selector.register_(highest.get(), EVENT_READ, 1);
    CHECK(selector.select(0s).empty());
    muxio::test::write_all(pair.right.get(), "x");
    CHECK(muxio::test::ready_by_fd(selector.select(5s)) == std::map<int, Events>{{FD_SETSIZE - 1, EVENT_READ}});
}

TEST_CASE("select refuses a closed fd at register_ with EBADF naming the fd") {
    FdLeakCheck leak_check;
    SocketPair pair;
    const int closed = pair.left.release();
    REQUIRE(::close(closed) == 0);
    muxio::SelectSelector<int> selector;
    try {
        (void)selector.register_(closed, EVENT_READ, 1);
        FAIL("register_ accepted a closed fd");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::error_code{EBADF, std::system_category()});
        CHECK(std::string{error.what()}.find(fmt::format("fd {}", closed)) != std::string::npos);
    }
    CHECK(selector.get_map().empty());
    // Nothing of the refused fd is left in the sets: select works.
    (void)selector.register_(pair.right.get(), EVENT_WRITE, 2);
    CHECK(selector.select(0s).size() == 1);
}

TEST_CASE("select reports a registered fd closed without unregister as ready, as poll does") {
    FdLeakCheck leak_check;
    SocketPair pair;
    muxio::SelectSelector<int> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ, 1);
    (void)selector.register_(pair.right.get(), EVENT_WRITE, 2);
    const int closed = pair.left.get();
    pair.left.reset();
    // select(2) itself fails the whole call with EBADF; the selector finds
    // the closed member, reports it as an error condition (ready for what
    // it watches) and still reports the others, at every select until the
    // closed one is unregistered.
    for (int round = 0; round < 3; ++round) {
        CHECK(muxio::test::ready_by_fd(selector.select(5s)) ==
              std::map<int, Events>{{closed, EVENT_READ}, {pair.right.get(), EVENT_WRITE}});
    }
    (void)selector.unregister(closed);
    CHECK(muxio::test::ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.right.get(), EVENT_WRITE}});
}
