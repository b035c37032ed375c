// muxio-http: a small HTTP/1.1 server on the muxio Reactor.
//
// Prints the port it listens on as the first line of stdout (so a script can
// start it with --port 0 and read where to connect), then serves until
// SIGINT or SIGTERM. Logs go to stderr through the `muxio` logger, quiet
// unless MUXIO_LOG_LEVEL says otherwise.

#include <csignal>
#include <cstdio>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "handler.hpp"
#include "muxio/log.hpp"
#include "muxio/reactor.hpp"
#include "muxio/selectors.hpp"
#include "server.hpp"

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;
// As for muxio-demo: the kernel refused the selector asked for.
constexpr int exit_selector_refused = 77;

int run(int argc, char** argv) {
    muxio::http::ServerConfig config;
    std::string root;
    std::string selector;
    double idle_seconds = 30.0;
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
    app.add_option("--idle-timeout", idle_seconds, "seconds before an idle connection is closed")
        ->check(CLI::Range(0.001, 86400.0))
        ->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int status = app.exit(error);
        return status == 0 ? exit_ok : exit_usage;
    }
    config.idle_timeout = std::chrono::ceil<std::chrono::milliseconds>(std::chrono::duration<double>{idle_seconds});

    std::optional<muxio::Reactor> reactor;
    try {
        reactor.emplace(muxio::ReactorOptions{selector, {}});
    } catch (const std::system_error& error) {
        fmt::print(stderr, "muxio-http: the kernel refused the selector: {}\n", error.what());
        return exit_selector_refused;
    }

    std::optional<muxio::http::Server> server;
    try {
        muxio::http::Handler handler{root.empty() ? std::nullopt : std::optional<std::string>{root}};
        server.emplace(*reactor, std::move(handler), config);
    } catch (const std::invalid_argument& error) {
        fmt::print(stderr, "muxio-http: {}\n(see muxio-http --help)\n", error.what());
        return exit_usage;
    }

    // sendfile(2) to a client that went away must be an EPIPE, not a SIGPIPE.
    (void)std::signal(SIGPIPE, SIG_IGN);
    reactor->add_signal_handler(SIGINT, [&server] { server->shutdown(); });
    reactor->add_signal_handler(SIGTERM, [&server] { server->shutdown(); });

    fmt::print("{}\n", server->port());
    (void)std::fflush(stdout);
    muxio::logger().info("muxio-http: listening on {}:{}, selector {}, root {}", config.bind, server->port(),
                         reactor->selector_name(), root.empty() ? "(none)" : root);

    reactor->run();
    const muxio::http::ServerStats& stats = server->stats();
    muxio::logger().info("muxio-http: stopped after {} connection(s), {} request(s)", stats.accepted, stats.requests);
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
