// muxio-echo: a TCP echo server, written twice over the same reactor, with
// callbacks or with coroutines (--mode).
//
// Prints "listening on ADDRESS" as the first line of stdout (start it with
// --port 0 and read where to connect), serves until SIGINT or SIGTERM, then
// closes every connection and prints a one-line summary. Logs go to stderr
// through the `muxio` logger, quiet unless MUXIO_LOG_LEVEL says otherwise.
//
// --threads N runs N reactors on N threads (muxio::ReactorGroup), each with
// its own server on its own listener, all bound to one port with
// SO_REUSEPORT: the kernel spreads the connections, each stays on the reactor
// that accepted it. The summary adds up the servers' counters, and with more
// than one thread says how many connections each accepted.

#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <system_error>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>

#include "echo_server.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/reactor_group.hpp"
#include "muxio/selectors.hpp"

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;
// As for muxio-demo: the kernel refused the selector asked for.
constexpr int exit_selector_refused = 77;
// More reactors than this is a mistake, not a configuration.
constexpr std::size_t max_threads = 256;

using EchoServer = std::variant<std::monostate, muxio::apps::CallbackEchoServer, muxio::apps::CoroutineEchoServer>;

int run(int argc, char** argv) {
    std::string mode = "callback";
    std::string bind_host = "127.0.0.1";
    std::uint16_t port = 7007;
    std::string selector;
    bool reuse_port = false;
    std::size_t threads = 1;
    std::vector<std::string> selectors;
    for (const std::string_view name : muxio::available_selectors()) {
        selectors.emplace_back(name);
    }

    CLI::App app{
        "muxio-echo: a TCP echo server on the muxio reactor, with callbacks or coroutines.\n"
        "Prints \"listening on ADDRESS\" first; stops cleanly on SIGINT or SIGTERM.",
        "muxio-echo"};
    app.add_option("--mode", mode, "callback: reactor callbacks; coroutine: one task per connection")
        ->check(CLI::IsMember({"callback", "coroutine"}))
        ->capture_default_str();
    app.add_option("--port", port, "TCP port; 0 lets the kernel pick one")->capture_default_str();
    app.add_option("--bind", bind_host, "IPv4 or IPv6 address to listen on")->capture_default_str();
    app.add_option("--selector", selector, "I/O mechanism (default: the best the kernel accepts)")
        ->check(CLI::IsMember(selectors));
    app.add_flag("--reuse-port", reuse_port, "set SO_REUSEPORT, to run several servers on one port");
    app.add_option("--threads", threads,
                   "reactors, each on a thread of its own with its own listener on the port (SO_REUSEPORT)")
        ->check(CLI::Range(std::size_t{1}, max_threads))
        ->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int status = app.exit(error);
        return status == 0 ? exit_ok : exit_usage;
    }

    const std::optional<muxio::SocketAddress> address = muxio::SocketAddress::ip(bind_host, port);
    if (!address) {
        fmt::print(stderr, "muxio-echo: --bind {}: not an IPv4 or IPv6 address\n", bind_host);
        return exit_usage;
    }

    std::optional<muxio::ReactorGroup> group;
    try {
        group.emplace(threads, muxio::ReactorOptions{selector, {}});
    } catch (const std::system_error& error) {
        fmt::print(stderr, "muxio-echo: the kernel refused the selector: {}\n", error.what());
        return exit_selector_refused;
    }
    group->stop_on_signals({SIGINT, SIGTERM});

    // Each server is made, used and stopped on its reactor's thread; read
    // and destroyed here once run() has joined them all.
    std::vector<EchoServer> servers(threads);
    std::optional<muxio::SocketAddress> bound;
    group->run([&](muxio::Reactor& reactor, std::size_t index) -> muxio::ReactorGroup::StopCallback {
        muxio::ListenOptions options;
        options.reuse_port = reuse_port || threads > 1;
        // The first binds (port 0: the kernel picks), the others join it.
        const muxio::SocketAddress here = index == 0 ? *address : *muxio::SocketAddress::ip(bind_host, bound->port());
        muxio::TcpListener listener = muxio::TcpListener::bind(reactor, here, options);
        if (index == 0) {
            bound = listener.local_address();
        }
        EchoServer& server = servers[index];
        if (mode == "callback") {
            server.emplace<muxio::apps::CallbackEchoServer>(reactor, std::move(listener));
        } else {
            server.emplace<muxio::apps::CoroutineEchoServer>(reactor, std::move(listener));
        }
        if (index + 1 == threads) {
            fmt::print("listening on {} ({} mode, {} selector)\n", *bound, mode, reactor.selector_name());
            std::fflush(stdout);
        }
        return [&reactor, &server] {
            std::visit(
                [](auto& running) {
                    if constexpr (!std::is_same_v<std::decay_t<decltype(running)>, std::monostate>) {
                        running.shutdown();
                    }
                },
                server);
            reactor.stop();
        };
    });

    muxio::apps::EchoStats stats;
    std::vector<std::size_t> accepted_per_thread;
    for (const EchoServer& server : servers) {
        const muxio::apps::EchoStats one = std::visit(
            [](const auto& running) -> muxio::apps::EchoStats {
                if constexpr (std::is_same_v<std::decay_t<decltype(running)>, std::monostate>) {
                    return {};
                } else {
                    return running.stats();
                }
            },
            server);
        stats.accepted += one.accepted;
        stats.closed += one.closed;
        stats.bytes += one.bytes;
        stats.accept_errors += one.accept_errors;
        stats.connection_errors += one.connection_errors;
        accepted_per_thread.push_back(one.accepted);
    }
    const std::string per_thread =
        threads > 1 ? fmt::format(", accepted per thread: {}", fmt::join(accepted_per_thread, " ")) : std::string{};
    fmt::print("stopped by signal {}: {} connections, {} bytes echoed, {} accept errors, {} connection errors{}\n",
               group->stopped_by_signal(), stats.accepted, stats.bytes, stats.accept_errors, stats.connection_errors,
               per_thread);
    servers.clear();
    group.reset();  // closes the reactors, which also ends the coroutine tasks still suspended
    return exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& error) {
        fmt::print(stderr, "muxio-echo: {}\n", error.what());
        return exit_failed;
    }
}
