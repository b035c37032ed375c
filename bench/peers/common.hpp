// What every peer program shares: the echo and HTTP protocol steps (so the
// servers differ only in their loops), the workloads of the loop and
// coroutine benchmarks, clocks, pinning and sockets. Each library's program is
// one .cpp that fills in `bench::library`; main.cpp parses the options and
// runs the mode asked for.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace bench {

[[noreturn]] inline void fail_errno(std::string_view what) {
    throw std::system_error(errno, std::system_category(), std::string{what});
}

inline std::int64_t clock_ns(clockid_t clock) {
    timespec now{};
    if (::clock_gettime(clock, &now) == -1) {
        fail_errno("clock_gettime");
    }
    return std::int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}
inline std::int64_t wall_ns() {
    return clock_ns(CLOCK_MONOTONIC);
}
/// CPU time of the whole process, every thread: the cross-thread benchmarks
/// charge the producer too.
inline std::int64_t process_cpu_ns() {
    return clock_ns(CLOCK_PROCESS_CPUTIME_ID);
}

/// Pins the calling thread to one core; a negative core leaves it alone.
inline void pin_this_thread(int core) {
    if (core < 0) {
        return;
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(static_cast<std::size_t>(core), &set);
    if (const int error = ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set); error != 0) {
        throw std::system_error(error, std::system_category(), "pthread_setaffinity_np");
    }
}

// ----- Sockets --------------------------------------------------------------

inline constexpr std::size_t buffer_size = 64 * 1024;  // every read, as muxio-http's
inline constexpr int backlog = 4096;                   // the kernel caps it at somaxconn

inline void set_nodelay(int fd) {
    const int one = 1;
    if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == -1) {
        fail_errno("setsockopt(TCP_NODELAY)");
    }
}

/// A non-blocking socket listening on 127.0.0.1:port, for the servers whose
/// library does not accept connections itself.
inline int make_listener(std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail_errno("socket");
    }
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == -1) {
        fail_errno("bind");
    }
    if (::listen(fd, backlog) == -1) {
        fail_errno("listen");
    }
    return fd;
}

/// A connected non-blocking AF_UNIX stream pair, closed on destruction. The
/// loop benchmarks watch first() for reading in every library, so each loop
/// polls I/O as a loop with any connection does (asio, for one, creates its
/// epoll reactor only once something needs it).
class SocketPair {
public:
    SocketPair() {
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds_.data()) == -1) {
            fail_errno("socketpair");
        }
    }
    ~SocketPair() {
        ::close(fds_[0]);
        ::close(fds_[1]);
    }
    SocketPair(const SocketPair&) = delete;
    SocketPair& operator=(const SocketPair&) = delete;
    [[nodiscard]] int first() const { return fds_[0]; }
    [[nodiscard]] int second() const { return fds_[1]; }

private:
    std::array<int, 2> fds_{-1, -1};
};

/// One byte each way for the ping-pong benchmark: plain system calls in every
/// library, a short count is a failed run.
inline void write_byte(int fd, char byte) {
    if (::write(fd, &byte, 1) != 1) {
        fail_errno("write");
    }
}
inline char read_byte(int fd) {
    char byte = 0;
    if (::read(fd, &byte, 1) != 1) {
        fail_errno("read");
    }
    return byte;
}

// ----- The protocols --------------------------------------------------------
// echo: whatever was read is written back. http: every request (everything up
// to a blank line; no method, header or body is looked at, the least work a
// server can do, which favours the peers over muxio-http's full parser) is
// answered with the bytes muxio-http sends for a keep-alive `GET /`.

enum class Mode { echo, http };

/// The response, with the current second's Date header; header set and order
/// as apps/http/handler.cpp's.
class Response {
public:
    std::string_view get() {
        if (const std::time_t now = std::time(nullptr); now != built_for_) {
            std::tm utc{};
            ::gmtime_r(&now, &utc);
            std::array<char, 64> date{};  // the C locale's day and month names are HTTP's
            (void)std::strftime(date.data(), date.size(), "%a, %d %b %Y %H:%M:%S GMT", &utc);
            text_ = std::string{"HTTP/1.1 200 OK\r\nServer: muxio-http\r\nDate: "} + date.data() +
                    "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 13\r\n\r\nHello, World!";
            built_for_ = now;
        }
        return text_;
    }

private:
    std::string text_;
    std::time_t built_for_ = -1;
};

inline Response response;  // one thread per server

/// What to write back for `input`: echo, the input itself; http, a response
/// per complete request of `carry` + `input`, built in `out` (the incomplete
/// tail stays in `carry`). nullopt: close the connection (over 64 KiB of
/// unframed input).
inline std::optional<std::string_view> respond(Mode mode, std::string& carry, std::string_view input,
                                               std::string& out) {
    if (mode == Mode::echo) {
        return input;
    }
    std::size_t count = 0;
    const auto scan = [&count](std::string_view bytes) {
        std::size_t position = 0;
        for (std::size_t end = 0; (end = bytes.find("\r\n\r\n", position)) != std::string_view::npos;) {
            ++count;
            position = end + 4;
        }
        return position;
    };
    if (carry.empty()) {
        carry.assign(input.substr(scan(input)));  // whole requests in one read: no copy
    } else {
        carry.append(input);
        carry.erase(0, scan(carry));
    }
    if (carry.size() > buffer_size) {
        return std::nullopt;
    }
    out.clear();
    for (std::size_t i = 0; i < count; ++i) {
        out += response.get();
    }
    return out;
}

// The per-connection steps of the servers that drive raw descriptors (epoll,
// muxio, libevent): read once, write the answer once, keep what the socket
// did not take and stop reading until it is out.

struct Connection {
    int fd = -1;
    std::string carry;    // an incomplete request
    std::string pending;  // what the socket did not take yet
    std::size_t written = 0;
};

enum class Next { nothing, watch_writable, watch_readable, close };

/// Shared by every connection of one server (one thread).
struct Scratch {
    std::array<char, buffer_size> input{};
    std::string output;
};
inline Scratch scratch;

inline Next on_readable(Connection& connection, Mode mode) {
    const ssize_t got = ::read(connection.fd, scratch.input.data(), scratch.input.size());
    if (got <= 0) {
        return got == 0 || (errno != EAGAIN && errno != EINTR) ? Next::close : Next::nothing;
    }
    const auto answer =
        respond(mode, connection.carry, {scratch.input.data(), static_cast<std::size_t>(got)}, scratch.output);
    if (!answer || answer->empty()) {
        return answer ? Next::nothing : Next::close;
    }
    const ssize_t sent = ::send(connection.fd, answer->data(), answer->size(), MSG_NOSIGNAL);
    if (sent == static_cast<ssize_t>(answer->size())) {
        return Next::nothing;
    }
    if (sent < 0 && errno != EAGAIN) {
        return Next::close;
    }
    connection.pending.assign(answer->substr(static_cast<std::size_t>(std::max<ssize_t>(sent, 0))));
    connection.written = 0;
    return Next::watch_writable;
}

inline Next on_writable(Connection& connection) {
    const std::size_t left = connection.pending.size() - connection.written;
    const ssize_t sent = ::send(connection.fd, connection.pending.data() + connection.written, left, MSG_NOSIGNAL);
    if (sent < 0) {
        return errno != EAGAIN ? Next::close : Next::nothing;
    }
    connection.written += static_cast<std::size_t>(sent);
    if (connection.written < connection.pending.size()) {
        return Next::nothing;
    }
    connection.pending.clear();
    return Next::watch_readable;
}

// ----- The loop and coroutine benchmarks --------------------------------------

/// A timed run: wall time, the process's CPU time over it, and how many
/// callbacks ran (checked against the workload).
struct Measurement {
    std::int64_t wall_ns = 0;
    std::int64_t cpu_ns = 0;
    std::size_t callbacks = 0;
};

/// Starts the clocks; stop() makes the Measurement.
struct Timing {
    std::int64_t wall = wall_ns();
    std::int64_t cpu = process_cpu_ns();
    [[nodiscard]] Measurement stop(std::size_t callbacks) const {
        return {wall_ns() - wall, process_cpu_ns() - cpu, callbacks};
    }
};

/// Schedule one-shot timers with these delays (whole milliseconds, libuv's
/// unit), cancel those of `cancel_order` in that order, then run until every
/// other one has fired. The same sequence for every library.
struct TimerWorkload {
    std::vector<std::uint32_t> delays_ms;
    std::vector<std::uint32_t> cancel_order;
    [[nodiscard]] std::size_t expected_fires() const { return delays_ms.size() - cancel_order.size(); }
};

inline TimerWorkload make_timer_workload(std::size_t count, std::uint32_t max_delay_ms, std::uint64_t seed) {
    TimerWorkload workload;
    std::mt19937_64 random{seed};
    std::uniform_int_distribution<std::uint32_t> delay{1, max_delay_ms};
    workload.delays_ms.resize(count);
    for (auto& ms : workload.delays_ms) {
        ms = delay(random);
    }
    std::vector<std::uint32_t> indices(count);
    for (std::size_t i = 0; i < count; ++i) {
        indices[i] = static_cast<std::uint32_t>(i);
    }
    std::shuffle(indices.begin(), indices.end(), random);
    indices.resize(count / 2);
    workload.cancel_order = std::move(indices);
    return workload;
}

/// One thread: `chains` callbacks each schedule the next until `total` ran.
struct SoonWorkload {
    std::size_t total = 0;
    std::size_t chains = 0;
};

/// The call_soon benchmark as every library with a call_soon runs it:
/// `chains` chains of callbacks, each scheduling the next, `total` in all.
/// `schedule(f)` is the library's call_soon, `stop()` ends its loop, `run()`
/// runs the loop until then.
template <class Schedule, class Stop, class Run>
Measurement soon_chains(const SoonWorkload& workload, Schedule schedule, Stop stop, Run run) {
    struct State {
        Schedule* schedule;
        Stop* stop;
        std::size_t total;
        std::size_t scheduled = 0;
        std::size_t ran = 0;
        void step() {
            ++ran;
            if (scheduled < total) {
                ++scheduled;
                (*schedule)([this] { step(); });
            } else if (ran == total) {
                (*stop)();
            }
        }
    } state{&schedule, &stop, workload.total};
    const Timing timing;
    for (std::size_t i = 0; i < workload.chains; ++i) {
        ++state.scheduled;
        schedule([s = &state] { s->step(); });
    }
    run();
    return timing.stop(state.ran);
}

/// Another thread on `producer_core` schedules into the loop on `loop_core`:
/// `count` callbacks as fast as it can (throughput), or one at a time with
/// `gap_ns` of quiet after each has run, so the loop sleeps again (latency).
struct CrossThreadWorkload {
    std::size_t count = 0;
    std::int64_t gap_ns = 0;
    int producer_core = -1;
};

/// The cross-thread benchmarks, written once for every library. `Loop` has
/// post(f), the library's call_soon_threadsafe, callable from any thread;
/// run(), until stop() is called from inside the loop. Each makes a loop
/// of its own.
template <class Loop>
Measurement threadsafe_throughput(const CrossThreadWorkload& workload) {
    Loop loop;
    struct State {
        Loop* loop;
        std::size_t total;
        std::size_t ran = 0;
        std::int64_t last_ns = 0;
        void step() {
            if (++ran == total) {
                last_ns = wall_ns();
                loop->stop();
            }
        }
    } state{&loop, workload.count};
    std::atomic<bool> running{false};
    Timing timing;
    std::thread producer{[&] {
        pin_this_thread(workload.producer_core);
        while (!running.load(std::memory_order_acquire)) {
        }
        timing = Timing{};
        for (std::size_t i = 0; i < workload.count; ++i) {
            loop.post([s = &state] { s->step(); });
        }
    }};
    loop.post([&running] { running.store(true, std::memory_order_release); });
    loop.run();
    Measurement measured = timing.stop(state.ran);
    measured.wall_ns = state.last_ns - timing.wall;
    producer.join();
    return measured;
}

/// Latencies in nanoseconds from the call to the callback, one per sample.
template <class Loop>
std::vector<std::int64_t> threadsafe_latency(const CrossThreadWorkload& workload) {
    Loop loop;
    struct State {
        std::vector<std::int64_t> latencies;
        std::atomic<bool> done{false};
    } state;
    state.latencies.reserve(workload.count);
    std::atomic<bool> running{false};
    std::thread producer{[&] {
        pin_this_thread(workload.producer_core);
        while (!running.load(std::memory_order_acquire)) {
        }
        for (std::size_t i = 0; i < workload.count; ++i) {
            state.done.store(false, std::memory_order_relaxed);
            loop.post([s = &state, sent = wall_ns()] {
                s->latencies.push_back(wall_ns() - sent);
                s->done.store(true, std::memory_order_release);
            });
            while (!state.done.load(std::memory_order_acquire)) {
            }
            for (const std::int64_t until = wall_ns() + workload.gap_ns; wall_ns() < until;) {
            }
        }
        loop.post([l = &loop] { l->stop(); });
    }};
    loop.post([&running] { running.store(true, std::memory_order_release); });
    loop.run();
    producer.join();
    return std::move(state.latencies);
}

// ----- What a program offers ------------------------------------------------------

struct Options {
    std::string mode;     // echo, http, timers, soon, threadsafe, latency, readable, spawn
    std::string variant;  // the library's other way of writing the same thing, if it has one
    std::uint16_t port = 0;
    std::size_t count = 0;  // 0: the mode's default
    std::size_t chains = 1000;
    std::uint32_t max_delay_ms = 100;
    std::int64_t gap_us = 20;
    std::size_t reps = 3;
    int loop_core = -1;
    int producer_core = -1;
    std::uint64_t seed = 42;
};

/// One library's side of every benchmark; a null entry is a mode it does not
/// take part in. `serve` runs the echo or HTTP server until the process is
/// killed; `readable` is the one-byte ping-pong over a socket pair (count
/// round trips), `spawn` starts count trivial tasks and runs them all.
struct Library {
    const char* name;
    const char* variants;  // comma-separated, "" for none
    void (*serve)(Mode mode, const Options& options) = nullptr;
    Measurement (*timers)(const TimerWorkload&) = nullptr;
    Measurement (*soon)(const SoonWorkload&) = nullptr;
    Measurement (*threadsafe)(const CrossThreadWorkload&) = nullptr;
    std::vector<std::int64_t> (*latency)(const CrossThreadWorkload&) = nullptr;
    Measurement (*readable)(std::size_t round_trips, const Options& options) = nullptr;
    Measurement (*spawn)(std::size_t tasks) = nullptr;
};

extern const Library library;

}  // namespace bench
