// example-chat-server: a line-based chat server on reactor callbacks.
//
// Each line a client sends goes to every other client, prefixed with the
// sender's nickname ("guest1: hello"). Commands: /nick NAME, /who, /quit.
// A client that does not read what it is sent is disconnected once more than
// --max-queued bytes wait for it ("* guest3 left (not reading)"), so one
// stalled client costs the server a bounded amount of memory and the others
// go on; a line longer than --max-line ends its sender's connection too. A
// client leaving (/quit) gets --linger seconds to read its last lines.
//
// The program is in three parts: chat_room.{hpp,cpp}, the protocol, with no
// socket in it; line_server.{hpp,cpp}, the connections: a muxio::Server with
// a Protocol per client that splits lines, the Transport's write queue and
// water marks for the bound, close() after the queue drains for /quit; and
// this file, which wires them to a reactor and a command line.
//
//   example-chat-server --port 7002
//   nc 127.0.0.1 7002          # in two or three terminals
//
// stdout: "listening on ADDRESS" first, "stopped by signal S: ..." at the end.
// Exit status: 0 after SIGINT or SIGTERM, 1 on a failure (the port is taken),
// 2 for a bad command line.

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "chat_room.hpp"
#include "line_server.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

int run(int argc, char** argv) {
    std::string bind_host = "127.0.0.1";
    std::uint16_t port = 7002;
    chat::LineServerOptions options;

    CLI::App app{
        "example-chat-server: a line-based chat server on muxio reactor callbacks.\n"
        "Commands: /nick NAME, /who, /quit. Stops cleanly on SIGINT or SIGTERM.",
        "example-chat-server"};
    app.add_option("--port", port, "TCP port; 0 lets the kernel pick one")->capture_default_str();
    app.add_option("--bind", bind_host, "IPv4 or IPv6 address to listen on")->capture_default_str();
    app.add_option("--max-line", options.max_line, "longest line a client may send, in bytes")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
        ->capture_default_str();
    app.add_option("--max-queued", options.max_queued,
                   "bytes that may wait for a client that does not read before it is disconnected")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 30))
        ->capture_default_str();
    app.add_option("--max-clients", options.max_clients, "clients at once; more are turned away")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))
        ->capture_default_str();
    double linger_seconds = 5.0;
    app.add_option("--linger", linger_seconds,
                   "seconds a client leaving (/quit, a line too long) has to read its last lines")
        ->check(CLI::Range(0.001, 3600.0))
        ->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int status = app.exit(error);
        return status == 0 ? exit_ok : exit_usage;
    }
    // Room for a line and its sender's name: below that, a client that reads
    // could be taken for one that does not.
    if (options.max_queued < 2 * options.max_line) {
        fmt::print(stderr, "example-chat-server: --max-queued ({}) must be at least twice --max-line ({})\n",
                   options.max_queued, options.max_line);
        return exit_usage;
    }
    options.linger = std::chrono::milliseconds{static_cast<std::int64_t>(linger_seconds * 1000.0 + 0.5)};
    const std::optional<muxio::SocketAddress> address = muxio::SocketAddress::ip(bind_host, port);
    if (!address) {
        fmt::print(stderr, "example-chat-server: --bind {}: not an IPv4 or IPv6 address\n", bind_host);
        return exit_usage;
    }

    muxio::Reactor reactor;
    chat::LineServer server{reactor, options};
    chat::ChatRoom room{server};
    const muxio::SocketAddress bound = server.listen(*address, room);

    int stopped_by = 0;
    for (const int signo : {SIGINT, SIGTERM}) {
        reactor.add_signal_handler(signo, [&reactor, &stopped_by, signo] {
            stopped_by = signo;
            reactor.stop();
        });
    }

    fmt::print("listening on {}\n", bound);
    std::fflush(stdout);
    reactor.run();

    fmt::print("stopped by signal {}: {} clients served, {} disconnected for not reading, {} still connected\n",
               stopped_by, server.stats().accepted, server.stats().dropped_slow, server.connections());
    return exit_ok;  // the server closes every connection, then the reactor closes
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& error) {
        fmt::print(stderr, "example-chat-server: {}\n", error.what());
        return exit_failed;
    }
}
