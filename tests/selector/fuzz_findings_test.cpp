// Cases the differential selector fuzzer (tests/fuzz/selector_model.hpp)
// found, each reduced to the few calls that show it, on every backend
// compiled here.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include <doctest/doctest.h>

#include "muxio/selectors.hpp"
#include "support/selector_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::EVENT_READ;
using muxio::EVENT_READ_WRITE;
using muxio::Events;
using muxio::test::FdLeakCheck;
using muxio::test::ready_by_fd;
using muxio::test::SocketPair;
using muxio::test::UniqueFd;

TEST_CASE("register_ of a huge closed descriptor number throws EBADF without growing a table to reach it") {
    FdLeakCheck leak_check;
    for (const std::string_view name : muxio::available_selectors()) {
        CAPTURE(name);
        const auto selector = muxio::make_selector<int>(name);
        SocketPair pair;
        (void)selector->register_(pair.left.get(), EVENT_READ, 1);
        for (const int number : {INT_MAX, INT_MAX - 1, 1 << 30}) {
            CAPTURE(number);
            try {
                (void)selector->register_(number, EVENT_READ, 2);
                FAIL("register_ accepted a closed descriptor");
            } catch (const std::system_error& error) {
                CHECK(error.code() == std::error_code{EBADF, std::system_category()});
            } catch (const std::invalid_argument&) {
                CHECK(name == "select");  // FD_SETSIZE and above
            }
        }
        CHECK(selector->get_map().size() == 1);
        muxio::test::write_all(pair.right.get(), "x");
        CHECK(ready_by_fd(selector->select(5s)) == std::map<int, Events>{{pair.left.get(), EVENT_READ}});
    }
}

TEST_CASE("modify of a closed registration whose number names a new file watches that file") {
    FdLeakCheck leak_check;
    for (const std::string_view name : muxio::available_selectors()) {
        CAPTURE(name);
        const auto selector = muxio::make_selector<int>(name);
        std::optional<SocketPair> old_pair{std::in_place};
        SocketPair new_pair;  // made first, so that it does not take the number
        const int number = old_pair->left.get();
        (void)selector->register_(number, EVENT_READ, 1);
        old_pair.reset();                                  // closed behind the selector's back
        (void)selector->modify(number, EVENT_READ_WRITE);  // meets it closed: a closed registration
        CHECK(ready_by_fd(selector->select(0s)) == std::map<int, Events>{{number, EVENT_READ_WRITE}});

        const UniqueFd reused{::dup3(new_pair.left.get(), number, O_CLOEXEC)};
        REQUIRE(reused.get() == number);
        (void)selector->modify(number, EVENT_READ);
        CHECK(selector->select(0s).empty());  // the new socket has nothing to read
        muxio::test::write_all(new_pair.right.get(), "x");
        CHECK(ready_by_fd(selector->select(5s)) == std::map<int, Events>{{number, EVENT_READ}});
        (void)selector->unregister(number);
    }
}

namespace {

// Leaves the selector with a stale event to drop: a registration unregistered
// after its number was closed while a duplicate keeps its file open, and
// that file readable. epoll's EPOLL_CTL_DEL cannot name the entry then, and
// the next wait that reports nothing else rebuilds the kernel set.
muxio::test::UniqueFd leave_stale_event(muxio::BaseSelector<int>& selector) {
    SocketPair pair;
    const int number = pair.left.get();
    (void)selector.register_(number, EVENT_READ, 9);
    UniqueFd duplicate{::dup(number)};
    REQUIRE(duplicate.get() >= 0);
    pair.left.reset();
    muxio::test::write_all(pair.right.get(), "stale");
    (void)selector.unregister(number);
    return duplicate;
}

}  // namespace

TEST_CASE("select survives a rebuild that meets the number of a closed registration in the new kernel set") {
    FdLeakCheck leak_check;
    for (const std::string_view name : muxio::available_selectors()) {
        CAPTURE(name);
        const auto selector = muxio::make_selector<int>(name);
        // The lowest free number once closed, so that the fresh set of a
        // rebuild gets it: a registration still names it.
        std::optional<SocketPair> closed_pair{std::in_place};
        const int closed = closed_pair->left.get();
        (void)selector->register_(closed, EVENT_READ, 1);
        SocketPair live;
        (void)selector->register_(live.left.get(), EVENT_READ, 2);
        const UniqueFd duplicate = leave_stale_event(*selector);
        closed_pair.reset();  // closed behind the selector's back
        CHECK_NOTHROW((void)selector->select(0s));
        CHECK_NOTHROW((void)selector->select(0s));
        (void)selector->unregister(closed);
        CHECK(selector->select(0s).empty());
        muxio::test::write_all(live.right.get(), "x");
        CHECK(ready_by_fd(selector->select(5s)) == std::map<int, Events>{{live.left.get(), EVENT_READ}});
    }
}

TEST_CASE("select survives a rebuild after the selector's own descriptor took a closed registration's number") {
    FdLeakCheck leak_check;
    for (const std::string_view name : muxio::available_selectors()) {
        CAPTURE(name);
        const auto selector = muxio::make_selector<int>(name);
        std::optional<SocketPair> closed_pair{std::in_place};
        const int closed = closed_pair->left.get();
        (void)selector->register_(closed, EVENT_READ, 1);
        SocketPair live;
        (void)selector->register_(live.left.get(), EVENT_READ, 2);
        const UniqueFd duplicate = leave_stale_event(*selector);
        closed_pair.reset();  // closed behind the selector's back
        // epoll makes the descriptor it hands out now: the lowest free number.
        (void)selector->fileno();
        CHECK_NOTHROW((void)selector->select(0s));
        CHECK_NOTHROW((void)selector->select(0s));
        (void)selector->unregister(closed);
        CHECK(selector->select(0s).empty());
        muxio::test::write_all(live.right.get(), "x");
        CHECK(ready_by_fd(selector->select(5s)) == std::map<int, Events>{{live.left.get(), EVENT_READ}});
    }
}

namespace {

// Hang-ups without an error: a socket whose send buffer is full when its
// peer shuts down both directions (nothing frees the buffer, so it never
// turns writable), and a pipe's read end registered for both once its
// writer is gone. `hang_up` is how the backend reports one.
void check_hang_ups(std::string_view name, Events hang_up) {
    CAPTURE(name);
    const auto selector = muxio::make_selector<int>(name);
    SocketPair pair;
    muxio::test::fill_until_blocked(pair.left.get());
    (void)selector->register_(pair.left.get(), muxio::EVENT_WRITE, 1);
    CHECK(selector->select(0s).empty());
    REQUIRE(::shutdown(pair.right.get(), SHUT_RDWR) == 0);
    std::map<int, Events> expected;
    if (const Events masked = hang_up & muxio::EVENT_WRITE; masked) {
        expected.emplace(pair.left.get(), masked);
        CHECK(ready_by_fd(selector->select(5s)) == expected);
    }

    muxio::test::Pipe pipe;
    (void)selector->register_(pipe.read_end.get(), EVENT_READ_WRITE, 2);
    pipe.write_end.reset();
    expected.emplace(pipe.read_end.get(), hang_up);
    CHECK(ready_by_fd(selector->select(5s)) == expected);
}

}  // namespace

TEST_CASE("a hang-up without an error is ready for reading and writing") {
    FdLeakCheck leak_check;
    for (const std::string_view name : muxio::available_selectors()) {
        if (name != "select") {
            check_hang_ups(name, EVENT_READ_WRITE);
        }
    }
}

// select(2) has no hang-up condition of its own: the kernel puts one in the
// read set only, and the select backend passes that on (its documented
// exception to the contract). Telling a hang-up from readable data would
// take a poll(2) per readable descriptor registered for writing only, and
// such a descriptor with data queued would end every wait at once.
TEST_CASE("select reports a hang-up without an error as ready for reading only") {
    FdLeakCheck leak_check;
    check_hang_ups("select", EVENT_READ);
}

TEST_CASE("modify of a closed registration whose number names a new file forgets the old file a duplicate keeps") {
    FdLeakCheck leak_check;
    for (const std::string_view name : muxio::available_selectors()) {
        CAPTURE(name);
        const auto selector = muxio::make_selector<int>(name);
        std::optional<SocketPair> old_pair{std::in_place};
        SocketPair new_pair;  // made first, so that it does not take the number
        const int number = old_pair->left.get();
        (void)selector->register_(number, EVENT_READ_WRITE, 1);
        const UniqueFd duplicate{::dup(number)};  // keeps the old file open
        REQUIRE(duplicate.get() >= 0);
        old_pair.reset();  // the number closed behind the selector's back; the old file hung up
        (void)selector->modify(number, muxio::EVENT_WRITE);  // meets it closed
        const UniqueFd reused{::dup3(new_pair.left.get(), number, O_CLOEXEC)};
        REQUIRE(reused.get() == number);
        (void)selector->modify(number, EVENT_READ);
        // The old file is ready (hung up), the new one has nothing to read.
        CHECK(selector->select(0s).empty());
        muxio::test::write_all(new_pair.right.get(), "x");
        CHECK(ready_by_fd(selector->select(5s)) == std::map<int, Events>{{number, EVENT_READ}});
        (void)selector->unregister(number);
        CHECK(selector->select(0s).empty());
    }
}

TEST_CASE("select reports every ready registration when stale events take room in the kernel's answer") {
    FdLeakCheck leak_check;
    for (const std::string_view name : muxio::available_selectors()) {
        CAPTURE(name);
        const auto selector = muxio::make_selector<int>(name);
        std::optional<SocketPair> old_pair{std::in_place};
        SocketPair b;
        SocketPair c;
        const int number = old_pair->left.get();
        (void)selector->register_(number, EVENT_READ, 1);
        (void)selector->register_(b.left.get(), EVENT_READ, 2);
        // A stale entry in epoll's set: the number closed while a duplicate
        // keeps its file open, that file ready, then unregistered.
        const UniqueFd duplicate{::dup(number)};
        REQUIRE(duplicate.get() >= 0);
        muxio::test::write_all(old_pair->right.get(), "stale");
        old_pair->left.reset();
        (void)selector->unregister(number);
        // Two registrations again, both ready after the stale one.
        const UniqueFd reused{::dup3(c.left.get(), number, O_CLOEXEC)};
        REQUIRE(reused.get() == number);
        (void)selector->register_(number, EVENT_READ, 3);
        muxio::test::write_all(b.right.get(), "b");
        muxio::test::write_all(c.right.get(), "c");
        const std::map<int, Events> both{{b.left.get(), EVENT_READ}, {number, EVENT_READ}};
        CHECK(ready_by_fd(selector->select(0s)) == both);
        CHECK(ready_by_fd(selector->select(0s)) == both);
        (void)selector->unregister(number);
        (void)selector->unregister(b.left.get());
    }
}

TEST_CASE("select reports every ready registration after reregister of a closed one whose old file a duplicate keeps") {
    FdLeakCheck leak_check;
    for (const std::string_view name : muxio::available_selectors()) {
        CAPTURE(name);
        const auto selector = muxio::make_selector<int>(name);
        std::optional<SocketPair> old_pair{std::in_place};
        SocketPair other;
        SocketPair fresh;
        const int number = old_pair->left.get();
        (void)selector->register_(number, EVENT_READ_WRITE, 1);
        (void)selector->register_(other.left.get(), muxio::EVENT_WRITE, 2);  // writable: ready
        const UniqueFd duplicate{::dup(number)};                             // keeps the old file open, and writable
        REQUIRE(duplicate.get() >= 0);
        old_pair->left.reset();
        (void)selector->modify(number, EVENT_READ);  // meets it closed
        const UniqueFd reused{::dup3(fresh.left.get(), number, O_CLOEXEC)};
        REQUIRE(reused.get() == number);
        (void)selector->reregister(number, EVENT_READ);  // the old file's entry is stale from now on
        muxio::test::write_all(fresh.right.get(), "x");
        const std::map<int, Events> both{{number, EVENT_READ}, {other.left.get(), muxio::EVENT_WRITE}};
        CHECK(ready_by_fd(selector->select(0s)) == both);
        CHECK(ready_by_fd(selector->select(0s)) == both);
        (void)selector->unregister(number);
        (void)selector->unregister(other.left.get());
    }
}
