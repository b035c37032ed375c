// What the reactor benchmarks share: the workloads (generated once, identical
// for every library), clocks, thread pinning, the listening socket, and the
// declarations of each library's implementation (one .cpp per library).
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace bench {

[[noreturn]] inline void fail_errno(std::string_view what) {
    throw std::system_error(errno, std::system_category(), std::string{what});
}

// ----- Clocks -------------------------------------------------------------------

inline std::int64_t clock_ns(clockid_t clock) {
    timespec now{};
    if (::clock_gettime(clock, &now) == -1) {
        fail_errno("clock_gettime");
    }
    return std::int64_t{now.tv_sec} * 1'000'000'000 + now.tv_nsec;
}
/// Wall time (CLOCK_MONOTONIC, the clock steady_clock reads).
inline std::int64_t wall_ns() {
    return clock_ns(CLOCK_MONOTONIC);
}
/// CPU time of the whole process, user + system, every thread.
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

// ----- Sockets ------------------------------------------------------------------------

/// Size of the read buffer every echo server uses.
inline constexpr std::size_t echo_buffer_size = 64 * 1024;
/// Listen backlog of every echo server (the kernel caps it at somaxconn).
inline constexpr int echo_backlog = 4096;

/// One connection of the echo servers that share their echo steps (raw epoll
/// and muxio): written once, so those two differ only in their loops.
struct EchoConnection {
    int fd;
    std::vector<char> pending;  // what the socket did not take yet
    std::size_t written = 0;
};

/// What the loop must do after an echo step.
enum class EchoNext { nothing, watch_writable, watch_readable, close };

/// Reads what is there and writes it back; keeps what the socket did not take.
inline EchoNext echo_on_readable(EchoConnection& connection, char* buffer, std::size_t size) {
    const ssize_t got = ::read(connection.fd, buffer, size);
    if (got <= 0) {
        return got == 0 || (errno != EAGAIN && errno != EINTR) ? EchoNext::close : EchoNext::nothing;
    }
    const ssize_t sent = ::write(connection.fd, buffer, static_cast<std::size_t>(got));
    if (sent == got) {
        return EchoNext::nothing;
    }
    if (sent < 0 && errno != EAGAIN) {
        return EchoNext::close;
    }
    const auto taken = static_cast<std::size_t>(std::max<ssize_t>(sent, 0));
    connection.pending.assign(buffer + taken, buffer + got);
    connection.written = 0;
    return EchoNext::watch_writable;
}

/// Writes more of what is pending; back to reading once it is all out.
inline EchoNext echo_on_writable(EchoConnection& connection) {
    const std::size_t left = connection.pending.size() - connection.written;
    const ssize_t sent = ::write(connection.fd, connection.pending.data() + connection.written, left);
    if (sent < 0) {
        return errno != EAGAIN ? EchoNext::close : EchoNext::nothing;
    }
    connection.written += static_cast<std::size_t>(sent);
    if (connection.written == connection.pending.size()) {
        connection.pending.clear();
        return EchoNext::watch_readable;
    }
    return EchoNext::nothing;
}

inline void set_nodelay(int fd) {
    const int one = 1;
    if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == -1) {
        fail_errno("setsockopt(TCP_NODELAY)");
    }
}

/// A non-blocking socket listening on 127.0.0.1:port (SO_REUSEADDR), for the
/// servers whose library does not accept connections itself.
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
    if (::listen(fd, echo_backlog) == -1) {
        fail_errno("listen");
    }
    return fd;
}

/// A connected, non-blocking AF_UNIX stream socket pair, closed on destruction.
class SocketPair {
public:
    SocketPair() {
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds_) == -1) {
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
    int fds_[2] = {-1, -1};
};

/// A socket pair that nobody writes to. The call_soon, threadsafe, latency
/// and spawn benchmarks watch `idle()` for reading in every library, so each
/// loop polls I/O as a loop with any connection does (asio, for one, creates
/// its epoll reactor only once something needs it).
class IdlePair : SocketPair {
public:
    [[nodiscard]] int idle() const { return first(); }
};

/// One byte each way for the ping-pong benchmarks (plain system calls, the
/// same for every library): a short count or an error is a failed run.
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

/// Median of a run's repetitions.
inline double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const std::size_t n = values.size();
    return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// ----- Echo servers ------------------------------------------------------------------------
// Each accepts on 127.0.0.1:port, sets TCP_NODELAY on every connection, reads
// up to 64 KiB when readable and writes back what it read; what the socket
// does not take at once is kept and written when it becomes writable, and the
// connection is not read meanwhile. They run until the process is killed.

struct EchoConfig {
    std::uint16_t port = 0;
};

[[noreturn]] void echo_epoll(const EchoConfig& config);
[[noreturn]] void echo_muxio(const EchoConfig& config);
[[noreturn]] void echo_libuv(const EchoConfig& config);
[[noreturn]] void echo_libevent(const EchoConfig& config);
[[noreturn]] void echo_asio(const EchoConfig& config);
// The coroutine servers: one task per connection, the accept loop a task
// too. muxio-coro is apps/echo's coroutine mode: TcpStream::read_some() into
// the buffer all connections share (as the callback servers do), try_write(),
// and write_all() of a copy of what the socket did not take.
// muxio-coro-perconn reads into a 64 KiB buffer per connection and
// write_all()s from it, as asio-coro does; asio-coro is the textbook
// asio::awaitable session (co_await async_read_some, then async_write).
[[noreturn]] void echo_muxio_coro(const EchoConfig& config);
[[noreturn]] void echo_muxio_coro_perconn(const EchoConfig& config);
[[noreturn]] void echo_asio_coro(const EchoConfig& config);
// Diagnostic: muxio::readable()/writable() on the raw fd, a reader added and
// removed per await, making the same read/write calls as echo_muxio.
[[noreturn]] void echo_muxio_coro_raw(const EchoConfig& config);

// ----- Timers ---------------------------------------------------------------------------------
// Schedule `delays_ms.size()` one-shot timers with these delays (whole
// milliseconds: libuv's unit), cancel those listed in `cancel_order` in that
// order, then run the loop until every other one has fired.

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

/// What a timed run measured: its wall time and the process's CPU time over
/// it, and how many callbacks ran (checked against the workload).
struct Measurement {
    std::int64_t wall_ns = 0;
    std::int64_t cpu_ns = 0;
    std::size_t callbacks = 0;
};

Measurement timers_muxio(const TimerWorkload& workload);
Measurement timers_libuv(const TimerWorkload& workload);
Measurement timers_libevent(const TimerWorkload& workload);
Measurement timers_asio(const TimerWorkload& workload);

// ----- call_soon and call_soon_threadsafe ------------------------------------------------------

/// Same thread: `chains` callbacks are scheduled, and each one, when it runs,
/// schedules a new one until `total` have run; the last one stops the loop.
struct SoonWorkload {
    std::size_t total = 0;
    std::size_t chains = 0;
};

Measurement soon_muxio(const SoonWorkload& workload);
Measurement soon_libuv(const SoonWorkload& workload);
Measurement soon_libevent(const SoonWorkload& workload);
Measurement soon_asio(const SoonWorkload& workload);

/// Cross thread: a producer thread pinned to `producer_core` schedules
/// `total` callbacks as fast as it can into a loop running on `loop_core`.
/// Wall time is from the producer's first call to the last callback's end.
struct ThreadsafeWorkload {
    std::size_t total = 0;
    int loop_core = -1;
    int producer_core = -1;
};

Measurement threadsafe_muxio(const ThreadsafeWorkload& workload);
Measurement threadsafe_libuv(const ThreadsafeWorkload& workload);
Measurement threadsafe_libevent(const ThreadsafeWorkload& workload);
Measurement threadsafe_asio(const ThreadsafeWorkload& workload);

/// Cross-thread latency: the producer schedules one callback carrying the
/// time of the call, waits until it has run, then waits `gap_ns` more so the
/// loop is asleep again, `samples` times. The callback records now - then.
struct LatencyWorkload {
    std::size_t samples = 0;
    std::int64_t gap_ns = 0;
    int loop_core = -1;
    int producer_core = -1;
};

/// Latencies in nanoseconds, one per sample.
std::vector<std::int64_t> latency_muxio(const LatencyWorkload& workload);
std::vector<std::int64_t> latency_libuv(const LatencyWorkload& workload);
std::vector<std::int64_t> latency_libevent(const LatencyWorkload& workload);
std::vector<std::int64_t> latency_asio(const LatencyWorkload& workload);

// ----- Coroutines (reactor_coro_bench) -------------------------------------------------------

/// Ping-pong of one byte over an AF_UNIX socket pair, one thread: the pinger
/// writes a byte to its end and waits until its end is readable, reads the
/// echo; the ponger waits until its end is readable, reads, writes the byte
/// back. `round_trips` times. The writes and reads are plain system calls
/// (write_byte, read_byte) in every variant; what differs is how each side
/// waits: a coroutine awaiting readability (muxio::readable, asio's
/// async_read_some with use_awaitable) or a callback.
struct PingPongWorkload {
    std::size_t round_trips = 0;
};

Measurement pingpong_muxio_coro(const PingPongWorkload& workload);
Measurement pingpong_muxio_coro_raw(const PingPongWorkload& workload);
Measurement pingpong_muxio(const PingPongWorkload& workload);
Measurement pingpong_asio_coro(const PingPongWorkload& workload);
Measurement pingpong_asio(const PingPongWorkload& workload);

/// Spawn `tasks` trivial tasks (each increments a counter and returns) on a
/// loop that is not running, then run it until they have all completed.
/// muxio::spawn against asio::co_spawn(..., asio::detached).
struct SpawnWorkload {
    std::size_t tasks = 0;
};

Measurement spawn_muxio_coro(const SpawnWorkload& workload);
Measurement spawn_asio_coro(const SpawnWorkload& workload);

// ----- Helpers for the cross-thread benchmarks ----------------------------------------------------

/// Busy-waits (the producer side only) until `deadline_ns` on the wall clock.
inline void spin_until(std::int64_t deadline_ns) {
    while (wall_ns() < deadline_ns) {
    }
}

/// The latency benchmark's shared state: the loop records, the producer waits.
struct LatencyState {
    std::vector<std::int64_t> latencies;
    std::atomic<bool> done{false};

    /// In the loop: the callback scheduled at `sent` runs now.
    void record(std::int64_t sent) {
        latencies.push_back(wall_ns() - sent);
        done.store(true, std::memory_order_release);
    }
    /// In the producer: until the last callback has run.
    void wait() const {
        while (!done.load(std::memory_order_acquire)) {
        }
    }
};

}  // namespace bench
