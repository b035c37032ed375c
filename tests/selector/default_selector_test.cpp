// DefaultSelector and the factories: the best mechanism first, the
// MUXIO_SELECTOR override, selection by name, and falling back when the
// kernel refuses io_uring or epoll (shown with a seccomp filter in a child).
#include <sys/syscall.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/detail/poller.hpp"
#include "muxio/error.hpp"
#include "muxio/selectors.hpp"
#include "support/seccomp.hpp"
#include "support/selector_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::EVENT_WRITE;
using muxio::test::FdLeakCheck;
using muxio::test::ScopedEnv;
using muxio::test::SocketPair;

namespace {

// A selector that works: it reports a writable socket.
void check_selector_works(muxio::BaseSelector<int>& selector) {
    SocketPair pair;
    (void)selector.register_(pair.left.get(), EVENT_WRITE, 1);
    const auto ready = selector.select(5s);
    REQUIRE(ready.size() == 1);
    CHECK(ready[0].key().fd == pair.left.get());
    CHECK(ready[0].events() == EVENT_WRITE);
    (void)selector.unregister(pair.left.get());
}

}  // namespace

TEST_CASE("available_selectors lists the compiled mechanisms best first") {
    FdLeakCheck leak_check;
    const auto names = muxio::available_selectors();
    REQUIRE(names.size() >= 2);
    // The portable two close the list, poll before select.
    CHECK(names[names.size() - 2] == "poll");
    CHECK(names.back() == "select");
#if MUXIO_HAS_EPOLL
    CHECK(std::find(names.begin(), names.end(), "epoll") != names.end());
#endif
#if MUXIO_HAS_IO_URING
    CHECK(std::find(names.begin(), names.end(), "io_uring") != names.end());
#endif
    const auto factories = muxio::detail::available_pollers();
    REQUIRE(factories.size() == names.size());
    for (std::size_t i = 0; i < names.size(); ++i) {
        CHECK(factories[i].name == names[i]);
    }
}

TEST_CASE("DefaultSelector picks the first available mechanism") {
    FdLeakCheck leak_check;
    const ScopedEnv no_override{"MUXIO_SELECTOR", std::nullopt};
    muxio::DefaultSelector<int> selector;
    CHECK(selector.name() == muxio::available_selectors().front());
    check_selector_works(selector);
}

TEST_CASE("an empty MUXIO_SELECTOR is no override") {
    FdLeakCheck leak_check;
    const ScopedEnv empty{"MUXIO_SELECTOR", std::string{}};
    const muxio::DefaultSelector<int> selector;
    CHECK(selector.name() == muxio::available_selectors().front());
}

TEST_CASE("MUXIO_SELECTOR forces the mechanism named") {
    FdLeakCheck leak_check;
    for (const std::string_view name : muxio::available_selectors()) {
        CAPTURE(name);
        const ScopedEnv forced{"MUXIO_SELECTOR", std::string{name}};
        muxio::DefaultSelector<int> selector;
        CHECK(selector.name() == name);
        check_selector_works(selector);
    }
    const ScopedEnv forced{"MUXIO_SELECTOR", "poll"};
    const muxio::DefaultSelector<int> selector;
    CHECK(selector.name() == "poll");
}

TEST_CASE("an unknown MUXIO_SELECTOR throws invalid_argument listing the names") {
    FdLeakCheck leak_check;
    const ScopedEnv forced{"MUXIO_SELECTOR", "no-such-mechanism"};
    try {
        const muxio::DefaultSelector<int> selector;
        FAIL("DefaultSelector accepted an unknown MUXIO_SELECTOR");
    } catch (const std::invalid_argument& error) {
        const std::string message = error.what();
        CHECK(message.find("no-such-mechanism") != std::string::npos);
        for (const std::string_view name : muxio::available_selectors()) {
            CHECK(message.find(name) != std::string::npos);
        }
    }
}

TEST_CASE("make_selector builds each available mechanism by name") {
    FdLeakCheck leak_check;
    for (const std::string_view name : muxio::available_selectors()) {
        CAPTURE(name);
        auto selector = muxio::make_selector<int>(name);
        REQUIRE(selector != nullptr);
        CHECK(selector->name() == name);
        check_selector_works(*selector);
    }
}

TEST_CASE("make_selector throws invalid_argument for an unknown name") {
    FdLeakCheck leak_check;
    CHECK_THROWS_AS((void)muxio::make_selector<int>("no-such-mechanism"), std::invalid_argument);
    CHECK_THROWS_AS((void)muxio::make_selector<int>(""), std::invalid_argument);
    CHECK_THROWS_AS((void)muxio::make_selector<int>("EPOLL"), std::invalid_argument);
#if !MUXIO_HAS_KQUEUE
    CHECK_THROWS_AS((void)muxio::make_selector<int>("kqueue"), std::invalid_argument);
#endif
}

// ---------------------------------------------------------------------------
// make_first_accepted over fake factories

namespace {

int refusing_calls = 0;
int accepting_calls = 0;
int never_calls = 0;

std::unique_ptr<muxio::detail::Poller> refuse_with_eperm() {
    ++refusing_calls;
    throw muxio::make_system_error(EPERM, "fake_setup");
}
std::unique_ptr<muxio::detail::Poller> refuse_with_enosys() {
    ++refusing_calls;
    throw muxio::make_system_error(ENOSYS, "fake_setup");
}
std::unique_ptr<muxio::detail::Poller> accept_poll() {
    ++accepting_calls;
    return muxio::detail::make_poll_poller();
}
std::unique_ptr<muxio::detail::Poller> must_not_be_called() {
    ++never_calls;
    return muxio::detail::make_select_poller();
}

void reset_calls() {
    refusing_calls = 0;
    accepting_calls = 0;
    never_calls = 0;
}

}  // namespace

TEST_CASE("make_first_accepted skips a refused mechanism") {
    FdLeakCheck leak_check;
    reset_calls();
    const std::array<muxio::detail::PollerFactory, 3> candidates{{
        {"refused", &refuse_with_eperm},
        {"poll", &accept_poll},
        {"select", &must_not_be_called},
    }};
    const auto poller = muxio::detail::make_first_accepted(candidates);
    REQUIRE(poller != nullptr);
    CHECK(poller->name() == "poll");
    CHECK(refusing_calls == 1);
    CHECK(accepting_calls == 1);
    CHECK(never_calls == 0);
}

TEST_CASE("make_first_accepted takes the first mechanism when it is accepted") {
    FdLeakCheck leak_check;
    reset_calls();
    const std::array<muxio::detail::PollerFactory, 2> candidates{{
        {"poll", &accept_poll},
        {"refused", &refuse_with_eperm},
    }};
    CHECK(muxio::detail::make_first_accepted(candidates)->name() == "poll");
    CHECK(refusing_calls == 0);
}

TEST_CASE("make_first_accepted rethrows the last refusal when all refuse") {
    FdLeakCheck leak_check;
    reset_calls();
    const std::array<muxio::detail::PollerFactory, 2> candidates{{
        {"first", &refuse_with_eperm},
        {"second", &refuse_with_enosys},
    }};
    try {
        (void)muxio::detail::make_first_accepted(candidates);
        FAIL("make_first_accepted returned with every candidate refusing");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::error_code{ENOSYS, std::system_category()});
    }
    CHECK(refusing_calls == 2);
}

TEST_CASE("make_first_accepted without candidates throws invalid_argument") {
    FdLeakCheck leak_check;
    CHECK_THROWS_AS((void)muxio::detail::make_first_accepted({}), std::invalid_argument);
}

// ---------------------------------------------------------------------------
// Fallback when the kernel refuses: seccomp in a child process

#if MUXIO_TEST_HAS_SECCOMP

namespace {

// The system calls that create io_uring and epoll instances.
std::vector<std::uint32_t> refused_syscalls() {
    std::vector<std::uint32_t> numbers{SYS_epoll_create1};
#ifdef SYS_epoll_create
    numbers.push_back(SYS_epoll_create);
#endif
#ifdef SYS_io_uring_setup
    numbers.push_back(SYS_io_uring_setup);
#endif
    return numbers;
}

// Makes every system call in refused_syscalls() fail with EPERM in this
// process, as a container runtime's seccomp profile may. Returns false if the
// kernel would not install the filter.
bool refuse_io_uring_and_epoll() {
    return muxio::test::refuse_syscalls_in_this_process(refused_syscalls(), EPERM);
}

// What the child found, written to the pipe as one line.
std::string child_report() {
    if (!refuse_io_uring_and_epoll()) {
        return "no-seccomp";
    }
    std::string report;
    try {
        const muxio::DefaultSelector<int> selector;
        report += std::string{selector.name()};
    } catch (const std::exception& error) {
        report += std::string{"default-threw:"} + error.what();
    }
#if MUXIO_HAS_EPOLL
    try {
        (void)muxio::make_selector<int>("epoll");
        report += " epoll-accepted";
    } catch (const std::system_error& error) {
        report += error.code() == std::error_code{EPERM, std::system_category()} ? " epoll-eperm" : " epoll-other";
    }
#endif
#if MUXIO_HAS_IO_URING
    try {
        (void)muxio::make_selector<int>("io_uring");
        report += " io_uring-accepted";
    } catch (const std::system_error& error) {
        report +=
            error.code() == std::error_code{EPERM, std::system_category()} ? " io_uring-eperm" : " io_uring-other";
    }
#endif
    return report;
}

}  // namespace

TEST_CASE("DefaultSelector falls back to poll when the kernel refuses io_uring and epoll") {
    FdLeakCheck leak_check;
    const ScopedEnv no_override{"MUXIO_SELECTOR", std::nullopt};
    const auto report = muxio::test::report_from_child(child_report, 20s);
    REQUIRE_MESSAGE(report.has_value(), "the child did not finish");
    REQUIRE_MESSAGE(*report != "no-seccomp", "the kernel refused the seccomp filter");
    std::string expected = "poll";
#if MUXIO_HAS_EPOLL
    expected += " epoll-eperm";
#endif
#if MUXIO_HAS_IO_URING
    expected += " io_uring-eperm";
#endif
    CHECK(*report == expected);
}

#endif  // MUXIO_TEST_HAS_SECCOMP
