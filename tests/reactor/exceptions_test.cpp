// Exceptions escaping callbacks: the handler set with set_exception_handler
// receives them, the default one logs through the `muxio` logger, and in
// both cases the other callbacks of the iteration still run.
#include <algorithm>
#include <chrono>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <spdlog/logger.h>

#include "muxio/log.hpp"
#include "muxio/reactor.hpp"
#include "reactor/reactor_support.hpp"
#include "support/captured_log.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::reactor_test::ManualClock;
using muxio::test::CapturedLog;
using muxio::test::FdLeakCheck;

namespace {

std::string message_of(const std::exception_ptr& error) {
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        return e.what();
    } catch (...) {
        return "not a std::exception";
    }
}

}  // namespace

TEST_CASE("the exception handler receives the exception and the other callbacks still run") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    std::vector<std::string> received;
    reactor.set_exception_handler([&](std::exception_ptr error) { received.push_back(message_of(error)); });
    std::vector<std::string> calls;
    reactor.call_soon([&] { calls.emplace_back("before"); });
    reactor.call_soon([&] {
        calls.emplace_back("thrower");
        throw std::runtime_error{"soon failed"};
    });
    reactor.call_soon([&] { calls.emplace_back("after"); });
    reactor.call_later(1ms, [] { throw std::invalid_argument{"timer failed"}; });
    reactor.call_later(1ms, [&] { calls.emplace_back("timer after"); });
    reactor.call_soon_threadsafe([] { throw std::out_of_range{"threadsafe failed"}; });
    clock.advance(1ms);
    CHECK(reactor.run_once(0s) == 6);
    CHECK(calls == std::vector<std::string>{"before", "thrower", "after", "timer after"});
    REQUIRE(received.size() == 3);
    CHECK(received[0] == "soon failed");
    CHECK(std::find(received.begin(), received.end(), "timer failed") != received.end());
    CHECK(std::find(received.begin(), received.end(), "threadsafe failed") != received.end());
}

TEST_CASE("the default exception handler logs the exception and goes on") {
    FdLeakCheck leak_check;
    CapturedLog log;
    Reactor reactor;
    bool after = false;
    reactor.call_soon([] { throw std::runtime_error{"distinctive failure 1234"}; });
    reactor.call_soon([&] { after = true; });
    CHECK(reactor.run_once(0s) == 2);
    CHECK(after);
    CHECK(log.text().find("distinctive failure 1234") != std::string::npos);
}

TEST_CASE("the default exception handler logs an exception of unknown type") {
    FdLeakCheck leak_check;
    CapturedLog log;
    Reactor reactor;
    bool after = false;
    reactor.call_soon([] { throw 42; });
    reactor.call_soon([&] { after = true; });
    CHECK(reactor.run_once(0s) == 2);
    CHECK(after);
    CHECK(log.text().find("unknown exception") != std::string::npos);
}

TEST_CASE("an exception handler that throws falls back to the default one") {
    FdLeakCheck leak_check;
    CapturedLog log;
    Reactor reactor;
    int handled = 0;
    reactor.set_exception_handler([&](const std::exception_ptr&) {
        ++handled;
        throw std::runtime_error{"handler failed too"};
    });
    bool after = false;
    reactor.call_soon([] { throw std::runtime_error{"callback failed"}; });
    reactor.call_soon([&] { after = true; });
    CHECK(reactor.run_once(0s) == 2);
    CHECK(handled == 1);
    CHECK(after);
    CHECK(log.text().find("handler failed too") != std::string::npos);
}

TEST_CASE("an empty exception handler restores the default") {
    FdLeakCheck leak_check;
    CapturedLog log;
    Reactor reactor;
    int handled = 0;
    reactor.set_exception_handler([&](const std::exception_ptr&) { ++handled; });
    reactor.set_exception_handler({});
    reactor.call_soon([] { throw std::runtime_error{"back to the default"}; });
    CHECK(reactor.run_once(0s) == 1);
    CHECK(handled == 0);
    CHECK(log.text().find("back to the default") != std::string::npos);
}

TEST_CASE("an exception escaping a callback does not end run") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int handled = 0;
    reactor.set_exception_handler([&](const std::exception_ptr&) { ++handled; });
    reactor.call_soon([&] {
        reactor.call_soon([&] { reactor.stop(); });
        throw std::runtime_error{"first iteration"};
    });
    bool timed_out = false;
    reactor.call_later(5s, [&] {
        timed_out = true;
        reactor.stop();
    });
    CHECK_NOTHROW(reactor.run());
    CHECK(handled == 1);
    CHECK_FALSE(timed_out);
    CHECK_FALSE(reactor.is_running());
}

TEST_CASE("an exception handler may stop the loop") {
    FdLeakCheck leak_check;
    Reactor reactor;
    reactor.set_exception_handler([&](const std::exception_ptr&) { reactor.stop(); });
    bool timed_out = false;
    reactor.call_later(5s, [&] {
        timed_out = true;
        reactor.stop();
    });
    reactor.call_soon([] { throw std::runtime_error{"stop the loop"}; });
    reactor.run();
    CHECK_FALSE(timed_out);
}
