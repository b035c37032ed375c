// The error_code forms of add_reader/add_writer/remove_reader/remove_writer:
// every failure is a code, the reactor is left as it was, and the callback
// of a failed add is destroyed without running.
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <future>
#include <system_error>
#include <thread>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::Tracked;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;

TEST_CASE("add_reader with an error_code registers like the throwing form and clears the code") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        int calls = 0;
        std::error_code ec = std::make_error_code(std::errc::io_error);
        reactor.add_writer(
            pair.left.get(), [&] { ++calls; }, ec);
        CHECK_FALSE(ec);
        CHECK(reactor.has_writer(pair.left.get()));
        CHECK(reactor.run_once(0s) == 1);
        CHECK(calls == 1);
        muxio::test::write_all(pair.right.get(), "x");
        reactor.add_reader(
            pair.left.get(), [&] { ++calls; }, ec);
        CHECK_FALSE(ec);
        CHECK(reactor.run_once(0s) == 2);
        CHECK(reactor.remove_reader(pair.left.get(), ec));
        CHECK_FALSE(ec);
        CHECK_FALSE(reactor.remove_reader(pair.left.get(), ec));
        CHECK_FALSE(ec);
        CHECK(reactor.remove_writer(pair.left.get(), ec));
        CHECK_FALSE(ec);
    }
}

TEST_CASE("add_reader with an error_code gives invalid_argument for a bad fd or an empty callback and keeps nothing") {
    FdLeakCheck leak_check;
    Reactor reactor;
    std::atomic<int> destroyed{0};
    std::error_code ec;
    reactor.add_reader(
        -1, [tracked = Tracked{destroyed}] {}, ec);
    CHECK(ec == std::errc::invalid_argument);
    CHECK(destroyed == 1);
    SocketPair pair;
    reactor.add_writer(pair.left.get(), muxio::Callback{}, ec);
    CHECK(ec == std::errc::invalid_argument);
    CHECK_FALSE(reactor.has_writer(pair.left.get()));
    CHECK(reactor.stats().descriptors == 0);
}

TEST_CASE("add_reader with an error_code on a closed fd gives EBADF, destroys the callback and keeps the other side") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        SocketPair pair;
        std::atomic<int> destroyed{0};
        std::error_code ec;
        {
            const int closed = pair.right.release();
            ::close(closed);
            reactor.add_reader(
                closed, [tracked = Tracked{destroyed}] {}, ec);
            CHECK(ec == std::errc::bad_file_descriptor);
            CHECK(ec.category() == std::system_category());
            CHECK(destroyed == 1);
            CHECK_FALSE(reactor.has_reader(closed));
        }
        // A side the fd had stays when adding the other one fails.
        int writes = 0;
        const int fd = pair.left.get();
        reactor.add_writer(fd, [&] { ++writes; });
        const int closed = pair.left.release();
        ::close(closed);
        reactor.add_reader(
            fd, [tracked = Tracked{destroyed}] {}, ec);
        CHECK(ec == std::errc::bad_file_descriptor);
        CHECK(destroyed == 2);
        CHECK(reactor.has_writer(fd));
        CHECK_FALSE(reactor.has_reader(fd));
        CHECK(reactor.stats().writers == 1);
        CHECK(reactor.stats().readers == 0);
        (void)reactor.remove_writer(fd, ec);
        CHECK_FALSE(ec);
        CHECK_FALSE(reactor.has_writer(fd));
    }
}

TEST_CASE("add_reader with an error_code on a closed reactor gives operation_canceled") {
    FdLeakCheck leak_check;
    Reactor reactor;
    reactor.close();
    SocketPair pair;
    std::atomic<int> destroyed{0};
    std::error_code ec;
    reactor.add_reader(
        pair.left.get(), [tracked = Tracked{destroyed}] {}, ec);
    CHECK(ec == std::errc::operation_canceled);
    CHECK(destroyed == 1);
    CHECK_FALSE(reactor.remove_reader(pair.left.get(), ec));
    CHECK_FALSE(ec);  // as remove_reader(): false, no error
}

TEST_CASE("add_reader with an error_code from another thread while the reactor runs gives operation_not_permitted") {
    FdLeakCheck leak_check;
    Reactor reactor;
    SocketPair pair;
    std::error_code add_ec;
    std::error_code remove_ec;
    bool removed = true;
    std::atomic<int> destroyed{0};
    reactor.call_soon([&] {
        // Asked from another thread while this thread runs the reactor.
        std::async(std::launch::async, [&] {
            reactor.add_reader(
                pair.left.get(), [tracked = Tracked{destroyed}] {}, add_ec);
            removed = reactor.remove_reader(pair.left.get(), remove_ec);
        }).get();
    });
    CHECK(reactor.run_once(0s) == 1);
    CHECK(add_ec == std::errc::operation_not_permitted);
    CHECK(remove_ec == std::errc::operation_not_permitted);
    CHECK_FALSE(removed);
    CHECK(destroyed == 1);
    CHECK_FALSE(reactor.has_reader(pair.left.get()));
}
