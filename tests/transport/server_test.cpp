// Server: listening, accepting, EMFILE, the connection limit, timeouts,
// shutdown, and the reactor closing first; the echo path's allocations.
#include "muxio/server.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/net.hpp"
#include "reactor/reactor_support.hpp"
#include "support/captured_log.hpp"
#include "support/support.hpp"
#include "transport/transport_support.hpp"

namespace muxio::test {
using reactor_test::ManualClock;
namespace {

using namespace std::chrono_literals;

// An echo protocol counting its instances' ends.
struct Echo : Protocol {
    explicit Echo(int* lost_count = nullptr) : lost{lost_count} {}
    void connection_made(Transport& made_on) override { transport = &made_on; }
    void data_received(std::span<const std::byte> data) override { transport->write(data); }
    void connection_lost(std::error_code why) override {
        if (lost != nullptr) {
            ++*lost;
        }
        last_reason = why;
    }
    Transport* transport = nullptr;
    int* lost;
    std::error_code last_reason;
};

Server::ProtocolFactory echo_factory(int* lost = nullptr) {
    return [lost](const SocketAddress&) { return std::make_unique<Echo>(lost); };
}

// A connected client socket (blocking connect, then non-blocking).
UniqueFd connect_to(const SocketAddress& address) {
    UniqueFd fd{::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(fd.get() >= 0);
    REQUIRE(::connect(fd.get(), address.data(), address.size()) == 0);
    const int flags = ::fcntl(fd.get(), F_GETFL);
    REQUIRE(::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) == 0);
    return fd;
}

// Reads until `want` bytes arrived or the stream ended, running the reactor.
std::string read_reply(Reactor& reactor, int fd, std::size_t want) {
    std::string got;
    bool open = true;
    (void)run_until(reactor, [&] {
        if (open) {
            open = read_available(fd, got);
        }
        return got.size() >= want || !open;
    });
    return got;
}

bool at_end_of_stream(Reactor& reactor, int fd) {
    std::string got;
    bool open = true;
    (void)run_until(reactor, [&] {
        open = read_available(fd, got);
        return !open;
    });
    return !open;
}

TEST_CASE("a server echoes over TCP and frees a connection after its connection_lost") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int lost = 0;
    Server server{reactor, echo_factory(&lost)};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    CHECK(address.port() != 0);
    CHECK(server.is_accepting());
    UniqueFd client = connect_to(address);
    write_all(client.get(), "hello");
    CHECK(read_reply(reactor, client.get(), 5) == "hello");
    CHECK(server.connection_count() == 1);
    client.reset();
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 0; }));
    CHECK(lost == 1);
    CHECK(server.stats().accepted == 1);
}

TEST_CASE("a server echoes over a Unix-domain socket path and removes the path when it stops listening") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const std::string path = fmt::format("/tmp/muxio-transport-{}.sock", ::getpid());
    Server server{reactor, echo_factory()};
    const SocketAddress address = server.listen_unix(path);
    UniqueFd client = connect_to(address);
    write_all(client.get(), "over unix");
    CHECK(read_reply(reactor, client.get(), 9) == "over unix");
    server.stop_listening();
    CHECK_FALSE(server.is_accepting());
    CHECK(::access(path.c_str(), F_OK) != 0);
    // The open connection goes on.
    write_all(client.get(), "still");
    CHECK(read_reply(reactor, client.get(), 5) == "still");
}

TEST_CASE("a client transport connects to a server on a Unix-domain path and echoes") {
    FdLeakCheck leak_check;
    Reactor reactor;
    const std::string path = fmt::format("/tmp/muxio-transport-client-{}.sock", ::getpid());
    Server server{reactor, echo_factory()};
    const SocketAddress address = server.listen(SocketAddress::unix_path(path));
    Recorder client;
    client.on_made = [](Recorder& self) { self.transport->write(std::string_view{"unix echo"}); };
    auto transport = Transport::connect(reactor, address, client);
    REQUIRE(run_until(reactor, [&] { return client.received == "unix echo"; }));
    transport->close();
    REQUIRE(run_until(reactor, [&] { return client.lost == 1 && server.connection_count() == 0; }));
    CHECK_FALSE(*client.reason);
}

TEST_CASE("a server serves a listener bound beforehand and refuses a closed one") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Server server{reactor, echo_factory()};
    ListenOptions options;
    options.reuse_port = true;
    TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0), options);
    const SocketAddress address = server.listen(std::move(listener));
    CHECK(server.addresses().at(0) == address);
    UniqueFd client = connect_to(address);
    write_all(client.get(), "adopted");
    CHECK(read_reply(reactor, client.get(), 7) == "adopted");
    CHECK_THROWS_AS(server.listen(TcpListener{}), std::invalid_argument);
    CHECK_THROWS_AS(server.listen(UnixListener{}), std::invalid_argument);
}

TEST_CASE("listen refuses an address that is neither IP nor Unix-domain, and a host name") {
    Reactor reactor;
    Server server{reactor, echo_factory()};
    CHECK_THROWS_AS(server.listen(SocketAddress{}), std::invalid_argument);
    CHECK_THROWS_AS(server.listen("localhost", 0), std::invalid_argument);
    CHECK_THROWS_AS(Server(reactor, Server::ProtocolFactory{}), std::invalid_argument);
}

TEST_CASE("a factory that returns null or throws closes the connection and the server goes on") {
    FdLeakCheck leak_check;
    CapturedLog log;
    Reactor reactor;
    int calls = 0;
    Server server{reactor, [&](const SocketAddress&) -> std::unique_ptr<Protocol> {
                      ++calls;
                      if (calls == 1) {
                          return nullptr;
                      }
                      if (calls == 2) {
                          throw std::runtime_error{"no"};
                      }
                      return std::make_unique<Echo>();
                  }};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    UniqueFd first = connect_to(address);
    CHECK(at_end_of_stream(reactor, first.get()));
    UniqueFd second = connect_to(address);
    CHECK(at_end_of_stream(reactor, second.get()));
    UniqueFd third = connect_to(address);
    write_all(third.get(), "ok");
    CHECK(read_reply(reactor, third.get(), 2) == "ok");
    CHECK(server.stats().setup_failures == 2);
    CHECK(log.text().find("cannot serve the connection") != std::string::npos);
}

namespace {
// UBSan checks a dynamic type it has not met before by reading its vtable
// through a pipe, which cannot be made while no descriptor is free: it would
// report the fmt buffer that formats the warning as an invalid object. Under
// the sanitizers the warning is therefore not formatted (the level is above
// it) and its text not checked; every other build checks it.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool format_shortage_warning = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
constexpr bool format_shortage_warning = false;
#else
constexpr bool format_shortage_warning = true;
#endif
#else
constexpr bool format_shortage_warning = true;
#endif
}  // namespace

TEST_CASE("out of descriptors, accepting pauses without spinning, keeps the listener and recovers") {
    FdLeakCheck leak_check;
    CapturedLog log{format_shortage_warning ? spdlog::level::warn : spdlog::level::err};
    Reactor reactor;
    ServerOptions options;
    options.accept_retry = 30ms;
    Server server{reactor, echo_factory(), options};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    // Meet the polymorphic types once before the descriptors run out (UBSan).
    {
        UniqueFd warm = connect_to(address);
        REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    }
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 0; }));
    UniqueFd client = connect_to(address);  // queued in the backlog
    std::size_t iterations = 0;
    {
        NoFreeDescriptors no_descriptors;
        const Stopwatch watch;
        while (watch.elapsed() < 200ms && iterations < 1000) {
            reactor.run_once(50ms);
            ++iterations;
        }
        CHECK(server.connection_count() == 0);
    }
    // About one failed accept per retry period: 200 ms / 30 ms, and as many
    // iterations, not a spin.
    CHECK(server.stats().accept_errors >= 1);
    CHECK(server.stats().accept_errors <= 10);
    CHECK(server.stats().accept_pauses == server.stats().accept_errors);
    CHECK(iterations <= 30);
    // Warned once for the shortage, not at each retry.
    if constexpr (format_shortage_warning) {
        const std::string text = log.text();
        CHECK(text.find("Too many open files") != std::string::npos);
        CHECK(text.find("Too many open files") == text.rfind("Too many open files"));
    }
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    write_all(client.get(), "back");
    CHECK(read_reply(reactor, client.get(), 4) == "back");
    CHECK(server.is_accepting());
}

TEST_CASE("a shortage of descriptors that comes and goes is warned of once per period, not once per spell") {
    FdLeakCheck leak_check;
    CapturedLog log{format_shortage_warning ? spdlog::level::warn : spdlog::level::err};
    Reactor reactor;
    ServerOptions options;
    options.accept_retry = 1ms;
    Server server{reactor, echo_factory(), options};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    {
        UniqueFd warm = connect_to(address);
        REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    }
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 0; }));
    // Each spell: a connection waits in the backlog while no descriptor is
    // free, then is accepted once one is, and ends.
    constexpr int spells = 3;
    for (int spell = 0; spell < spells; ++spell) {
        UniqueFd client = connect_to(address);
        const std::uint64_t errors_before = server.stats().accept_errors;
        {
            NoFreeDescriptors no_descriptors;
            for (int i = 0; i < 100 && server.stats().accept_errors == errors_before; ++i) {
                reactor.run_once(20ms);
            }
        }
        REQUIRE(server.stats().accept_errors > errors_before);
        REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
        client = UniqueFd{};
        REQUIRE(run_until(reactor, [&] { return server.connection_count() == 0; }));
    }
    CHECK(server.stats().accept_errors >= static_cast<std::uint64_t>(spells));
    if constexpr (format_shortage_warning) {
        const std::string text = log.text();
        CHECK(text.find("Too many open files") != std::string::npos);
        CHECK(text.find("Too many open files") == text.rfind("Too many open files"));
    }
}

TEST_CASE("stopping a server from another thread while the reactor runs throws std::logic_error and changes nothing") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Server server{reactor, echo_factory()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    UniqueFd client = connect_to(address);
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    const std::vector<std::function<void()>> calls = {[&] { server.stop_listening(); }, [&] { server.close(); },
                                                      [&] { server.shutdown({}); }, [&] { server.drain({}); }};
    std::vector<std::string> messages;
    bool ran = false;
    reactor.call_soon([&] {
        // Joined inside the callback: the reactor is running all along.
        std::thread other{[&] {
            for (const auto& call : calls) {
                try {
                    call();
                    messages.emplace_back("no throw");
                } catch (const std::logic_error& refusal) {
                    messages.emplace_back(refusal.what());
                }
            }
        }};
        other.join();
        ran = true;
    });
    REQUIRE(run_until(reactor, [&] { return ran; }));
    REQUIRE(messages.size() == calls.size());
    for (const std::string& message : messages) {
        CHECK(message.find("Server::") != std::string::npos);
        CHECK(message.find("call_soon_threadsafe") != std::string::npos);
    }
    // Nothing changed: still listening, the connection still echoes.
    CHECK(server.is_accepting());
    write_all(client.get(), "still");
    CHECK(read_reply(reactor, client.get(), 5) == "still");
    UniqueFd second = connect_to(address);
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 2; }));
    server.close();
    CHECK(at_end_of_stream(reactor, client.get()));
}

TEST_CASE("a connection over the limit gets the refusal handler's answer and is closed") {
    FdLeakCheck leak_check;
    Reactor reactor;
    ServerOptions options;
    options.max_connections = 1;
    Server server{reactor, echo_factory(), options};
    server.set_refusal_handler([](int fd, const SocketAddress&) {
        constexpr std::string_view busy = "busy\n";
        (void)::send(fd, busy.data(), busy.size(), MSG_NOSIGNAL);
    });
    const SocketAddress address = server.listen("127.0.0.1", 0);
    UniqueFd first = connect_to(address);
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    UniqueFd second = connect_to(address);
    std::string got;
    bool open = true;
    REQUIRE(run_until(reactor, [&] {
        open = read_available(second.get(), got);
        return !open;
    }));
    CHECK(got == "busy\n");
    CHECK(server.stats().refused == 1);
    CHECK(server.connection_count() == 1);
    write_all(first.get(), "served");
    CHECK(read_reply(reactor, first.get(), 6) == "served");
}

TEST_CASE("with OverLimit::pause a connection over the limit waits in the backlog until one ends") {
    FdLeakCheck leak_check;
    Reactor reactor;
    ServerOptions options;
    options.max_connections = 1;
    options.over_limit = OverLimit::pause;
    Server server{reactor, echo_factory(), options};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    UniqueFd first = connect_to(address);
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    CHECK_FALSE(server.is_accepting());
    UniqueFd second = connect_to(address);
    write_all(second.get(), "waiting");
    for (int i = 0; i < 5; ++i) {
        reactor.run_once(10ms);
    }
    CHECK(server.stats().accepted == 1);
    first.reset();
    CHECK(read_reply(reactor, second.get(), 7) == "waiting");
    CHECK(server.stats().accepted == 2);
    CHECK(server.stats().refused == 0);
}

TEST_CASE("a server's idle timeout closes a silent connection") {
    FdLeakCheck leak_check;
    ManualClock clock;
    Reactor reactor{clock.options()};
    ServerOptions options;
    options.transport.idle_timeout = 30s;
    int lost = 0;
    Server server{reactor, echo_factory(&lost), options};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    UniqueFd client = connect_to(address);
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    clock.advance(31s);
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 0; }));
    CHECK(lost == 1);
    CHECK(at_end_of_stream(reactor, client.get()));
}

TEST_CASE("shutdown stops listening, lets connections send what is queued, and reports when none is left") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Server server{reactor, echo_factory()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    UniqueFd client = connect_to(address);
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    bool drained = false;
    server.shutdown([&] { drained = true; });
    CHECK_FALSE(server.is_accepting());
    REQUIRE(run_until(reactor, [&] { return drained; }));
    CHECK(server.connection_count() == 0);
    CHECK(at_end_of_stream(reactor, client.get()));
    bool at_once = false;
    server.shutdown([&] { at_once = true; });
    CHECK(at_once);
}

TEST_CASE("drain stops listening and reports once the open connections have ended on their own") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Server server{reactor, echo_factory()};
    const SocketAddress address = server.listen("127.0.0.1", 0);
    UniqueFd client = connect_to(address);
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    bool drained = false;
    server.drain([&] { drained = true; });
    CHECK_FALSE(server.is_accepting());
    for (int i = 0; i < 5; ++i) {
        reactor.run_once(10ms);
    }
    CHECK_FALSE(drained);
    write_all(client.get(), "still served");
    CHECK(read_reply(reactor, client.get(), 12) == "still served");
    client.reset();
    REQUIRE(run_until(reactor, [&] { return drained; }));
    CHECK(server.connection_count() == 0);
}

TEST_CASE("close from inside a connection's callback aborts every connection") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int lost = 0;
    Server* self = nullptr;
    struct Closer : Echo {
        Closer(Server** owner, int* count) : Echo{count}, server{owner} {}
        void data_received(std::span<const std::byte>) override { (*server)->close(); }
        Server** server;
    };
    Server server{reactor, [&](const SocketAddress&) { return std::make_unique<Closer>(&self, &lost); }};
    self = &server;
    const SocketAddress address = server.listen("127.0.0.1", 0);
    UniqueFd a = connect_to(address);
    UniqueFd b = connect_to(address);
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 2; }));
    write_all(a.get(), "stop");
    REQUIRE(run_until(reactor, [&] { return server.connection_count() == 0; }));
    CHECK(lost == 2);
    CHECK_FALSE(server.is_accepting());
}

TEST_CASE("destroying a server ends its connections with connection_lost") {
    FdLeakCheck leak_check;
    Reactor reactor;
    int lost = 0;
    UniqueFd client;
    {
        Server server{reactor, echo_factory(&lost)};
        client = connect_to(server.listen("127.0.0.1", 0));
        REQUIRE(run_until(reactor, [&] { return server.connection_count() == 1; }));
    }
    CHECK(lost == 1);
    CHECK(at_end_of_stream(reactor, client.get()));
}

TEST_CASE("a reactor closed before its server ends the connections with ECANCELED and detaches the server") {
    FdLeakCheck leak_check;
    auto reactor = std::make_unique<Reactor>();
    int lost = 0;
    Server server{*reactor, echo_factory(&lost)};
    UniqueFd client = connect_to(server.listen("127.0.0.1", 0));
    REQUIRE(run_until(*reactor, [&] { return server.connection_count() == 1; }));
    reactor.reset();
    CHECK(lost == 1);
    CHECK(server.connection_count() == 0);
    CHECK_FALSE(server.is_accepting());
    server.close();
    server.stop_listening();
}

TEST_CASE("an echoed message costs no allocation once warm") {
    FdLeakCheck leak_check;
    if (!counts_allocations) {
        return;
    }
    Reactor reactor;
    // With an idle timeout: a read or write notes the time and touches no timer.
    ServerOptions options;
    options.transport.idle_timeout = 60s;
    Server server{reactor, echo_factory(), options};
    UniqueFd client = connect_to(server.listen("127.0.0.1", 0));
    const std::string message(64, 'm');
    char reply[64];
    const auto exchange = [&] {
        if (::send(client.get(), message.data(), message.size(), MSG_NOSIGNAL) != 64) {
            return false;
        }
        std::size_t got = 0;
        for (int i = 0; i < 1000 && got < sizeof reply; ++i) {
            reactor.run_once(100ms);
            const ssize_t n = ::recv(client.get(), reply + got, sizeof reply - got, 0);
            if (n > 0) {
                got += static_cast<std::size_t>(n);
            }
        }
        return got == sizeof reply;
    };
    for (int i = 0; i < 20; ++i) {
        REQUIRE(exchange());
    }
    bool echoed = true;
    const std::size_t before = allocation_count();
    for (int i = 0; i < 200; ++i) {
        echoed = exchange() && echoed;
    }
    const std::size_t after = allocation_count();
    REQUIRE(echoed);
    CHECK(after == before);
}

}  // namespace
}  // namespace muxio::test
