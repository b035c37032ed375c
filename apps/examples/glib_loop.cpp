// example-glib-loop: a muxio reactor embedded in a GLib main loop.
//
// GLib owns the loop (g_main_loop_run) and the signals (g_unix_signal_add);
// the reactor is one GSource in it. That source, ReactorSource below, is the
// part to copy: it watches the reactor's embed_fd() (g_source_add_unix_fd),
// takes its timeout from the reactor's time_to_next_work() in prepare(), and
// runs one reactor iteration, run_once(0), in dispatch(). Everything muxio
// does (sockets, coroutines, timers) then runs on GLib's thread, between
// GLib's own sources.
//
// What the reactor serves here: a TCP line service, one coroutine per
// connection, that answers each line with the line in upper case and closes
// a connection silent for --idle-timeout seconds (a reactor timer, through
// muxio::with_timeout) after saying "bye: idle". GLib, beside it, prints the
// counters every --status-every seconds (g_timeout_add).
//
//   example-glib-loop --port 7001
//   example-glib-loop --port 0 --idle-timeout 30 --status-every 10
//
// stdout: "listening on ADDRESS" first, "status: open=N accepted=N lines=N",
// and "stopped by signal S: ..." at the end. Exit status: 0 after SIGINT or
// SIGTERM, 1 on a failure (the port is taken, or the reactor's mechanism
// cannot be embedded: MUXIO_SELECTOR=poll), 2 for a bad command line.

#include <glib-unix.h>
#include <glib.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstddef>
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
#include <CLI/CLI.hpp>

#include "muxio/muxio.hpp"

namespace {

using namespace std::chrono_literals;

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

constexpr std::size_t max_line = 4096;

// ----- The reactor as a GSource ---------------------------------------------

// GLib allocates the source (g_source_new() with sizeof(ReactorSource)) and
// hands its callbacks the GSource* at its start, hence the layout: a
// standard-layout struct whose first member is the GSource.
struct ReactorSource {
    GSource base;
    muxio::Reactor* reactor;
    gpointer fd_tag;              // from g_source_add_unix_fd
    std::exception_ptr* failure;  // where dispatch() leaves what run_once() threw
    GMainLoop* loop;              // quit when that happens
};

ReactorSource& reactor_source(GSource* source) {
    return *reinterpret_cast<ReactorSource*>(source);
}

// Before GLib polls: how long the reactor may wait. Zero (and TRUE: ready
// now) when callbacks are queued or a timer is due. With the default
// steady_clock, embed_fd() turns readable by itself when a timer comes due;
// the timeout is what keeps a reactor on an injected clock on time.
gboolean prepare_reactor(GSource* source, gint* timeout) {
    const std::optional<muxio::Reactor::Duration> wait = reactor_source(source).reactor->time_to_next_work();
    if (!wait) {
        *timeout = -1;  // only I/O brings work, and embed_fd() shows it
        return FALSE;
    }
    // Rounded up: waking before the deadline would find nothing due, and spin.
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(*wait).count();
    *timeout = static_cast<gint>(std::clamp<decltype(ms)>(ms, 0, INT_MAX));
    return *timeout == 0 ? TRUE : FALSE;
}

// After GLib polled: is there work?
gboolean check_reactor(GSource* source) {
    ReactorSource& self = reactor_source(source);
    if ((g_source_query_unix_fd(source, self.fd_tag) & G_IO_IN) != 0) {
        return TRUE;
    }
    const std::optional<muxio::Reactor::Duration> wait = self.reactor->time_to_next_work();
    return wait && *wait <= muxio::Reactor::Duration::zero() ? TRUE : FALSE;
}

// One reactor iteration, which never waits. An exception must not unwind
// through GLib's C frames: it is kept, and the loop told to quit.
gboolean dispatch_reactor(GSource* source, GSourceFunc /*callback*/, gpointer /*user_data*/) {
    ReactorSource& self = reactor_source(source);
    try {
        self.reactor->run_once(0s);
    } catch (...) {
        *self.failure = std::current_exception();
        g_main_loop_quit(self.loop);
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

GSourceFuncs reactor_source_funcs = {prepare_reactor, check_reactor, dispatch_reactor, nullptr, nullptr, nullptr};

// Attaches `reactor` to `loop`'s context; returns the source (one reference,
// which the caller gives back with g_source_destroy() and g_source_unref()).
// std::logic_error if the reactor has no descriptor to embed (select, poll).
GSource* attach_reactor(muxio::Reactor& reactor, GMainLoop* loop, std::exception_ptr& failure) {
    const int fd = reactor.embed_fd();
    GSource* source = g_source_new(&reactor_source_funcs, sizeof(ReactorSource));
    ReactorSource& self = reactor_source(source);
    self.reactor = &reactor;
    self.failure = &failure;
    self.loop = loop;
    self.fd_tag = g_source_add_unix_fd(source, fd, G_IO_IN);
    g_source_set_name(source, "muxio reactor");
    g_source_attach(source, g_main_loop_get_context(loop));
    return source;
}

// ----- What runs in the reactor: an upper-case line service -----------------

struct ServiceStats {
    std::size_t open = 0;
    std::size_t accepted = 0;
    std::uint64_t lines = 0;
};

// One line, without its "\n" (or "\r\n"), from `stream`; bytes past the
// newline stay in `pending`. nullopt when the peer closed between lines;
// std::length_error past max_line.
muxio::Task<std::optional<std::string>> read_line(muxio::TcpStream& stream, std::string& pending) {
    std::vector<std::byte> chunk(1024);
    for (;;) {
        const std::size_t newline = pending.find('\n');
        if (newline != std::string::npos) {
            std::string line = pending.substr(0, newline);
            pending.erase(0, newline + 1);
            if (!line.empty() && line.back() == '\r') {
                line.pop_back();
            }
            co_return line;
        }
        if (pending.size() > max_line) {
            throw std::length_error(fmt::format("line longer than {} bytes", max_line));
        }
        const std::size_t got = co_await stream.read_some(chunk);
        if (got == 0) {
            co_return std::nullopt;
        }
        pending.append(reinterpret_cast<const char*>(chunk.data()), got);
    }
}

muxio::Task<void> serve_connection(muxio::Reactor& reactor, muxio::TcpStream stream,
                                   std::chrono::milliseconds idle_timeout, ServiceStats& stats) {
    ++stats.open;
    struct Closed {
        ServiceStats& stats;
        ~Closed() { --stats.open; }
    } closed{stats};
    std::string pending;
    std::string farewell;
    try {
        for (;;) {
            std::optional<std::string> line =
                co_await muxio::with_timeout(reactor, idle_timeout, read_line(stream, pending));
            if (!line) {
                co_return;  // the peer closed
            }
            ++stats.lines;
            std::string reply = std::move(*line);
            std::transform(reply.begin(), reply.end(), reply.begin(),
                           [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
            reply += '\n';
            co_await stream.write_all(reply);
        }
    } catch (const muxio::TimeoutError&) {
        farewell = fmt::format("bye: idle for {} ms\n", idle_timeout.count());
    } catch (const std::length_error& error) {
        farewell = fmt::format("error: {}\n", error.what());
    } catch (const std::system_error& error) {
        fmt::print(stderr, "example-glib-loop: {}\n", error.what());  // a reset ends this connection only
    }
    if (!farewell.empty()) {
        try {
            co_await muxio::with_timeout(reactor, 1s, stream.write_all(farewell));
        } catch (const std::exception&) {
            // The peer does not take it either: close all the same.
        }
    }
}

muxio::Task<void> serve(muxio::Reactor& reactor, muxio::TcpListener& listener, std::chrono::milliseconds idle_timeout,
                        ServiceStats& stats) {
    for (;;) {
        bool refused = false;
        try {
            muxio::TcpStream stream = co_await listener.accept();
            ++stats.accepted;
            muxio::spawn(reactor, serve_connection(reactor, std::move(stream), idle_timeout, stats));
        } catch (const std::system_error& error) {
            fmt::print(stderr, "example-glib-loop: {}\n", error.what());
            refused = true;
        }
        if (refused) {
            // Out of descriptors, say: the connection stays queued, so wait
            // a little instead of failing again at once.
            co_await muxio::sleep_for(reactor, 100ms);
        }
    }
}

// ----- GLib's own sources ---------------------------------------------------

void print_status(const ServiceStats& stats) {
    fmt::print("status: open={} accepted={} lines={}\n", stats.open, stats.accepted, stats.lines);
    std::fflush(stdout);
}

// What a GLib signal source gets: which signal it is for, and where to say
// that it came.
struct SignalWatch {
    GMainLoop* loop;
    int signo;
    int* stopped_by;
};

gboolean on_signal(gpointer data) {
    const SignalWatch& watch = *static_cast<SignalWatch*>(data);
    *watch.stopped_by = watch.signo;
    g_main_loop_quit(watch.loop);
    return G_SOURCE_CONTINUE;
}

gboolean on_status(gpointer data) {
    print_status(*static_cast<ServiceStats*>(data));
    return G_SOURCE_CONTINUE;
}

int run(int argc, char** argv) {
    std::string bind_host = "127.0.0.1";
    std::uint16_t port = 7001;
    double idle_seconds = 30;
    double status_every = 0;

    CLI::App app{
        "example-glib-loop: a GLib main loop hosting a muxio reactor that serves an upper-case line service.\n"
        "Stops cleanly on SIGINT or SIGTERM (caught by GLib).",
        "example-glib-loop"};
    app.add_option("--port", port, "TCP port; 0 lets the kernel pick one")->capture_default_str();
    app.add_option("--bind", bind_host, "IPv4 or IPv6 address to listen on")->capture_default_str();
    app.add_option("--idle-timeout", idle_seconds, "seconds of silence before a connection is closed")
        ->check(CLI::Range(0.001, 86400.0))
        ->capture_default_str();
    app.add_option("--status-every", status_every, "seconds between status lines (a GLib timeout); 0: never")
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
        fmt::print(stderr, "example-glib-loop: --bind {}: not an IPv4 or IPv6 address\n", bind_host);
        return exit_usage;
    }
    const std::chrono::milliseconds idle_timeout{static_cast<std::int64_t>(idle_seconds * 1000.0 + 0.5)};

    // The default GMainContext, as most GLib programs use.
    const std::unique_ptr<GMainLoop, void (*)(GMainLoop*)> loop{g_main_loop_new(nullptr, FALSE), &g_main_loop_unref};
    std::exception_ptr failure;
    muxio::Reactor reactor;
    muxio::TcpListener listener = muxio::TcpListener::bind(reactor, *address);
    ServiceStats stats;
    int stopped_by = 0;
    SignalWatch sigint_watch{loop.get(), SIGINT, &stopped_by};
    SignalWatch sigterm_watch{loop.get(), SIGTERM, &stopped_by};
    // On every way out: GLib's sources go, then the reactor closes, which
    // ends the tasks while the listener and the counters they refer to are
    // still there.
    struct Teardown {
        GSource* reactor_gsource;
        muxio::Reactor& reactor;
        std::vector<guint> glib_sources;
        ~Teardown() {
            for (const guint id : glib_sources) {
                g_source_remove(id);
            }
            g_source_destroy(reactor_gsource);
            g_source_unref(reactor_gsource);
            reactor.close();
        }
    } teardown{attach_reactor(reactor, loop.get(), failure), reactor, {}};

    muxio::spawn(reactor, serve(reactor, listener, idle_timeout, stats));

    // GLib catches the signals, and its timeout prints the status: the host
    // loop's own sources, beside the reactor's.
    teardown.glib_sources.push_back(g_unix_signal_add(SIGINT, on_signal, &sigint_watch));
    teardown.glib_sources.push_back(g_unix_signal_add(SIGTERM, on_signal, &sigterm_watch));
    if (status_every > 0) {
        const auto ms = static_cast<guint>(std::max(1.0, status_every * 1000.0));
        teardown.glib_sources.push_back(g_timeout_add(ms, on_status, &stats));
    }

    fmt::print("listening on {}\n", listener.local_address());
    std::fflush(stdout);
    g_main_loop_run(loop.get());

    if (failure) {
        std::rethrow_exception(failure);
    }
    fmt::print("stopped by signal {}: {} connections, {} lines\n", stopped_by, stats.accepted, stats.lines);
    return exit_ok;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& error) {
        fmt::print(stderr, "example-glib-loop: {}\n", error.what());
        return exit_failed;
    }
}
