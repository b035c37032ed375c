// ReactorGroup: setups on each reactor's thread in order, connections spread
// over the reactors by SO_REUSEPORT, stopping that drains every reactor,
// post() across threads, and errors that end run() without a hang. Run
// these under TSan too (the tsan preset): a callback that ran on the wrong
// thread touches a plain variable of another thread there.
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/reactor_group.hpp"
#include "muxio/server.hpp"
#include "muxio/transport.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::ReactorGroup;
using muxio::test::FdLeakCheck;
using muxio::test::UniqueFd;

namespace {

// Every run() below ends within this even if the group never stops: each
// reactor stops itself and the test fails on the flag.
constexpr auto watchdog_limit = 20s;

struct Watchdogs {
    explicit Watchdogs(std::size_t count) : fired(count) {}
    void arm(Reactor& reactor, std::size_t index) {
        reactor.call_later(watchdog_limit, [this, &reactor, index] {
            fired[index] = true;
            reactor.stop();
        });
    }
    [[nodiscard]] bool any_fired() const {
        return std::any_of(fired.begin(), fired.end(), [](const std::atomic<bool>& f) { return f.load(); });
    }
    std::vector<std::atomic<bool>> fired;
};

// A blocking TCP client on 127.0.0.1:`port`, its reads and writes bounded
// by a timeout so that a server that never answers fails the test.
UniqueFd connect_client(std::uint16_t port, int receive_buffer = 0) {
    UniqueFd fd{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(fd.get() >= 0);
    const timeval timeout{10, 0};
    REQUIRE(::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) == 0);
    REQUIRE(::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) == 0);
    if (receive_buffer > 0) {
        REQUIRE(::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer) == 0);
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
        // Interrupted (see interruptions_allowed): the handshake goes on.
        REQUIRE(errno == EINTR);
        pollfd writable{fd.get(), POLLOUT, 0};
        REQUIRE(::poll(&writable, 1, 10'000) == 1);
        int error = -1;
        socklen_t length = sizeof error;
        REQUIRE(::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &error, &length) == 0);
        REQUIRE(error == 0);
    }
    return fd;
}

// An io_uring ring torn down (a reactor closed, by this test or one before
// it in the same process) sends task work, as a signal, to every thread
// that submitted to it, this one among them, some milliseconds later: a
// blocking call with a timeout fails with EINTR then, and is tried again.
constexpr int interruptions_allowed = 100;

// Receives exactly `size` bytes (true), or fails on an error, a timeout or
// the end of the stream (false).
bool receive_exactly(int fd, char* data, std::size_t size) {
    int interruptions = 0;
    std::size_t have = 0;
    while (have < size) {
        const ssize_t got = ::recv(fd, data + have, size - have, 0);
        if (got < 0 && errno == EINTR && ++interruptions <= interruptions_allowed) {
            continue;
        }
        if (got <= 0) {
            return false;
        }
        have += static_cast<std::size_t>(got);
    }
    return true;
}

// Reads until end of file (true) or an error or timeout (false), counting bytes.
bool read_to_eof(int fd, std::size_t& total) {
    std::array<char, 65536> buffer{};
    for (;;) {
        const ssize_t got = ::recv(fd, buffer.data(), buffer.size(), 0);
        if (got == 0) {
            return true;
        }
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        total += static_cast<std::size_t>(got);
    }
}

// Binds reactor `index`'s listener: the first on port 0, the others on the
// port it got, all with SO_REUSEPORT.
muxio::SocketAddress listen_shared(muxio::Server& server, std::size_t index, std::uint16_t& port) {
    muxio::ListenOptions options;
    options.reuse_port = true;
    const muxio::SocketAddress bound = server.listen("127.0.0.1", index == 0 ? 0 : port, options);
    if (index == 0) {
        port = bound.port();
    }
    return bound;
}

// Echoes what it reads, and counts its connection on the reactor that
// serves it, noting whether that was the reactor's own thread.
class CountingEcho final : public muxio::Protocol {
public:
    CountingEcho(std::size_t& connections, std::thread::id owner, std::atomic<int>& wrong_thread)
        : connections_{connections}, owner_{owner}, wrong_thread_{wrong_thread} {}
    void connection_made(muxio::Transport& transport) override {
        transport_ = &transport;
        ++connections_;  // a plain count: only the reactor's thread touches it
        if (std::this_thread::get_id() != owner_) {
            ++wrong_thread_;
        }
    }
    void data_received(std::span<const std::byte> data) override { transport_->write(data); }

private:
    muxio::Transport* transport_ = nullptr;
    std::size_t& connections_;
    std::thread::id owner_;
    std::atomic<int>& wrong_thread_;
};

// Sends `greeting` bytes on connection_made: more than a client with a small
// receive buffer takes at once, so some of it waits in the transport.
class Greeter final : public muxio::Protocol {
public:
    Greeter(std::size_t size, std::size_t& connections) : size_{size}, connections_{connections} {}
    void connection_made(muxio::Transport& transport) override {
        ++connections_;
        // A small send buffer too, or the kernel's autotuning takes it all.
        const int send_buffer = 4096;
        REQUIRE(::setsockopt(transport.fileno(), SOL_SOCKET, SO_SNDBUF, &send_buffer, sizeof send_buffer) == 0);
        transport.write(std::string(size_, 'g'));
    }

private:
    std::size_t size_;
    std::size_t& connections_;
};

}  // namespace

TEST_CASE("a ReactorGroup of zero threads is refused with std::invalid_argument") {
    FdLeakCheck leak_check;
    CHECK_THROWS_AS(ReactorGroup{0}, std::invalid_argument);
}

TEST_CASE("ReactorGroup::reactor and post refuse an index past size() with std::out_of_range") {
    FdLeakCheck leak_check;
    ReactorGroup group{2};
    CHECK(group.size() == 2);
    CHECK_NOTHROW((void)group.reactor(1));
    CHECK_THROWS_AS((void)group.reactor(2), std::out_of_range);
    CHECK_THROWS_AS(group.post(2, [] {}), std::out_of_range);
}

TEST_CASE("ReactorGroup::run refuses an empty setup with std::invalid_argument and can still run afterwards") {
    FdLeakCheck leak_check;
    ReactorGroup group{1};
    CHECK_THROWS_AS(group.run({}), std::invalid_argument);
    group.stop_threadsafe();
    bool set_up = false;
    group.run([&](Reactor& /*reactor*/, std::size_t /*index*/) -> ReactorGroup::StopCallback {
        set_up = true;
        return {};
    });
    CHECK(set_up);
}

TEST_CASE(
    "ReactorGroup::run sets up each reactor on its own thread in index order, runs reactor 0 on the caller's thread, "
    "and runs and destroys each stop callback on its reactor's thread") {
    FdLeakCheck leak_check;
    constexpr std::size_t count = 3;
    ReactorGroup group{count};
    Watchdogs watchdogs{count};
    std::mutex mutex;
    std::vector<std::size_t> order;                        // guarded by mutex
    std::array<std::thread::id, count> setup_threads{};    // each written by its own thread, read after run()
    std::array<std::thread::id, count> stop_threads{};     // likewise
    std::array<std::thread::id, count> destroy_threads{};  // likewise
    struct OnDestroy {
        explicit OnDestroy(std::thread::id* where_to) : where{where_to} {}
        OnDestroy(const OnDestroy&) = delete;
        OnDestroy& operator=(const OnDestroy&) = delete;
        ~OnDestroy() { *where = std::this_thread::get_id(); }
        std::thread::id* where;
    };
    group.run([&](Reactor& reactor, std::size_t index) -> ReactorGroup::StopCallback {
        CHECK(&reactor == &group.reactor(index));
        {
            std::lock_guard lock{mutex};
            order.push_back(index);
        }
        setup_threads[index] = std::this_thread::get_id();
        watchdogs.arm(reactor, index);
        if (index == count - 1) {
            group.stop_threadsafe();  // from a setup's thread: any thread may
        }
        return [&reactor, &stop_threads, index, guard = std::make_unique<OnDestroy>(&destroy_threads[index])] {
            stop_threads[index] = std::this_thread::get_id();
            reactor.stop();
        };
    });
    CHECK_FALSE(watchdogs.any_fired());
    CHECK(order == std::vector<std::size_t>{0, 1, 2});
    CHECK(setup_threads[0] == std::this_thread::get_id());
    CHECK(setup_threads[1] != setup_threads[0]);
    CHECK(setup_threads[2] != setup_threads[0]);
    CHECK(setup_threads[2] != setup_threads[1]);
    for (std::size_t i = 0; i < count; ++i) {
        CHECK(stop_threads[i] == setup_threads[i]);
        CHECK(destroy_threads[i] == setup_threads[i]);
    }
    CHECK_THROWS_AS(group.run([](Reactor&, std::size_t) { return ReactorGroup::StopCallback{}; }), std::logic_error);
}

TEST_CASE("connections to one SO_REUSEPORT port spread over every reactor of a group, each served on its own thread") {
    FdLeakCheck leak_check;
    // The kernel picks a listener by a hash of each connection's addresses
    // and ports. With 64 connections and 2 reactors, all on one is a chance
    // of 2 in 2^64: a failure here is a bug, not bad luck.
    constexpr std::size_t reactors = 2;
    constexpr std::size_t clients = 64;
    ReactorGroup group{reactors};
    Watchdogs watchdogs{reactors};
    std::array<std::size_t, reactors> connections{};  // each counted on its reactor's thread
    std::atomic<int> wrong_thread{0};
    std::uint16_t port = 0;
    std::promise<std::uint16_t> listening;
    std::vector<std::unique_ptr<muxio::Server>> servers(reactors);
    std::future<void> ran = std::async(std::launch::async, [&] {
        group.run([&](Reactor& reactor, std::size_t index) -> ReactorGroup::StopCallback {
            watchdogs.arm(reactor, index);
            const std::thread::id owner = std::this_thread::get_id();
            servers[index] = std::make_unique<muxio::Server>(reactor, [&, index, owner](const muxio::SocketAddress&) {
                return std::make_unique<CountingEcho>(connections[index], owner, wrong_thread);
            });
            listen_shared(*servers[index], index, port);
            if (index == reactors - 1) {
                listening.set_value(port);
            }
            return [&reactor, server = servers[index].get()] { server->shutdown([&reactor] { reactor.stop(); }); };
        });
    });
    auto port_future = listening.get_future();
    REQUIRE(port_future.wait_for(10s) == std::future_status::ready);
    const std::uint16_t bound = port_future.get();
    std::vector<UniqueFd> fds;
    for (std::size_t i = 0; i < clients; ++i) {
        fds.push_back(connect_client(bound));
        const std::string ping = "ping " + std::to_string(i);
        REQUIRE(::send(fds.back().get(), ping.data(), ping.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(ping.size()));
        std::string echoed(ping.size(), '\0');
        REQUIRE(receive_exactly(fds.back().get(), echoed.data(), echoed.size()));
        CHECK(echoed == ping);
    }
    group.stop_threadsafe();
    for (auto& fd : fds) {
        std::size_t extra = 0;
        CHECK(read_to_eof(fd.get(), extra));  // each server closed its connections cleanly
        CHECK(extra == 0);
    }
    REQUIRE(ran.wait_for(30s) == std::future_status::ready);
    ran.get();
    servers.clear();
    CHECK_FALSE(watchdogs.any_fired());
    CHECK(wrong_thread == 0);
    CHECK(connections[0] + connections[1] == clients);
    CHECK(connections[0] > 0);
    CHECK(connections[1] > 0);
}

TEST_CASE("stopping a group drains every reactor: what each server queued is delivered before a clean close") {
    FdLeakCheck leak_check;
    constexpr std::size_t reactors = 2;
    constexpr std::size_t clients = 64;  // enough that both reactors have some (see the case above)
    constexpr std::size_t greeting = 256 * 1024;
    ReactorGroup group{reactors};
    Watchdogs watchdogs{reactors};
    std::array<std::size_t, reactors> connections{};
    std::array<std::size_t, reactors> queued_at_stop{};  // bytes in the transports when the stop came
    std::uint16_t port = 0;
    std::promise<std::uint16_t> listening;
    std::future<void> ran = std::async(std::launch::async, [&] {
        group.run([&](Reactor& reactor, std::size_t index) -> ReactorGroup::StopCallback {
            watchdogs.arm(reactor, index);
            auto server = std::make_unique<muxio::Server>(reactor, [&, index](const muxio::SocketAddress&) {
                return std::make_unique<Greeter>(greeting, connections[index]);
            });
            listen_shared(*server, index, port);
            if (index == reactors - 1) {
                listening.set_value(port);
            }
            // The stop callback owns the server: it is destroyed on this thread.
            return [&, index, server = std::move(server)] {
                server->for_each_connection(
                    [&](muxio::Transport& transport) { queued_at_stop[index] += transport.write_buffer_size(); });
                server->shutdown([&reactor] { reactor.stop(); });
            };
        });
    });
    auto port_future = listening.get_future();
    REQUIRE(port_future.wait_for(10s) == std::future_status::ready);
    const std::uint16_t bound = port_future.get();
    std::vector<UniqueFd> fds;
    for (std::size_t i = 0; i < clients; ++i) {
        // A small receive buffer: most of each greeting waits on the server.
        fds.push_back(connect_client(bound, 4096));
        char first = 0;
        REQUIRE(receive_exactly(fds.back().get(), &first, 1));  // its connection is made
    }
    group.stop_threadsafe();
    for (auto& fd : fds) {
        std::size_t total = 1;
        CHECK(read_to_eof(fd.get(), total));
        CHECK(total == greeting);
    }
    REQUIRE(ran.wait_for(30s) == std::future_status::ready);
    ran.get();
    CHECK_FALSE(watchdogs.any_fired());
    CHECK(connections[0] + connections[1] == clients);
    CHECK(connections[0] > 0);
    CHECK(connections[1] > 0);
    CHECK(queued_at_stop[0] > 0);
    CHECK(queued_at_stop[1] > 0);
}

TEST_CASE("post runs callbacks on the target reactor's thread, ping-ponging between two reactors") {
    FdLeakCheck leak_check;
    constexpr int rounds = 1000;
    ReactorGroup group{2};
    Watchdogs watchdogs{2};
    // Plain counters, each touched only on its reactor's thread: a callback
    // run on the wrong thread is a data race TSan reports.
    std::array<int, 2> hits{};
    std::array<std::thread::id, 2> threads{};
    std::atomic<int> wrong_thread{0};
    std::function<void(std::size_t, int)> bounce = [&](std::size_t index, int left) {
        if (std::this_thread::get_id() != threads[index]) {
            ++wrong_thread;
        }
        ++hits[index];
        if (left == 0) {
            group.stop_threadsafe();
            return;
        }
        group.post(1 - index, [&bounce, index, left] { bounce(1 - index, left - 1); });
    };
    group.run([&](Reactor& reactor, std::size_t index) -> ReactorGroup::StopCallback {
        threads[index] = std::this_thread::get_id();
        watchdogs.arm(reactor, index);
        if (index == 1) {
            group.post(0, [&bounce] { bounce(0, rounds - 1); });
        }
        return {};
    });
    CHECK_FALSE(watchdogs.any_fired());
    CHECK(wrong_thread == 0);
    CHECK(hits[0] == rounds / 2);
    CHECK(hits[1] == rounds / 2);
}

TEST_CASE("a setup that throws on reactor 1 makes run rethrow it, with no reactor run and later setups not called") {
    FdLeakCheck leak_check;
    ReactorGroup group{3};
    std::atomic<bool> setup_2_called{false};
    std::atomic<bool> stop_0_called{false};
    std::atomic<bool> stop_0_destroyed{false};
    std::thread::id destroyed_on;
    std::thread::id setup_0_on;
    struct OnDestroy {
        OnDestroy(std::atomic<bool>* flag_to_set, std::thread::id* where_to) : flag{flag_to_set}, where{where_to} {}
        OnDestroy(const OnDestroy&) = delete;
        OnDestroy& operator=(const OnDestroy&) = delete;
        std::atomic<bool>* flag;
        std::thread::id* where;
        ~OnDestroy() {
            *where = std::this_thread::get_id();
            *flag = true;
        }
    };
    auto failing = [&](Reactor& reactor, std::size_t index) -> ReactorGroup::StopCallback {
        if (index == 1) {
            throw std::runtime_error("setup of reactor 1 failed");
        }
        if (index == 2) {
            setup_2_called = true;
            return {};
        }
        setup_0_on = std::this_thread::get_id();
        reactor.call_soon([&] { FAIL("reactor 0 ran"); });
        return [&, guard = std::make_unique<OnDestroy>(&stop_0_destroyed, &destroyed_on)] { stop_0_called = true; };
    };
    CHECK_THROWS_WITH_AS(group.run(failing), "setup of reactor 1 failed", std::runtime_error);
    CHECK_FALSE(setup_2_called);
    CHECK_FALSE(stop_0_called);
    CHECK(stop_0_destroyed);
    CHECK(destroyed_on == setup_0_on);
    for (std::size_t i = 0; i < group.size(); ++i) {
        CHECK_FALSE(group.reactor(i).is_running());
    }
}

TEST_CASE("a stop callback that throws makes run rethrow it once every other reactor stopped, drained or not") {
    FdLeakCheck leak_check;
    ReactorGroup group{2};
    Watchdogs watchdogs{2};
    const auto setup = [&](Reactor& reactor, std::size_t index) -> ReactorGroup::StopCallback {
        watchdogs.arm(reactor, index);
        if (index == 1) {
            group.stop_threadsafe();
            return [] { throw std::runtime_error("stop of reactor 1 failed"); };
        }
        return [] {};  // a drain that never ends: reactor 0 must be stopped for it
    };
    CHECK_THROWS_WITH_AS(group.run(setup), "stop of reactor 1 failed", std::runtime_error);
    CHECK_FALSE(watchdogs.any_fired());
}

TEST_CASE("a reactor of a group that stops by itself stops the others through their stop callbacks") {
    FdLeakCheck leak_check;
    ReactorGroup group{2};
    Watchdogs watchdogs{2};
    std::atomic<int> stop_callbacks_run{0};
    group.run([&](Reactor& reactor, std::size_t index) -> ReactorGroup::StopCallback {
        watchdogs.arm(reactor, index);
        if (index == 1) {
            reactor.call_soon([&reactor] { reactor.stop(); });
        }
        return [&reactor, &stop_callbacks_run] {
            ++stop_callbacks_run;
            reactor.stop();
        };
    });
    CHECK_FALSE(watchdogs.any_fired());
    CHECK(stop_callbacks_run >= 1);  // reactor 0's; reactor 1's only if it had not stopped yet
}

TEST_CASE("each stop_threadsafe call runs the stop callbacks again, so a second request can end a drain") {
    FdLeakCheck leak_check;
    ReactorGroup group{2};
    Watchdogs watchdogs{2};
    std::array<int, 2> calls{};
    group.stop_threadsafe();  // before run(): kept until the reactors start
    group.stop_threadsafe();
    group.run([&](Reactor& reactor, std::size_t index) -> ReactorGroup::StopCallback {
        watchdogs.arm(reactor, index);
        return [&reactor, &calls, index] {
            // The first request begins a drain that does not end by itself;
            // the second one stops.
            if (++calls[index] == 2) {
                reactor.stop();
            }
        };
    });
    CHECK_FALSE(watchdogs.any_fired());
    CHECK(calls[0] == 2);
    CHECK(calls[1] == 2);
}

TEST_CASE("ReactorGroup::run from one of its own reactors' callbacks throws std::logic_error and the group goes on") {
    FdLeakCheck leak_check;
    ReactorGroup group{2};
    Watchdogs watchdogs{2};
    std::atomic<int> refused{0};
    const auto setup = [&](Reactor& reactor, std::size_t index) -> ReactorGroup::StopCallback {
        watchdogs.arm(reactor, index);
        return {};
    };
    group.post(1, [&] {
        try {
            group.run(setup);
        } catch (const std::logic_error&) {
            ++refused;
        }
        group.stop_threadsafe();
    });
    group.run(setup);
    CHECK_FALSE(watchdogs.any_fired());
    CHECK(refused == 1);
}

TEST_CASE("stop_on_signals stops every reactor of a group when the signal comes and records which one it was") {
    FdLeakCheck leak_check;
    ReactorGroup group{2};
    Watchdogs watchdogs{2};
    group.stop_on_signals({SIGUSR1, SIGUSR2});
    CHECK(group.stopped_by_signal() == 0);
    std::array<int, 2> stops{};
    const pthread_t reactor_0_thread = ::pthread_self();  // run() runs reactor 0 here
    group.run([&](Reactor& reactor, std::size_t index) -> ReactorGroup::StopCallback {
        watchdogs.arm(reactor, index);
        if (index == 1) {
            // Sent from reactor 1's thread to reactor 0's: a kill() of the
            // process could land on a thread outside the group (a sanitizer's
            // own), as reactor 1's blocks it.
            reactor.call_soon([reactor_0_thread] { REQUIRE(::pthread_kill(reactor_0_thread, SIGUSR2) == 0); });
            sigset_t mask;
            REQUIRE(::pthread_sigmask(SIG_BLOCK, nullptr, &mask) == 0);
            CHECK(sigismember(&mask, SIGUSR2) == 1);
        }
        return [&reactor, &stops, index] {
            ++stops[index];
            reactor.stop();
        };
    });
    CHECK_FALSE(watchdogs.any_fired());
    CHECK(group.stopped_by_signal() == SIGUSR2);
    CHECK(stops[0] == 1);
    CHECK(stops[1] == 1);
}
