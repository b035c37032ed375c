// Name resolution: localhost and numeric hosts, errors, and cancellation
// while a worker thread is busy with the lookup. Only names the machine
// answers for itself (/etc/hosts, /etc/services): never the network.
#include <netdb.h>
#include <sys/socket.h>

#include <chrono>
#include <stop_token>
#include <string>
#include <system_error>
#include <vector>

#include <doctest/doctest.h>

#include "coro/coro_support.hpp"
#include "muxio/combinators.hpp"
#include "muxio/error.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "muxio/task_group.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::Resolver;
using muxio::SocketAddress;
using muxio::Task;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::test::FdLeakCheck;

namespace {

using Addresses = std::vector<SocketAddress>;

// Stores the outcome of a resolve: "cancelled" or the addresses' text.
Task<void> outcome(Task<Addresses> lookup, std::string& result, Live /*held*/) {
    try {
        const Addresses addresses = co_await std::move(lookup);
        result.clear();
        for (const SocketAddress& address : addresses) {
            result += address.to_string() + " ";
        }
    } catch (const muxio::Cancelled&) {
        result = "cancelled";
    }
}

Task<void> resolve_localhost(Reactor& reactor, int& count, Live /*held*/) {
    const Addresses addresses = co_await muxio::resolve(reactor, "localhost", "80");
    CHECK_FALSE(addresses.empty());
    CHECK(addresses.front().port() == 80);
    ++count;
}

// Drains what a worker may still post: a few polling iterations.
void settle(Reactor& reactor) {
    for (int i = 0; i < 10 && reactor.scheduled_count() > 0; ++i) {
        reactor.run_once(0s);
    }
    reactor.run_once(0s);
}

}  // namespace

TEST_CASE("resolve localhost returns loopback addresses with the port") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    const Addresses addresses = muxio::run_until_complete(
        reactor, muxio::with_timeout(reactor, 30s, muxio::resolve(reactor, "localhost", 8080)));
    REQUIRE_FALSE(addresses.empty());
    for (const SocketAddress& address : addresses) {
        CAPTURE(address.to_string());
        CHECK(address.is_loopback());
        CHECK(address.port() == 8080);
    }
    const Addresses v4_only = muxio::run_until_complete(
        reactor, muxio::resolve(reactor, "localhost", "80", muxio::ResolveHints{.family = AF_INET}));
    REQUIRE_FALSE(v4_only.empty());
    for (const SocketAddress& address : v4_only) {
        CHECK(address.is_ipv4());
    }
}

TEST_CASE("resolve of numeric hosts answers without a lookup, any socket type once") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const Addresses v4 = muxio::run_until_complete(reactor, muxio::resolve(reactor, "127.0.0.1", 80));
    REQUIRE(v4.size() == 1);
    CHECK(v4[0] == SocketAddress::ipv4("127.0.0.1", 80));
    const Addresses v6 =
        muxio::run_until_complete(reactor, muxio::resolve(reactor, "::1", "443", muxio::ResolveHints{.socktype = 0}));
    REQUIRE(v6.size() == 1);  // stream, datagram and raw give one address
    CHECK(v6[0] == SocketAddress::ipv6("::1", 443));
}

TEST_CASE("resolve failures name the host and carry getaddrinfo's code") {
    FdLeakCheck leak_check;
    Reactor reactor;
    try {
        // AI_NUMERICHOST refuses a name without asking anyone: the worker's error path.
        (void)muxio::run_until_complete(
            reactor, muxio::resolve(reactor, "localhost", "80", muxio::ResolveHints{.flags = AI_NUMERICHOST}));
        FAIL("resolve succeeded");
    } catch (const std::system_error& error) {
        CHECK(error.code() == std::error_code{EAI_NONAME, muxio::resolver_category()});
        CHECK(std::string{error.what()}.starts_with("resolve localhost:80: "));
    }
    try {
        (void)muxio::run_until_complete(reactor, muxio::resolve(reactor, "localhost", "no-such-service-muxio"));
        FAIL("resolve succeeded");
    } catch (const std::system_error& error) {
        CHECK(error.code().category() == muxio::resolver_category());
        CHECK(std::string{error.what()}.starts_with("resolve localhost:no-such-service-muxio: "));
    }
}

TEST_CASE("resolving with a stopped token is cancelled before any lookup") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    std::stop_source source;
    source.request_stop();
    std::string result;
    muxio::run_until_complete(
        reactor, outcome(muxio::resolve(reactor, "localhost", 80, {}, source.get_token()), result, Live{}));
    CHECK(result == "cancelled");
    // Through the ambient token of the awaiting task too.
    result.clear();
    muxio::run_until_complete(reactor, outcome(muxio::resolve(reactor, "localhost", 80), result, Live{}),
                              source.get_token());
    CHECK(result == "cancelled");
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("a resolve cancelled while its lookup runs ends in Cancelled and the late result is dropped") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    // The stop is requested on the loop thread right after the lookup was
    // queued, before the loop can run anything the worker posts: whether
    // the worker has finished by then or not, the result must be dropped.
    // By the lookup's own token, then by the ambient token of its task.
    auto by_token = [](Reactor& loop, Resolver& r, std::string& result) -> Task<void> {
        std::stop_source source;
        muxio::TaskGroup group;
        group.spawn(outcome(r.resolve(loop, "localhost", "80", {}, source.get_token()), result, Live{}));
        source.request_stop();
        co_await group.join();
    };
    auto by_ambient = [](Reactor& loop, Resolver& r, std::string& result) -> Task<void> {
        muxio::TaskGroup group;
        group.spawn(outcome(r.resolve(loop, "localhost", "80"), result, Live{}));
        group.cancel();
        co_await group.join();
    };
    {
        Resolver resolver{1};
        for (int round = 0; round < 20; ++round) {
            std::string result;
            muxio::run_until_complete(reactor, by_token(reactor, resolver, result));
            CHECK(result == "cancelled");
            muxio::run_until_complete(reactor, by_ambient(reactor, resolver, result));
            CHECK(result == "cancelled");
        }
    }  // joins the worker: whatever it finished is posted by now
    settle(reactor);
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("a resolve whose task is destroyed while waiting leaves no resumption behind") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    {
        Resolver resolver{2};
        auto body = [](Reactor& loop, Resolver& r, std::string& result) -> Task<void> {
            muxio::TaskGroup group;
            for (int i = 0; i < 8; ++i) {
                group.spawn(outcome(r.resolve(loop, "localhost", "80"), result, Live{}));
            }
            co_return;  // the group goes with its children still waiting: their frames are destroyed
        };
        std::string result = "untouched";
        muxio::run_until_complete(reactor, body(reactor, resolver, result));
        CHECK(result == "untouched");
    }                 // joins the workers, which drop their results
    settle(reactor);  // a resumption posted meanwhile would touch a destroyed frame here (ASan)
    CHECK(reactor.scheduled_count() == 0);
}

TEST_CASE("many tasks resolve at once through the shared resolver") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    Reactor reactor;
    constexpr int tasks = 64;
    int resolved = 0;
    auto all = [](Reactor& loop, int& count) -> Task<void> {
        muxio::TaskGroup group;
        for (int i = 0; i < tasks; ++i) {
            group.spawn(resolve_localhost(loop, count, Live{}));
        }
        co_await group.join();
    };
    muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 60s, all(reactor, resolved)));
    CHECK(resolved == tasks);
}

TEST_CASE("a resolver needs at least one thread") {
    CHECK_THROWS_AS(Resolver{0}, std::invalid_argument);
}
