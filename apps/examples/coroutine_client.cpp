// example-coroutine-client: a TCP client written as one coroutine, with a
// deadline on every reply and cancellation through a std::stop_token.
//
// It connects to --host:--port (a name is resolved off the loop), then sends
// --count requests, one line each ("ping 1", "ping 2", ...), and waits at
// most --timeout seconds for the line that answers each. The whole
// conversation is one Task run by run_until_complete() with a stop_token:
// SIGINT, SIGTERM or the end of --run-for request the stop, the await pending
// then throws muxio::Cancelled, and the client closes the connection and
// exits 0. A reply that does not come in time (muxio::with_timeout) is an
// error: exit status 1, as for a refused connection.
//
//   example-coroutine-client --port 7000 --count 3
//   example-coroutine-client --host localhost --port 7000 --count 0 --interval 1   # until Ctrl-C
//
// Any line echo server answers it; example-poll-loop is one.
//
// stdout: "connected to ADDRESS", "reply N: TEXT" per reply, then
// "done: N replies" or "stopped by signal S: N replies" or
// "stopped after --run-for: N replies". Errors go to stderr.
// Exit status: 0 done or stopped, 1 failed, 2 bad command line.

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "muxio/muxio.hpp"

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

struct ClientOptions {
    std::string host = "127.0.0.1";
    std::uint16_t port = 0;
    std::string message = "ping";
    unsigned count = 1;                   // 0: until stopped
    std::chrono::milliseconds timeout{};  // for each reply
    std::chrono::milliseconds connect_timeout{};
    std::chrono::milliseconds interval{};  // between requests
    std::size_t max_line = std::size_t{64} * 1024;
};

// The whole conversation. Every co_await below listens to the task's ambient
// stop_token (the one run_until_complete() was given), so a stop request
// ends whichever is pending with muxio::Cancelled; the stream and the reader
// are then destroyed on the way out, closing the connection. Replies are read
// through a muxio::BufferedReader: bytes that arrive past a newline stay
// buffered for the next reply, and a reply line longer than max_line bytes
// is refused (muxio::LimitOverrun) instead of growing the buffer without end.
muxio::Task<void> converse(muxio::Reactor& reactor, const ClientOptions& options, std::size_t& replies) {
    const std::stop_token stop = co_await muxio::get_stop_token();

    muxio::TcpStream stream;
    try {
        stream = co_await muxio::with_timeout(reactor, options.connect_timeout,
                                              muxio::TcpStream::connect(reactor, options.host, options.port));
    } catch (const muxio::TimeoutError&) {
        throw std::runtime_error(fmt::format("connect {}:{}: no connection within {} ms", options.host, options.port,
                                             options.connect_timeout.count()));
    }
    fmt::print("connected to {}\n", stream.peer_address());
    std::fflush(stdout);

    muxio::BufferedReader reader{stream};
    for (unsigned n = 1; options.count == 0 || n <= options.count; ++n) {
        // Awaits that find their socket ready complete without suspending, so
        // a loop of them would not notice a stop on its own: ask each round.
        if (stop.stop_requested()) {
            throw muxio::Cancelled{};
        }
        if (n > 1 && options.interval.count() > 0) {
            co_await muxio::sleep_for(reactor, options.interval);
        }
        const std::string request = fmt::format("{} {}\n", options.message, n);
        co_await stream.write_all(request);

        // A view into the reader's buffer, valid until its next read.
        std::optional<std::string_view> reply;
        try {
            reply = co_await muxio::with_timeout(reactor, options.timeout, reader.read_line(options.max_line));
        } catch (const muxio::TimeoutError&) {
            throw std::runtime_error(fmt::format("no reply to request {} within {} ms", n, options.timeout.count()));
        } catch (const muxio::LimitOverrun&) {
            throw std::runtime_error(fmt::format("a reply line is longer than {} bytes", options.max_line));
        } catch (const muxio::IncompleteRead&) {
            throw std::runtime_error("the server closed the connection in the middle of a reply");
        }
        if (!reply) {
            throw std::runtime_error(fmt::format("the server closed the connection before replying to request {}", n));
        }
        fmt::print("reply {}: {}\n", n, *reply);
        std::fflush(stdout);
        ++replies;
    }
}

std::chrono::milliseconds to_milliseconds(double seconds) {
    return std::chrono::milliseconds{static_cast<std::int64_t>(seconds * 1000.0 + 0.5)};
}

int run(int argc, char** argv) {
    ClientOptions options;
    double timeout_seconds = 5.0;
    double connect_timeout_seconds = 5.0;
    double interval_seconds = 0.0;
    double run_for_seconds = 0.0;

    CLI::App app{
        "example-coroutine-client: sends lines to a TCP server and reads each reply with a deadline.\n"
        "Stops cleanly on SIGINT, SIGTERM or at the end of --run-for (through a std::stop_token).",
        "example-coroutine-client"};
    app.add_option("--host", options.host, "server name or address")->capture_default_str();
    app.add_option("--port", options.port, "server TCP port")->required()->check(CLI::Range(1, 65535));
    app.add_option("--message", options.message, "text of each request, sent as \"MESSAGE N\"")->capture_default_str();
    app.add_option("--count", options.count, "requests to send; 0: until stopped")->capture_default_str();
    app.add_option("--timeout", timeout_seconds, "seconds to wait for each reply")
        ->check(CLI::Range(0.001, 86400.0))
        ->capture_default_str();
    app.add_option("--connect-timeout", connect_timeout_seconds, "seconds to wait for the connection")
        ->check(CLI::Range(0.001, 86400.0))
        ->capture_default_str();
    app.add_option("--interval", interval_seconds, "seconds between a reply and the next request")
        ->check(CLI::Range(0.0, 86400.0))
        ->capture_default_str();
    app.add_option("--run-for", run_for_seconds, "request the stop after this many seconds; 0: never")
        ->check(CLI::Range(0.0, 86400.0))
        ->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int status = app.exit(error);
        return status == 0 ? exit_ok : exit_usage;
    }
    if (options.message.find_first_of("\r\n") != std::string::npos) {
        fmt::print(stderr, "example-coroutine-client: --message must be one line\n");
        return exit_usage;
    }
    options.timeout = to_milliseconds(timeout_seconds);
    options.connect_timeout = to_milliseconds(connect_timeout_seconds);
    options.interval = to_milliseconds(interval_seconds);

    muxio::Reactor reactor;
    std::stop_source stop;
    int stopped_by_signal = 0;
    for (const int signo : {SIGINT, SIGTERM}) {
        reactor.add_signal_handler(signo, [&stop, &stopped_by_signal, signo] {
            stopped_by_signal = signo;
            stop.request_stop();
        });
    }
    if (run_for_seconds > 0) {
        reactor.call_later(to_milliseconds(run_for_seconds), [&stop] { stop.request_stop(); });
    }

    std::size_t replies = 0;
    try {
        muxio::run_until_complete(reactor, converse(reactor, options, replies), stop.get_token());
        fmt::print("done: {} replies\n", replies);
    } catch (const muxio::Cancelled&) {
        if (stopped_by_signal != 0) {
            fmt::print("stopped by signal {}: {} replies\n", stopped_by_signal, replies);
        } else {
            fmt::print("stopped after --run-for: {} replies\n", replies);
        }
    }
    return exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& error) {
        fmt::print(stderr, "example-coroutine-client: {}\n", error.what());
        return exit_failed;
    }
}
