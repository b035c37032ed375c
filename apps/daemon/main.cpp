// muxio-daemon: an example of a program that owns its main loop and hosts a
// muxio Reactor inside it.
//
// The loop below is plain poll(2) over the reactor's embed_fd(), which polls
// readable whenever the reactor has work; the timeout is the reactor's
// time_to_next_work() bounded by the daemon's own deadlines (the end of a
// drain, the end of the stop). Whenever the descriptor is readable, or the
// reactor's time has come, the loop runs one non-blocking reactor iteration.
// Everything else (timers, sockets, signals, coroutines) lives in the reactor.
//
// stdout: "listening on ADDRESS", then "control on PATH" (or "control off").
// Logs go to stderr through the spdlog logger "muxio-daemon".
// Exit status: 0 after a graceful stop, 1 on a startup failure, 2 for a bad
// command line.

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "config.hpp"
#include "daemon.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/selectors.hpp"

namespace {

using namespace std::chrono_literals;
using muxio::Reactor;
using namespace muxio::apps::daemon;

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

// How long the connections get to end once everything is closed; they need
// an iteration, so this only bounds a bug. Destroying the daemon then ends
// what is left.
constexpr auto stop_grace = 2s;

// poll(2)'s timeout: milliseconds rounded up, so the loop never wakes just
// before the deadline and spins; -1 to wait without limit.
int poll_timeout(std::optional<Reactor::Duration> wait) {
    if (!wait) {
        return -1;
    }
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(std::max(*wait, Reactor::Duration::zero())).count();
    return static_cast<int>(std::min<std::int64_t>(ms, INT_MAX));
}

// The main loop, which the daemon owns: the reactor is one source of work
// among possibly several (here it is the only descriptor, and the daemon
// adds deadlines of its own). Returns when the daemon has stopped.
void run_loop(Reactor& reactor, Daemon& daemon, spdlog::logger& log) {
    pollfd watched{};
    watched.fd = reactor.embed_fd();
    watched.events = POLLIN;
    std::optional<Reactor::TimePoint> give_up;  // set once stopping

    for (;;) {
        if (daemon.advance()) {
            return;
        }
        const Reactor::TimePoint now = reactor.time();
        if (daemon.state() == State::stopping) {
            if (!give_up) {
                give_up = now + stop_grace;
            } else if (now >= *give_up) {
                log.warn("{} connection(s) still ending after {} ms; closing them", daemon.open_connections(),
                         std::chrono::duration_cast<std::chrono::milliseconds>(stop_grace).count());
                return;
            }
        }

        // The wait: until the reactor has work, or one of our own deadlines.
        const std::optional<Reactor::Duration> reactor_wait = reactor.time_to_next_work();
        std::optional<Reactor::Duration> wait = reactor_wait;
        for (const std::optional<Reactor::TimePoint> deadline : {daemon.drain_deadline(), give_up}) {
            if (deadline && (!wait || *deadline - now < *wait)) {
                wait = *deadline - now;
            }
        }

        watched.revents = 0;
        const int ready = ::poll(&watched, 1, poll_timeout(wait));
        if (ready < 0) {
            if (errno == EINTR) {
                continue;  // a signal: the reactor's own handler has made the descriptor readable
            }
            throw std::system_error(errno, std::system_category(), "poll");
        }
        // Readable: I/O, a signal, a queued callback or a due timer. A
        // timeout that was the reactor's own means a timer is due, even if
        // its timerfd has not been seen yet.
        const bool reactor_due = ready == 0 && reactor_wait.has_value() && wait == reactor_wait;
        if ((watched.revents & (POLLIN | POLLERR | POLLHUP)) != 0 || reactor_due) {
            reactor.run_once(0s);
        }
    }
}

int run(int argc, char** argv) {
    std::string config_path;
    std::string control_path;
    std::string bind_host = "127.0.0.1";
    std::uint16_t port = 7009;
    std::string log_level;
    std::string selector;
    // Only the mechanisms whose reactor exposes a descriptor to poll.
    std::vector<std::string> selectors;
    for (const std::string_view name : muxio::available_selectors()) {
        if (name == "epoll" || name == "io_uring" || name == "kqueue") {
            selectors.emplace_back(name);
        }
    }

    CLI::App app{
        "muxio-daemon: an example daemon that runs its own poll(2) loop and embeds a muxio reactor.\n"
        "Serves a TCP greeting-and-echo service and a Unix-socket control channel (status, reload,\n"
        "stop, help). SIGHUP reloads --config; SIGINT/SIGTERM drain the connections and exit 0.\n"
        "Prints \"listening on ADDRESS\" and \"control on PATH\" first.",
        "muxio-daemon"};
    app.add_option("--config", config_path,
                   "configuration file, read at start and on reload: a regular file of at most 1 MiB of "
                   "'key = value' lines: interval (seconds, 0.01 to 86400), greeting, log_level, "
                   "drain_timeout (seconds, 0 to 86400)")
        ->check(CLI::ExistingFile);
    app.add_option("--control", control_path, "path of the control socket (default: no control channel)");
    app.add_option("--port", port, "TCP port of the service; 0 lets the kernel pick one")->capture_default_str();
    app.add_option("--bind", bind_host, "IPv4 or IPv6 address of the service")->capture_default_str();
    app.add_option("--log-level", log_level, "log level, overriding the file's log_level (default: warn)")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "warning", "error", "critical", "off"}));
    app.add_option("--selector", selector, "I/O mechanism (default: the best the kernel accepts)")
        ->check(CLI::IsMember(selectors));
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int status = app.exit(error);
        return status == 0 ? exit_ok : exit_usage;
    }

    const std::optional<muxio::SocketAddress> address = muxio::SocketAddress::ip(bind_host, port);
    if (!address) {
        fmt::print(stderr, "muxio-daemon: --bind {}: not an IPv4 or IPv6 address\n", bind_host);
        return exit_usage;
    }

    auto log = std::make_shared<spdlog::logger>("muxio-daemon", std::make_shared<spdlog::sinks::stderr_sink_st>());
    spdlog::register_logger(log);

    Config config;
    if (!config_path.empty()) {
        try {
            config = load_config(config_path);
        } catch (const ConfigError& error) {
            fmt::print(stderr, "muxio-daemon: {}\n", error.what());
            return exit_failed;
        }
    }
    DaemonOptions options;
    options.tcp_address = *address;
    options.control_path = control_path;
    options.config_path = config_path;
    if (!log_level.empty()) {
        options.log_level_override = parse_log_level(log_level);
    }

    Reactor reactor{muxio::ReactorOptions{selector, {}}};
    std::optional<Daemon> daemon;
    daemon.emplace(reactor, log, std::move(config), std::move(options));

    // Signals reach the reactor's handlers, which run in an iteration like
    // any other callback. A second SIGINT or SIGTERM cuts the drain short.
    for (const int signo : {SIGINT, SIGTERM}) {
        reactor.add_signal_handler(signo, [&daemon, &log, signo] {
            const char* name = signo == SIGINT ? "SIGINT" : "SIGTERM";
            if (!daemon->request_stop(name)) {
                log->warn("{} during the stop: closing the remaining connections now", name);
                daemon->end_drain();
            }
        });
    }
    reactor.add_signal_handler(SIGHUP, [&daemon] { (void)daemon->reload(); });

    fmt::print("listening on {}\n", daemon->tcp_address());
    if (daemon->control_path().empty()) {
        fmt::print("control off\n");
    } else {
        fmt::print("control on {}\n", daemon->control_path());
    }
    (void)std::fflush(stdout);
    log->info("started: pid {}, {} selector, configuration {}", ::getpid(), reactor.selector_name(),
              config_path.empty() ? std::string{"(defaults)"} : config_path);

    run_loop(reactor, *daemon, *log);

    const StatusReport last = daemon->status();
    daemon.reset();
    // The daemon closed its sockets and removed the control socket file;
    // this restores the signal dispositions.
    reactor.close();
    log->info("stopped after {:.3f} s: {} connection(s) served, {} heartbeat(s), generation {}", last.uptime,
              last.served, last.ticks, last.generation);
    return exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& error) {
        fmt::print(stderr, "muxio-daemon: {}\n", error.what());
        return exit_failed;
    }
}
