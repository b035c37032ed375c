// epoll(7) only: refusals at register_, the event buffer growing with the
// registrations, the close-on-exec epoll descriptor, and the file that
// outlives its fd number.
#include "muxio/config.hpp"

#if MUXIO_HAS_EPOLL

#include <fcntl.h>
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
using muxio::KeyError;
using muxio::test::FdLeakCheck;
using muxio::test::ready_by_fd;
using muxio::test::SocketPair;
using muxio::test::UniqueFd;

TEST_CASE("epoll refuses a regular file at register_ with EPERM") {
    FdLeakCheck leak_check;
    const UniqueFd file{::open("/proc/self/exe", O_RDONLY | O_CLOEXEC)};
    REQUIRE(file.get() >= 0);
    muxio::EpollSelector<int> selector;
    try {
        (void)selector.register_(file.get(), EVENT_READ, 1);
        FAIL("register_ accepted a regular file");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::error_code{EPERM, std::system_category()});
        const std::string message = error.what();
        CHECK(message.find("epoll_ctl") != std::string::npos);
        CHECK(message.find(fmt::format("fd {}", file.get())) != std::string::npos);
    }
    // Exactly as before.
    CHECK(selector.get_map().empty());
    CHECK_THROWS_AS((void)selector.get_key(file.get()), KeyError);
    CHECK(selector.select(0s).empty());
    SocketPair pair;
    (void)selector.register_(pair.left.get(), EVENT_WRITE, 2);
    CHECK(ready_by_fd(selector.select(0s)) == std::map<int, Events>{{pair.left.get(), EVENT_WRITE}});
}

TEST_CASE("epoll refuses a closed fd at register_ with EBADF naming the fd") {
    FdLeakCheck leak_check;
    // The selector first, so its epoll fd does not take the closed number.
    muxio::EpollSelector<int> selector;
    SocketPair pair;
    const int closed = pair.left.release();
    REQUIRE(::close(closed) == 0);
    try {
        (void)selector.register_(closed, EVENT_READ, 1);
        FAIL("register_ accepted a closed fd");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::error_code{EBADF, std::system_category()});
        CHECK(std::string{error.what()}.find(fmt::format("fd {}", closed)) != std::string::npos);
    }
    CHECK(selector.get_map().empty());
}

TEST_CASE("epoll returns 5000 ready fds from one select") {
    FdLeakCheck leak_check;
    REQUIRE(muxio::test::raise_fd_limit(6000) >= 5100);
    std::vector<SocketPair> pairs(2500);
    muxio::EpollSelector<int> selector;
    std::map<int, Events> expected;
    for (const auto& pair : pairs) {
        (void)selector.register_(pair.left.get(), EVENT_WRITE, 0);
        (void)selector.register_(pair.right.get(), EVENT_READ_WRITE, 1);
        expected[pair.left.get()] = EVENT_WRITE;
        expected[pair.right.get()] = EVENT_WRITE;
    }
    const auto ready = selector.select(5s);
    CHECK(ready.size() == 5000);
    CHECK(ready_by_fd(ready) == expected);

    // Fewer registrations after many: still every ready fd at once.
    for (std::size_t i = 0; i < pairs.size(); i += 2) {
        (void)selector.unregister(pairs[i].left.get());
        expected.erase(pairs[i].left.get());
    }
    CHECK(ready_by_fd(selector.select(5s)) == expected);
}

TEST_CASE("epoll fileno is close-on-exec") {
    FdLeakCheck leak_check;
    muxio::EpollSelector<int> selector;
    const int flags = ::fcntl(selector.fileno(), F_GETFD);
    REQUIRE(flags != -1);
    CHECK((flags & FD_CLOEXEC) != 0);
}

TEST_CASE("epoll forgets an fd closed without unregister") {
    FdLeakCheck leak_check;
    SocketPair pair;
    muxio::EpollSelector<int> selector;
    (void)selector.register_(pair.left.get(), EVENT_READ_WRITE, 1);
    const int closed = pair.left.get();
    pair.left.reset();  // the kernel drops the registration with the last reference
    CHECK(selector.select(0s).empty());
    CHECK(selector.unregister(closed).data == 1);  // epoll_ctl(DEL) says EBADF: ignored
}

TEST_CASE("epoll drops events of a file that outlives its unregistered fd number") {
    FdLeakCheck leak_check;
    // The classic epoll trap: epoll watches the open file, not the number.
    // Close an fd while a duplicate keeps its file open and epoll_ctl(DEL)
    // can no longer name it, so the kernel keeps reporting the file under
    // the old registration's token. The selector must drop those events,
    // also once the number belongs to a new registration.
    SocketPair old_pair;
    muxio::EpollSelector<int> selector;
    const int number = old_pair.left.get();
    const UniqueFd duplicate{::dup(number)};
    REQUIRE(duplicate.get() >= 0);
    (void)selector.register_(number, EVENT_READ, 1);
    old_pair.left.reset();
    (void)selector.unregister(number);
    muxio::test::write_all(old_pair.right.get(), "zombie");  // the old file is readable now
    CHECK(selector.select(0s).empty());

    SocketPair new_pair;
    // The new socket takes the freed number (it may have got it already).
    UniqueFd reused;
    if (new_pair.left.get() != number) {
        reused.reset(::dup3(new_pair.left.get(), number, O_CLOEXEC));
        REQUIRE(reused.get() == number);
    }
    (void)selector.register_(number, EVENT_READ, 2);
    CHECK(selector.select(0s).empty());
    CHECK(selector.select(10ms).empty());
    muxio::test::write_all(new_pair.right.get(), "fresh");
    // The zombie stays ready in the kernel for as long as the duplicate is
    // open, and takes its turn in the event buffer (sized for the one live
    // registration), so a select may come back with nothing but dropped
    // events. The new registration's event arrives within a few.
    int delivered = 0;
    for (int attempt = 0; attempt < 4 && delivered == 0; ++attempt) {
        for (const auto& entry : selector.select(5s)) {
            CHECK(entry.key().data == 2);
            CHECK(entry.events() == EVENT_READ);
            ++delivered;
        }
    }
    CHECK(delivered == 1);
}

#endif  // MUXIO_HAS_EPOLL
