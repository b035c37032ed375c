// Sockets that outlive their reactor: once it is closed or destroyed they
// are detached (their destruction only closes their descriptor, their
// operations refuse), and nothing that takes a reactor accepts a closed one.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/task.hpp"
#include "net/net_support.hpp"
#include "reactor/lifetime_support.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::SocketAddress;
using muxio::Task;
using muxio::TcpListener;
using muxio::TcpStream;
using muxio::UdpSocket;
using muxio::UnixListener;
using muxio::UnixStream;
using muxio::lifetime_test::DoomedReactor;
using muxio::lifetime_test::Held;
using muxio::lifetime_test::hold;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::UniqueFd;

namespace {

// A blocking TCP client connected to `address` (the listener's backlog
// completes the handshake without an accept).
UniqueFd connect_blocking(const SocketAddress& address) {
    UniqueFd client{::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(client.get() >= 0);
    REQUIRE(::connect(client.get(), address.data(), address.size()) == 0);
    return client;
}

// An abstract Unix name no other test process uses.
SocketAddress unique_abstract_address() {
    static int counter = 0;
    return SocketAddress::unix_abstract(fmt::format("muxio-lifetime-{}-{}", ::getpid(), ++counter));
}

Task<void> read_some(UnixStream& stream) {
    std::array<std::byte, 16> buffer{};
    (void)co_await stream.read_some(buffer);
}

Task<void> read_tcp(TcpStream& stream) {
    std::array<std::byte, 16> buffer{};
    (void)co_await stream.read_some(buffer);
}

Task<void> accept_tcp(TcpListener& listener) {
    (void)co_await listener.accept();
}

Task<void> accept_unix(UnixListener& listener) {
    (void)co_await listener.accept();
}

Task<void> receive(UdpSocket& socket) {
    std::array<std::byte, 16> buffer{};
    (void)co_await socket.recv_from(buffer);
}

Task<void> wait_readable(UnixStream& stream) {
    co_await stream.readable();
}

// Runs iterations until `done()`, for at most a few seconds.
bool run_until(Reactor& reactor, const std::function<bool()>& done) {
    const muxio::test::Stopwatch stopwatch;
    while (!done() && stopwatch.elapsed() < 5s) {
        (void)reactor.run_once(50ms);
    }
    return done();
}

// What add_reader() throws on `reactor`, a closed one: the model of every refusal.
std::string add_reader_refusal(Reactor& reactor) {
    const muxio::test::SocketPair pair;
    try {
        reactor.add_reader(pair.left.get(), [] {});
    } catch (const std::logic_error& refusal) {
        return refusal.what();
    }
    FAIL("add_reader accepted a closed reactor");
    return {};
}

}  // namespace

TEST_CASE("sockets and their pending operations outliving their reactor only close their descriptors") {
    FdLeakCheck leak_check;
    for (const std::string& name : muxio::reactor_test::usable_selectors()) {
        for (const bool destroy : {false, true}) {
            CAPTURE(name);
            CAPTURE(destroy);
            DoomedReactor reactor{with_selector(name)};
            TcpListener tcp_listener = TcpListener::bind(*reactor, SocketAddress::ipv4("127.0.0.1", 0));
            UniqueFd client = connect_blocking(tcp_listener.local_address());
            std::error_code error;
            std::optional<TcpStream> accepted = tcp_listener.try_accept(error);
            REQUIRE(accepted);
            TcpStream adopted = TcpStream::adopt(*reactor, client.release());
            UnixListener unix_listener = UnixListener::bind(*reactor, unique_abstract_address());
            auto [left, right] = UnixStream::pair(*reactor);
            UdpSocket udp = UdpSocket::bind(*reactor, SocketAddress::ipv4("127.0.0.1", 0));

            // A lasting reader on `right`: an await on it ended, the
            // registration stays for the next.
            muxio::test::write_all(left.fileno(), "x");
            {
                const Held first = hold(wait_readable(right));
                REQUIRE(run_until(*reactor, [&] { return first.done(); }));
            }
            REQUIRE(reactor->has_reader(right.fileno()));
            // Moved after their registrations: the new places are the bound ones.
            TcpStream stream = std::move(*accepted);
            UnixStream moved_right = std::move(right);

            // Operations pending in tasks that the reactor does not own.
            std::vector<Held> pending;
            pending.push_back(hold(accept_tcp(tcp_listener)));
            pending.push_back(hold(accept_unix(unix_listener)));
            pending.push_back(hold(read_tcp(stream)));
            pending.push_back(hold(read_some(left)));
            pending.push_back(hold(receive(udp)));
            for (const Held& task : pending) {
                REQUIRE_FALSE(task.done());
            }

            if (destroy) {
                reactor.destroy();
            } else {
                reactor->close();
            }
            for (const Held& task : pending) {
                CHECK_FALSE(task.done());
            }
            pending.clear();
            // Everything else goes at the end of the scope, after the
            // reactor; FdLeakCheck sees that each descriptor was closed.
        }
    }
}

TEST_CASE("a socket whose reactor closed refuses its operations and still owns its descriptor") {
    FdLeakCheck leak_check;
    for (const std::string& name : muxio::reactor_test::usable_selectors()) {
        CAPTURE(name);
        Reactor reactor{with_selector(name)};
        auto [left, right] = UnixStream::pair(reactor);
        TcpListener listener = TcpListener::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
        UdpSocket udp = UdpSocket::bind(reactor, SocketAddress::ipv4("127.0.0.1", 0));
        const int fd = left.fileno();
        reactor.close();

        CHECK_FALSE(left.is_open());
        CHECK(left.fileno() == -1);
        CHECK_FALSE(listener.is_open());
        CHECK_FALSE(udp.is_open());
        CHECK(muxio::test::is_open_fd(fd));

        const std::string_view closed = "reactor is closed";
        const Held read = hold(read_some(left));
        CHECK(read.threw_logic_error(closed));
        const Held accept = hold(accept_tcp(listener));
        CHECK(accept.threw_logic_error(closed));
        const Held received = hold(receive(udp));
        CHECK(received.threw_logic_error(closed));
        const Held readable = hold(wait_readable(right));
        CHECK(readable.threw_logic_error(closed));
        CHECK_THROWS_WITH_AS(left.shutdown(), "shutdown: reactor is closed", std::logic_error);
        CHECK_THROWS_WITH_AS((void)left.local_address(), "local_address: reactor is closed", std::logic_error);

        std::array<std::byte, 4> buffer{};
        std::error_code error;
        CHECK_FALSE(left.try_read(buffer, error).has_value());
        CHECK(error == std::errc::bad_file_descriptor);
        CHECK_FALSE(listener.try_accept(error).has_value());
        CHECK(error == std::errc::bad_file_descriptor);

        // The descriptor can be taken back, to be used elsewhere.
        const UniqueFd released{left.release()};
        CHECK(released.get() == fd);
        CHECK(muxio::test::is_open_fd(fd));
        CHECK(left.release() == -1);
    }
}

TEST_CASE("everything that takes a reactor refuses a closed one with add_reader's error and opens nothing") {
    FdLeakCheck leak_check;
    Reactor reactor;
    reactor.close();
    const std::string model = add_reader_refusal(reactor);
    REQUIRE(model == "add_reader: reactor is closed");
    const auto refusal = [](std::string_view operation) { return fmt::format("{}: reactor is closed", operation); };
    const int before = muxio::test::count_open_fds();
    const SocketAddress ipv4 = SocketAddress::ipv4("127.0.0.1", 0);

    CHECK_THROWS_WITH_AS((void)TcpListener::bind(reactor, ipv4), refusal("TcpListener::bind").c_str(),
                         std::logic_error);
    CHECK_THROWS_WITH_AS((void)UnixListener::bind(reactor, unique_abstract_address()),
                         refusal("UnixListener::bind").c_str(), std::logic_error);
    CHECK_THROWS_WITH_AS((void)UdpSocket::bind(reactor, ipv4), refusal("UdpSocket::bind").c_str(), std::logic_error);
    CHECK_THROWS_WITH_AS((void)UdpSocket::open(reactor, AF_INET), refusal("UdpSocket::open").c_str(), std::logic_error);
    CHECK_THROWS_WITH_AS((void)UnixStream::pair(reactor), refusal("UnixStream::pair").c_str(), std::logic_error);
    CHECK(muxio::test::count_open_fds() == before);

    // adopt() leaves the descriptor with its caller.
    muxio::test::SocketPair unix_pair;
    CHECK_THROWS_WITH_AS((void)UnixStream::adopt(reactor, unix_pair.left.get()), refusal("UnixStream::adopt").c_str(),
                         std::logic_error);
    CHECK(muxio::test::is_open_fd(unix_pair.left.get()));
    const UniqueFd tcp{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(tcp.get() >= 0);
    CHECK_THROWS_WITH_AS((void)TcpStream::adopt(reactor, tcp.get()), refusal("TcpStream::adopt").c_str(),
                         std::logic_error);
    CHECK(muxio::test::is_open_fd(tcp.get()));

    const int with_pairs = muxio::test::count_open_fds();
    const Held tcp_connect = hold(TcpStream::connect(reactor, ipv4.with_port(9)));
    CHECK(tcp_connect.threw_logic_error(refusal("TcpStream::connect")));
    const Held named_connect = hold(TcpStream::connect(reactor, "localhost", 9));
    CHECK(named_connect.threw_logic_error("reactor is closed"));
    const Held unix_connect = hold(UnixStream::connect(reactor, unique_abstract_address()));
    CHECK(unix_connect.threw_logic_error(refusal("UnixStream::connect")));
    const Held lookup = hold(muxio::resolve(reactor, "localhost", 80));
    CHECK(lookup.threw_logic_error(refusal("resolve")));
    CHECK(muxio::test::count_open_fds() == with_pairs);
}

TEST_CASE("a name lookup that ends after its reactor was destroyed posts nothing to it") {
    FdLeakCheck leak_check;
    auto resolver = std::make_unique<muxio::Resolver>(1);
    DoomedReactor reactor;
    const Held lookup = hold(resolver->resolve(*reactor, "localhost", "80"));
    REQUIRE_FALSE(lookup.done());
    reactor.destroy();
    // Joins the worker, which finishes the lookup (or cancels it if it had
    // not started) with the awaiting frame still alive.
    resolver.reset();
    CHECK_FALSE(lookup.done());
}
