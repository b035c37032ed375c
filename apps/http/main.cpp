// muxio-http: a small HTTP/1.1 server on the muxio Reactor.
//
// Prints the port it listens on as the first line of stdout (so a script can
// start it with --port 0 and read where to connect), then serves until
// SIGINT or SIGTERM. Logs go to stderr through the `muxio` logger, quiet
// unless MUXIO_LOG_LEVEL says otherwise.
//
// --threads N runs N reactors on N threads (muxio::ReactorGroup), each with
// its own server bound to the one port with SO_REUSEPORT; a connection stays
// on the reactor that accepted it. A signal shuts every server down on its
// own thread (a second one closes everything), and the closing log line adds
// up their counters.

#include <sys/resource.h>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>

#include "handler.hpp"
#include "muxio/config.hpp"
#include "muxio/log.hpp"
#include "muxio/reactor.hpp"
#include "muxio/reactor_group.hpp"
#include "muxio/selectors.hpp"
#include "server.hpp"

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;
// As for muxio-demo: the kernel refused the selector asked for.
constexpr int exit_selector_refused = 77;

// Descriptors kept for the listener, the reactor, logs and a refused
// connection, besides two per connection.
constexpr std::size_t spare_descriptors = 32;
// More reactors than this is a mistake, not a configuration.
constexpr std::size_t max_threads = 256;

// The connection limit to use: `wanted`, or, when it was not asked for
// explicitly and the descriptor limit cannot hold that many connections,
// as many as it can. A limit asked for that cannot be held is kept (accepts
// pause for want of descriptors before it is reached) and warned about.
std::size_t fit_descriptor_limit(std::size_t wanted, bool explicit_value) {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) {
        return wanted;
    }
    const auto descriptors = static_cast<std::size_t>(limit.rlim_cur);
    const std::size_t fits = descriptors > spare_descriptors + 2 ? (descriptors - spare_descriptors) / 2 : 1;
    if (wanted <= fits) {
        return wanted;
    }
    if (explicit_value) {
        muxio::logger().warn(
            "muxio-http: --max-connections {} needs up to {} descriptors, RLIMIT_NOFILE allows {}: "
            "accepts will pause for want of descriptors past about {} connections",
            wanted, 2 * wanted + spare_descriptors, descriptors, fits);
        return wanted;
    }
    muxio::logger().info("muxio-http: at most {} connections, as RLIMIT_NOFILE is {}", fits, descriptors);
    return fits;
}

int run(int argc, char** argv) {
    muxio::http::ServerConfig config;
    std::string root;
    std::string selector;
    double idle_seconds = 30.0;
    double header_seconds = 20.0;
    double body_seconds = 60.0;
    double handshake_seconds = 10.0;
    std::size_t max_connections = 10000;
    std::size_t threads = 1;
    std::vector<std::string> selectors;
    for (const std::string_view name : muxio::available_selectors()) {
        selectors.emplace_back(name);
    }

    CLI::App app{
        "muxio-http: an HTTP/1.1 server on the muxio reactor.\n"
        "Answers GET and HEAD of / with a greeting and, with --root, of other paths with the\n"
        "regular files under that directory. Prints the bound port as the first line of stdout.",
        "muxio-http"};
    app.add_option("--port", config.port, "TCP port; 0 lets the kernel pick one")->capture_default_str();
    app.add_option("--bind", config.bind, "address to listen on")->capture_default_str();
    app.add_option("--root", root, "directory to serve files from (default: none, only /)")
        ->check(CLI::ExistingDirectory);
    app.add_option("--selector", selector, "I/O mechanism (default: the best the kernel accepts)")
        ->check(CLI::IsMember(selectors));
    app.add_option("--idle-timeout", idle_seconds, "seconds with no byte read or written before a connection closes")
        ->check(CLI::Range(0.001, 86400.0))
        ->capture_default_str();
    app.add_option("--header-timeout", header_seconds, "seconds a request head may take from its first byte (then 408)")
        ->check(CLI::Range(0.001, 86400.0))
        ->capture_default_str();
    app.add_option("--body-timeout", body_seconds, "seconds a request body may take after its head (then 408)")
        ->check(CLI::Range(0.001, 86400.0))
        ->capture_default_str();
    CLI::Option* const max_connections_option =
        app.add_option("--max-connections", max_connections,
                       "connections open at once; more are answered 503 and closed "
                       "(default: 10000, fewer if RLIMIT_NOFILE cannot hold two descriptors each)")
            ->check(CLI::Range(std::size_t{1}, std::size_t{10'000'000}));
    app.add_option("--threads", threads,
                   "reactors, each on a thread of its own with its own listener on the port (SO_REUSEPORT); "
                   "--max-connections is shared out evenly between them")
        ->check(CLI::Range(std::size_t{1}, max_threads))
        ->capture_default_str();
    CLI::Option* const tls_cert_option =
        app.add_option("--tls-cert", config.tls_certificate_file,
                       "serve HTTPS: PEM file of the certificate chain, the server's first (needs --tls-key)")
            ->check(CLI::ExistingFile);
    CLI::Option* const tls_key_option =
        app.add_option("--tls-key", config.tls_key_file,
                       "serve HTTPS: PEM file of the certificate's private key, unencrypted (needs --tls-cert)")
            ->check(CLI::ExistingFile);
    tls_cert_option->needs(tls_key_option);
    tls_key_option->needs(tls_cert_option);
    app.add_option("--tls-handshake-timeout", handshake_seconds,
                   "seconds a TLS handshake may take from the accept; 0: no limit")
        ->check(CLI::Range(0.0, 86400.0))
        ->needs(tls_cert_option)
        ->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int status = app.exit(error);
        return status == 0 ? exit_ok : exit_usage;
    }
    const auto milliseconds = [](double seconds) {
        return std::chrono::ceil<std::chrono::milliseconds>(std::chrono::duration<double>{seconds});
    };
    config.idle_timeout = milliseconds(idle_seconds);
    config.header_timeout = milliseconds(header_seconds);
    config.body_timeout = milliseconds(body_seconds);
    config.tls_handshake_timeout = milliseconds(handshake_seconds);
#if !MUXIO_HAS_TLS
    if (tls_cert_option->count() > 0) {
        fmt::print(stderr,
                   "muxio-http was built without TLS (MUXIO_TLS=OFF): --tls-cert and --tls-key are not "
                   "available\n");
        return exit_usage;
    }
#endif
    config.max_connections = fit_descriptor_limit(max_connections, max_connections_option->count() > 0);

    // Each server's share of the limit, rounded up: SO_REUSEPORT spreads
    // connections evenly on average, not exactly.
    config.max_connections = (config.max_connections + threads - 1) / threads;
    config.reuse_port = threads > 1;

    std::optional<muxio::ReactorGroup> group;
    try {
        group.emplace(threads, muxio::ReactorOptions{selector, {}});
    } catch (const std::system_error& error) {
        fmt::print(stderr, "muxio-http: the kernel refused the selector: {}\n", error.what());
        return exit_selector_refused;
    }

    // A directory that cannot be served stops it here, before it listens.
    std::optional<muxio::http::Handler> handler;
    try {
        handler.emplace(root.empty() ? std::nullopt : std::optional<std::string>{root});
    } catch (const std::invalid_argument& error) {
        fmt::print(stderr, "muxio-http: {}\n(see muxio-http --help)\n", error.what());
        return exit_usage;
    }

    // sendfile(2) to a client that went away must be an EPIPE, not a SIGPIPE.
    (void)std::signal(SIGPIPE, SIG_IGN);
    group->stop_on_signals({SIGINT, SIGTERM});

    // Each server is made, used and shut down on its reactor's thread; read
    // and destroyed here once run() has joined them all. A certificate or
    // key that cannot be used stops the first setup, before anything
    // listens; the message names the file (muxio::TlsError).
    std::vector<std::optional<muxio::http::Server>> servers(threads);
    try {
        group->run([&](muxio::Reactor& reactor, std::size_t index) -> muxio::ReactorGroup::StopCallback {
            muxio::http::ServerConfig own = config;
            if (index > 0) {
                own.port = servers[0]->port();  // the first bound; the others join it
            }
            muxio::http::Server& server = servers[index].emplace(reactor, *handler, own);
            if (index + 1 == threads) {
                fmt::print("{}\n", server.port());
                (void)std::fflush(stdout);
                muxio::logger().info("muxio-http: listening on {}:{} ({}), selector {}, root {}", config.bind,
                                     server.port(), config.tls_certificate_file.empty() ? "HTTP" : "HTTPS",
                                     reactor.selector_name(), root.empty() ? "(none)" : root);
                if (threads > 1) {
                    muxio::logger().info("muxio-http: {} threads, at most {} connections each", threads,
                                         config.max_connections);
                }
            }
            // shutdown() stops the reactor once its connections are done.
            return [&server] { server.shutdown(); };
        });
    } catch (const std::invalid_argument& error) {
        fmt::print(stderr, "muxio-http: {}\n(see muxio-http --help)\n", error.what());
        return exit_usage;
    }

    muxio::http::ServerStats stats;
    std::vector<std::uint64_t> accepted_per_thread;
    for (const auto& server : servers) {
        const muxio::http::ServerStats one = server->stats();
        stats.accepted += one.accepted;
        stats.requests += one.requests;
        stats.handshake_failures += one.handshake_failures;
        stats.handshake_timeouts += one.handshake_timeouts;
        accepted_per_thread.push_back(one.accepted);
    }
    servers.clear();
    muxio::logger().info("muxio-http: stopped after {} connection(s), {} request(s)", stats.accepted, stats.requests);
    if (threads > 1) {
        muxio::logger().info("muxio-http: connections accepted per thread: {}", fmt::join(accepted_per_thread, " "));
    }
    if (!config.tls_certificate_file.empty()) {
        muxio::logger().info("muxio-http: {} TLS handshake(s) failed, {} ran out of time", stats.handshake_failures,
                             stats.handshake_timeouts);
    }
    return exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::system_error& error) {
        fmt::print(stderr, "muxio-http: {}\n", error.what());
    } catch (const std::exception& error) {
        fmt::print(stderr, "muxio-http: error: {}\n", error.what());
    }
    return exit_failed;
}
