// example-poll-loop: a program that owns its main loop, a plain poll(2), and
// hosts a muxio reactor in it as one source of work among others.
//
// The reactor serves a TCP echo server (one coroutine per connection). The
// host loop watches, besides the reactor's embed_fd(), its own things: stdin,
// where it reads commands ("status", "quit"), and a deadline of its own
// (--status-every prints the counters periodically). Whenever embed_fd() is
// readable the loop runs one reactor iteration with run_once(0), which never
// waits; the wait itself is always poll()'s. See README.md, "Embedding the
// reactor in another loop".
//
//   example-poll-loop --port 7000                      # then type "status" or "quit"
//   example-poll-loop --port 0 --status-every 5 < /dev/null
//
// stdout: "listening on ADDRESS" first, "status: open=N accepted=N bytes=N"
// for each status, and "stopped by quit|signal S: ..." at the end. A closed
// stdin only stops the commands: the server runs on until SIGINT or SIGTERM.
// Exit status: 0 after a clean stop, 1 on a failure (the port is taken, or
// the reactor's mechanism cannot be embedded: MUXIO_SELECTOR=poll), 2 for a
// bad command line.

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "muxio/muxio.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

// A command line on stdin longer than this is dropped, not buffered forever.
constexpr std::size_t max_command = 1024;

struct EchoStats {
    std::size_t open = 0;
    std::size_t accepted = 0;
    std::uint64_t bytes = 0;
};

// ----- What runs in the reactor: an echo server on coroutines ---------------

muxio::Task<void> echo(muxio::TcpStream stream, EchoStats& stats) {
    ++stats.open;
    struct Closed {
        EchoStats& stats;
        ~Closed() { --stats.open; }
    } closed{stats};
    std::vector<std::byte> buffer(std::size_t{16} * 1024);
    try {
        for (;;) {
            const std::size_t got = co_await stream.read_some(buffer);
            if (got == 0) {
                co_return;  // the peer closed
            }
            co_await stream.write_all(std::span{buffer}.first(got));
            stats.bytes += got;
        }
    } catch (const std::system_error& error) {
        // A reset connection ends this one only.
        fmt::print(stderr, "example-poll-loop: {}\n", error.what());
    }
}

muxio::Task<void> serve(muxio::Reactor& reactor, muxio::TcpListener& listener, EchoStats& stats) {
    for (;;) {
        bool refused = false;
        try {
            muxio::TcpStream stream = co_await listener.accept();
            ++stats.accepted;
            muxio::spawn(reactor, echo(std::move(stream), stats));
        } catch (const std::system_error& error) {
            fmt::print(stderr, "example-poll-loop: {}\n", error.what());
            refused = true;
        }
        if (refused) {
            // Out of descriptors, say: the connection stays queued, so wait
            // a little instead of failing again at once.
            co_await muxio::sleep_for(reactor, 100ms);
        }
    }
}

// ----- What the host loop owns: stdin commands and its own deadline ---------

void print_status(const EchoStats& stats) {
    fmt::print("status: open={} accepted={} bytes={}\n", stats.open, stats.accepted, stats.bytes);
    std::fflush(stdout);
}

// What stdin sent that is not a complete line yet.
struct CommandInput {
    std::string pending;
    bool discarding = false;  // inside a line too long to keep, until its newline
};

// Reads what stdin has (poll said it is readable, so one read() does not
// block) and runs the complete lines. False once stdin is closed or failed.
bool read_commands(CommandInput& input, const EchoStats& stats, bool& quit) {
    std::array<char, 512> chunk{};
    const ssize_t got = ::read(STDIN_FILENO, chunk.data(), chunk.size());
    if (got < 0 && errno == EINTR) {
        return true;
    }
    if (got <= 0) {
        if (got < 0) {
            fmt::print(stderr, "example-poll-loop: read stdin: {}\n", std::system_category().message(errno));
        }
        return false;
    }
    std::string& pending = input.pending;
    pending.append(chunk.data(), static_cast<std::size_t>(got));
    std::size_t newline = 0;
    while ((newline = pending.find('\n')) != std::string::npos) {
        if (input.discarding) {
            input.discarding = false;
            pending.erase(0, newline + 1);
            continue;
        }
        std::string_view command{pending.data(), newline};
        if (!command.empty() && command.back() == '\r') {
            command.remove_suffix(1);
        }
        if (command == "status") {
            print_status(stats);
        } else if (command == "quit") {
            quit = true;
        } else if (!command.empty()) {
            fmt::print("unknown command: {} (try status or quit)\n", command);
            std::fflush(stdout);
        }
        pending.erase(0, newline + 1);
    }
    if (pending.size() > max_command) {
        if (!input.discarding) {
            fmt::print("unknown command: a line longer than {} bytes, dropped\n", max_command);
            std::fflush(stdout);
            input.discarding = true;
        }
        pending.clear();
    }
    return true;
}

// poll()'s timeout in milliseconds for the nearer of two deadlines, rounded
// up (waking just before a deadline would find nothing due, and spin); -1
// when there is none.
int poll_timeout(std::optional<Clock::duration> reactor_wait, std::optional<Clock::time_point> own_deadline) {
    std::optional<Clock::duration> wait = reactor_wait;
    if (own_deadline) {
        const Clock::duration own = std::max(*own_deadline - Clock::now(), Clock::duration::zero());
        wait = wait ? std::min(*wait, own) : own;
    }
    if (!wait) {
        return -1;
    }
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(*wait).count();
    return static_cast<int>(std::clamp<decltype(ms)>(ms, 0, INT_MAX));
}

int run(int argc, char** argv) {
    std::string bind_host = "127.0.0.1";
    std::uint16_t port = 7000;
    double status_every = 0;

    CLI::App app{
        "example-poll-loop: a poll(2) loop that hosts a muxio reactor serving TCP echo.\n"
        "Reads commands on stdin (status, quit); stops cleanly on SIGINT or SIGTERM.",
        "example-poll-loop"};
    app.add_option("--port", port, "TCP port; 0 lets the kernel pick one")->capture_default_str();
    app.add_option("--bind", bind_host, "IPv4 or IPv6 address to listen on")->capture_default_str();
    app.add_option("--status-every", status_every, "seconds between status lines; 0: only on the command")
        ->check(CLI::Range(0.0, 86400.0))
        ->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& error) {
        const int status = app.exit(error);
        return status == 0 ? exit_ok : exit_usage;
    }
    const std::optional<muxio::SocketAddress> address = muxio::SocketAddress::ip(bind_host, port);
    if (!address) {
        fmt::print(stderr, "example-poll-loop: --bind {}: not an IPv4 or IPv6 address\n", bind_host);
        return exit_usage;
    }
    const auto status_period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>{status_every});

    muxio::Reactor reactor;
    // Before anything else: a reactor on select or poll has no descriptor
    // to embed, and says so here (std::logic_error).
    const int reactor_fd = reactor.embed_fd();

    muxio::TcpListener listener = muxio::TcpListener::bind(reactor, *address);
    EchoStats stats;
    // The tasks refer to the listener and the counters: closing the reactor
    // destroys them, so it must happen before those go, on every way out.
    struct CloseReactorFirst {
        muxio::Reactor& reactor;
        ~CloseReactorFirst() { reactor.close(); }
    } close_reactor_first{reactor};
    muxio::spawn(reactor, serve(reactor, listener, stats));

    // The reactor catches the signals and runs these in an iteration; the
    // delivery makes embed_fd() readable, so poll() returns for it.
    int stop_signal = 0;
    for (const int signo : {SIGINT, SIGTERM}) {
        reactor.add_signal_handler(signo, [&stop_signal, signo] { stop_signal = signo; });
    }

    fmt::print("listening on {}\n", listener.local_address());
    std::fflush(stdout);

    std::array<pollfd, 2> watched{};
    watched[0] = {reactor_fd, POLLIN, 0};
    watched[1] = {STDIN_FILENO, POLLIN, 0};
    CommandInput commands;
    bool quit = false;
    std::optional<Clock::time_point> next_status;
    if (status_period > Clock::duration::zero()) {
        next_status = Clock::now() + status_period;
    }

    while (stop_signal == 0 && !quit) {
        // embed_fd() turns readable when a reactor timer comes due, so the
        // reactor's time_to_next_work() is not needed for its own sake with
        // the default clock; bounding the wait by it too keeps this loop
        // right for a reactor given an injected clock, and costs nothing.
        const int timeout = poll_timeout(reactor.time_to_next_work(), next_status);
        const int ready = ::poll(watched.data(), watched.size(), timeout);
        if (ready < 0 && errno != EINTR) {
            throw std::system_error(errno, std::system_category(), "poll");
        }
        if (ready > 0 && watched[0].revents != 0) {
            reactor.run_once(0s);
        } else if (reactor.time_to_next_work() == Clock::duration::zero()) {
            reactor.run_once(0s);
        }
        if (ready > 0 && watched[1].revents != 0 && !read_commands(commands, stats, quit)) {
            watched[1].fd = -1;  // poll() ignores a negative descriptor
            fmt::print("stdin closed: serving until SIGINT or SIGTERM\n");
            std::fflush(stdout);
        }
        const Clock::time_point now = Clock::now();
        if (next_status && now >= *next_status) {
            print_status(stats);
            // On the period's beat, but without a burst to catch up after a
            // stall (a stopped process, say).
            *next_status += status_period;
            if (*next_status <= now) {
                next_status = now + status_period;
            }
        }
    }

    const std::string why = quit ? std::string{"quit"} : fmt::format("signal {}", stop_signal);
    fmt::print("stopped by {}: {} connections, {} bytes echoed\n", why, stats.accepted, stats.bytes);
    return exit_ok;  // close_reactor_first ends the tasks, closing their sockets
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& error) {
        fmt::print(stderr, "example-poll-loop: {}\n", error.what());
        return exit_failed;
    }
}
