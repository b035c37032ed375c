// muxio-resp: an in-memory key-value server speaking RESP2, the Redis
// protocol, on a muxio::Reactor. See store.hpp, commands.hpp and server.hpp.
//
// Prints one line on stdout once it listens, "muxio-resp: listening on
// HOST:PORT ...", so that a script that asked for --port 0 can read the port.
// Runs until SIGINT or SIGTERM, then closes every connection and exits 0.
//
// --threads N runs N reactors on N threads (muxio::ReactorGroup), each with
// its own server on the one port (SO_REUSEPORT); a connection stays on the
// reactor that accepted it. The keyspace is one Store for all of them,
// behind one mutex that each command holds while it runs (Dispatcher's
// store_guard): a key-value server must show a SET on one connection to a
// GET on any other, whichever thread serves it. The threads share the
// parsing, reading and writing; the commands themselves run one at a time.
// With one thread there is no mutex at all. The expiry timer runs on
// reactor 0.

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "muxio/reactor.hpp"
#include "muxio/reactor_group.hpp"
#include "muxio/selectors.hpp"
#include "server.hpp"
#include "store.hpp"

namespace {

// The status CTest's SKIP_RETURN_CODE names: the kernel refused the selector
// asked for (io_uring under seccomp), which is not muxio-resp's failure.
constexpr int exit_selector_refused = 77;
// More reactors than this is a mistake, not a configuration.
constexpr std::size_t max_threads = 256;

int run(int argc, char** argv) {
    resp::ServerOptions options;
    std::string selector;
    std::string log_level = "warn";

    CLI::App app{"muxio-resp: an in-memory key-value server speaking RESP2 (the Redis protocol) on a muxio reactor.",
                 "muxio-resp"};
    app.add_option("-p,--port", options.port, "TCP port; 0 lets the kernel choose (the port is printed on stdout)")
        ->capture_default_str();
    app.add_option("-b,--bind", options.bind,
                   "numeric IPv4 or IPv6 address to listen on, e.g. 0.0.0.0 or :: (host names are not resolved)")
        ->capture_default_str();
    std::vector<std::string> selectors;
    for (const std::string_view name : muxio::available_selectors()) {
        selectors.emplace_back(name);
    }
    app.add_option("--selector", selector, "event mechanism (default: the best the kernel accepts)")
        ->check(CLI::IsMember(selectors));
    // The limits are Redis's, under names that say what they bound; sizes
    // take the suffixes KB, MB and GB (powers of 1024).
    app.add_option("--max-bulk", options.limits.max_bulk,
                   "longest bulk string a request may carry, in bytes; a longer one is a protocol error "
                   "(Redis's proto-max-bulk-len)")
        ->transform(CLI::AsSizeValue(false))
        ->capture_default_str();
    app.add_option("--max-query-buffer", options.max_query_buffer,
                   "largest request; a client sending a larger one is closed without a reply; at least --max-bulk "
                   "(Redis's client-query-buffer-limit)")
        ->transform(CLI::AsSizeValue(false))
        ->capture_default_str();
    app.add_option("--max-output-buffer", options.max_output_buffer,
                   "most unsent reply bytes one connection may have; a client whose replies would exceed it is "
                   "closed (the hard limit of Redis's client-output-buffer-limit)")
        ->transform(CLI::AsSizeValue(false))
        ->capture_default_str();
    app.add_option("--output-soft-limit", options.output_soft_limit,
                   "a client whose unsent replies stay above this for --output-soft-seconds is closed; 0: none "
                   "(the soft limit of Redis's client-output-buffer-limit)")
        ->transform(CLI::AsSizeValue(false))
        ->capture_default_str();
    std::uint32_t soft_seconds = 60;
    app.add_option("--output-soft-seconds", soft_seconds, "how long replies may stay above --output-soft-limit")
        ->capture_default_str();
    app.add_option("--max-clients", options.max_clients,
                   "most connections at once; one more is answered '-ERR max number of clients reached' and closed "
                   "(Redis's maxclients)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    std::size_t threads = 1;
    app.add_option("--threads", threads,
                   "reactors, each on a thread of its own with its own listener on the port (SO_REUSEPORT), "
                   "sharing one keyspace; --max-clients is shared out evenly between them")
        ->check(CLI::Range(std::size_t{1}, max_threads))
        ->capture_default_str();
    app.add_option("--log-level", log_level, "stderr logging: trace, debug, info, warn, error, critical, off")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
        ->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        // --help is 0; a bad command line is 2, as for the other apps.
        return app.exit(error) == 0 ? 0 : 2;
    }

    options.output_soft_time = std::chrono::seconds{soft_seconds};
    if (const std::string problem = resp::check_options(options); !problem.empty()) {
        fmt::print(stderr, "muxio-resp: {}\n", problem);
        return 2;
    }
    resp::logger().set_level(spdlog::level::from_str(log_level));

    std::optional<muxio::ReactorGroup> group;
    try {
        group.emplace(threads, muxio::ReactorOptions{selector, {}});
    } catch (const std::system_error& error) {
        // A mechanism named on the command line that the kernel refuses is
        // a skip for the tests; the default one refused is a failure.
        fmt::print(stderr, "muxio-resp: {}\n", error.what());
        return selector.empty() ? 1 : exit_selector_refused;
    }
    muxio::Reactor& first = group->reactor(0);
    try {
        std::mutex store_guard;
        std::mutex* const guard = threads > 1 ? &store_guard : nullptr;
        // Reactor::time() may be read from any thread (steady_clock).
        resp::Store store{[&first] { return first.time(); }};
        resp::ExpiryTimer expiry{first, store, resp::ExpiryTimer::default_budget, guard};
        resp::ServerInfo info;
        info.max_bulk = options.limits.max_bulk;
        info.max_query_buffer = options.max_query_buffer;
        info.max_output_buffer = options.max_output_buffer;
        info.output_soft_limit = options.output_soft_limit;
        info.output_soft_seconds = options.output_soft_limit == 0 ? 0 : soft_seconds;
        info.max_clients = options.max_clients;
        // Each server's share of the limit, rounded up.
        options.max_clients = (options.max_clients + threads - 1) / threads;
        options.reuse_port = threads > 1;
        group->stop_on_signals({SIGINT, SIGTERM});

        // Made, used and closed on their reactors' threads; read and
        // destroyed here once run() has joined them all.
        std::vector<std::optional<resp::Dispatcher>> dispatchers(threads);
        std::vector<std::optional<resp::Server>> servers(threads);
        group->run([&](muxio::Reactor& reactor, std::size_t index) -> muxio::ReactorGroup::StopCallback {
            resp::ServerOptions own = options;
            if (index > 0) {
                own.port = servers[0]->port();  // the first bound; the others join it
            }
            resp::Dispatcher& dispatcher = dispatchers[index].emplace(store, info, guard);
            resp::Server& server = servers[index].emplace(reactor, dispatcher, own);
            const std::uint16_t port = server.start();
            if (index + 1 == threads) {
                const bool ipv6 = options.bind.find(':') != std::string::npos;
                fmt::print("muxio-resp: listening on {}{}{}:{} (selector {})\n", ipv6 ? "[" : "", options.bind,
                           ipv6 ? "]" : "", port, reactor.selector_name());
                // Whoever reads the port waits for this line: no buffering.
                (void)std::fflush(stdout);
            }
            return [&reactor, &server, &expiry, index] {
                if (index == 0) {
                    resp::logger().info("signal received: shutting down");
                    expiry.stop();
                }
                server.close();
                reactor.stop();
            };
        });
        first.remove_signal_handler(SIGINT);
        first.remove_signal_handler(SIGTERM);
        std::uint64_t commands = 0;
        for (const auto& dispatcher : dispatchers) {
            commands += dispatcher->commands_run();
        }
        servers.clear();
        resp::logger().info("stopped after {} commands", commands);
    } catch (const std::exception& error) {
        fmt::print(stderr, "muxio-resp: {}\n", error.what());
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& error) {
        // Nothing is expected here (the command line and the server report
        // their own errors); this is the last line of defence.
        fmt::print(stderr, "muxio-resp: {}\n", error.what());
        return 1;
    }
}
