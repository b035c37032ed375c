// bench-echo-client: the one load generator every echo server is measured
// with. A level-triggered epoll loop on one thread drives N connections, each
// playing ping-pong: send a SIZE-byte message, wait until all of it came back
// (checking the bytes), send the next. Nothing in it depends on the server.
//
//   bench-echo-client --port P --connections N [--size 64] [--warmup 0.5]
//                       [--duration 3] [--server-pid PID] [--idle 0]
//
// After the warm-up it measures for DURATION seconds: messages completed,
// their round-trip latency (steady_clock, from the write of a message to the
// read that completes its echo), and, with --server-pid, the server's CPU time
// over exactly that window: /proc/PID/schedstat (nanoseconds on CPU, user +
// system, every thread) and /proc/PID/stat utime + stime (clock ticks, as a
// cross-check). Prints one line of key=value pairs; the last ones are the
// idle count and, with --server-pid, the server's VmHWM and VmRSS (KiB, from
// /proc/PID/status) read when the window closes.
//
// --idle M first opens M more connections that never send anything and stay
// open until the end: the server holds them registered while the N active
// ones play ping-pong (the soft RLIMIT_NOFILE is raised for them as needed).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "peers/common.hpp"

namespace {

using bench::fail_errno;

struct Options {
    std::uint16_t port = 0;
    std::size_t connections = 1;
    std::size_t size = 64;
    double warmup_s = 0.5;
    double duration_s = 3.0;
    long server_pid = 0;
    std::size_t idle = 0;
};

struct Connection {
    int fd = -1;
    std::size_t received = 0;  // bytes of the current message's echo so far
    std::int64_t sent_at = 0;
};

// A process's CPU time: schedstat's nanoseconds on CPU and stat's user +
// system ticks converted to nanoseconds. Either is nullopt if unreadable.
struct CpuSample {
    std::optional<std::int64_t> schedstat_ns;
    std::optional<std::int64_t> ticks_ns;
};

CpuSample read_cpu(long pid) {
    CpuSample sample;
    if (pid <= 0) {
        return sample;
    }
    const std::string dir = "/proc/" + std::to_string(pid);
    if (std::ifstream schedstat{dir + "/schedstat"}) {
        std::int64_t on_cpu = 0;
        if (schedstat >> on_cpu) {
            sample.schedstat_ns = on_cpu;
        }
    }
    if (std::ifstream stat{dir + "/stat"}) {
        std::string line;
        std::getline(stat, line);
        // The command name is in parentheses and may hold spaces: fields are
        // counted from the last ')'. utime and stime are fields 14 and 15.
        const auto close = line.rfind(')');
        if (close != std::string::npos) {
            std::istringstream fields{line.substr(close + 2)};
            std::string field;
            std::int64_t utime = 0;
            std::int64_t stime = 0;
            for (int index = 3; index <= 15 && fields >> field; ++index) {
                if (index == 14) {
                    utime = std::stoll(field);
                } else if (index == 15) {
                    stime = std::stoll(field);
                }
            }
            const long hz = ::sysconf(_SC_CLK_TCK);
            sample.ticks_ns = (utime + stime) * (1'000'000'000 / hz);
        }
    }
    return sample;
}

// A "VmHWM:" / "VmRSS:" figure of /proc/PID/status in KiB, as text ("nan"
// when unreadable).
std::string read_status_kb(long pid, std::string_view field) {
    if (pid <= 0) {
        return "nan";
    }
    std::ifstream status{"/proc/" + std::to_string(pid) + "/status"};
    std::string line;
    while (std::getline(status, line)) {
        if (line.starts_with(field)) {
            std::istringstream value{line.substr(field.size())};
            long long kb = 0;
            if (value >> kb) {
                return std::to_string(kb);
            }
        }
    }
    return "nan";
}

std::int64_t self_cpu_ns() {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    const auto ns = [](const timeval& tv) { return std::int64_t{tv.tv_sec} * 1'000'000'000 + tv.tv_usec * 1000; };
    return ns(usage.ru_utime) + ns(usage.ru_stime);
}

int connect_to(std::uint16_t port) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    // The server may still be starting: retry a refused connection for 5 s.
    for (int attempt = 0;; ++attempt) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            fail_errno("socket");
        }
        if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0) {
            bench::set_nodelay(fd);
            const int one = 1;
            if (::ioctl(fd, FIONBIO, &one) == -1) {
                fail_errno("ioctl(FIONBIO)");
            }
            return fd;
        }
        const int error = errno;
        ::close(fd);
        if (error != ECONNREFUSED || attempt >= 500) {
            errno = error;
            fail_errno("connect");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds{10});
    }
}

std::int64_t percentile(std::vector<std::int64_t>& values, double fraction) {
    if (values.empty()) {
        return 0;
    }
    const auto rank = static_cast<std::size_t>(fraction * static_cast<double>(values.size() - 1) + 0.5);
    std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(rank), values.end());
    return values[rank];
}

void raise_fd_limit(std::size_t needed) {
    rlimit limit{};
    ::getrlimit(RLIMIT_NOFILE, &limit);
    if (limit.rlim_cur < needed && needed <= limit.rlim_max) {
        limit.rlim_cur = needed;
        ::setrlimit(RLIMIT_NOFILE, &limit);
    }
}

int run(const Options& options) {
    raise_fd_limit(options.connections + options.idle + 64);
    std::vector<int> idle_fds;
    idle_fds.reserve(options.idle);
    for (std::size_t i = 0; i < options.idle; ++i) {
        idle_fds.push_back(connect_to(options.port));
    }
    std::vector<char> message(options.size);
    for (std::size_t i = 0; i < message.size(); ++i) {
        message[i] = static_cast<char>('a' + i % 26);
    }

    const int epfd = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        fail_errno("epoll_create1");
    }
    std::vector<Connection> connections(options.connections);
    for (std::size_t i = 0; i < connections.size(); ++i) {
        connections[i].fd = connect_to(options.port);
        epoll_event event{};
        event.events = EPOLLIN;
        event.data.u64 = i;
        if (::epoll_ctl(epfd, EPOLL_CTL_ADD, connections[i].fd, &event) == -1) {
            fail_errno("epoll_ctl");
        }
    }

    // A SIZE-byte write to a socket with nothing in flight always fits its
    // send buffer: a short write would be a broken setup, not a slow server.
    const auto send_message = [&](Connection& connection, std::int64_t now) {
        connection.sent_at = now;
        connection.received = 0;
        const ssize_t sent = ::write(connection.fd, message.data(), message.size());
        if (sent != static_cast<ssize_t>(message.size())) {
            fail_errno("write (short or failed)");
        }
    };

    const std::int64_t start = bench::wall_ns();
    const auto to_ns = [](double seconds) { return static_cast<std::int64_t>(seconds * 1e9); };
    const std::int64_t window_opens = start + to_ns(options.warmup_s);
    const std::int64_t window_closes = window_opens + to_ns(options.duration_s);
    for (auto& connection : connections) {
        send_message(connection, start);
    }

    std::vector<std::int64_t> latencies;
    latencies.reserve(1U << 20U);
    std::vector<char> buffer(bench::buffer_size);
    std::array<epoll_event, 1024> events{};
    bool measuring = false;
    std::int64_t opened_at = 0;
    std::int64_t closed_at = 0;
    std::uint64_t messages = 0;
    CpuSample server_before;
    std::int64_t client_before = 0;

    for (;;) {
        const int count = ::epoll_wait(epfd, events.data(), static_cast<int>(events.size()), 100);
        if (count < 0) {
            if (errno == EINTR) {
                continue;
            }
            fail_errno("epoll_wait");
        }
        std::int64_t now = bench::wall_ns();
        if (!measuring && now >= window_opens) {
            measuring = true;
            server_before = read_cpu(options.server_pid);
            client_before = self_cpu_ns();
            opened_at = bench::wall_ns();
            now = opened_at;
        }
        if (measuring && now >= window_closes) {
            closed_at = now;
            break;
        }
        for (int i = 0; i < count; ++i) {
            Connection& connection = connections[events[static_cast<std::size_t>(i)].data.u64];
            const ssize_t got = ::read(connection.fd, buffer.data(), buffer.size());
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) {
                    continue;
                }
                std::fprintf(stderr, "bench-echo-client: the server closed a connection or failed: %s\n",
                             got == 0 ? "end of file" : std::strerror(errno));
                return 1;
            }
            const auto length = static_cast<std::size_t>(got);
            if (connection.received + length > message.size() ||
                std::memcmp(buffer.data(), message.data() + connection.received, length) != 0) {
                std::fputs("bench-echo-client: the echo differs from the message sent\n", stderr);
                return 1;
            }
            connection.received += length;
            if (connection.received == message.size()) {
                const std::int64_t done = bench::wall_ns();
                if (measuring) {
                    latencies.push_back(done - connection.sent_at);
                    ++messages;
                }
                send_message(connection, done);
            }
        }
    }
    const CpuSample server_after = read_cpu(options.server_pid);
    const std::string server_hwm_kb = read_status_kb(options.server_pid, "VmHWM:");
    const std::string server_rss_kb = read_status_kb(options.server_pid, "VmRSS:");
    const std::int64_t client_cpu = self_cpu_ns() - client_before;
    for (const auto& connection : connections) {
        ::close(connection.fd);
    }
    for (const int fd : idle_fds) {
        ::close(fd);
    }
    ::close(epfd);

    const double seconds = static_cast<double>(closed_at - opened_at) / 1e9;
    const auto per_message = [&](std::optional<std::int64_t> before, std::optional<std::int64_t> after) {
        if (!before || !after || messages == 0) {
            return std::string{"nan"};
        }
        return std::to_string(static_cast<double>(*after - *before) / static_cast<double>(messages));
    };
    const std::int64_t p50 = percentile(latencies, 0.50);
    const std::int64_t p99 = percentile(latencies, 0.99);
    std::printf(
        "connections=%zu messages=%llu seconds=%.6f msgs_per_s=%.1f p50_us=%.3f p99_us=%.3f "
        "server_cpu_ns_per_msg=%s server_ticks_ns_per_msg=%s client_cpu_ns_per_msg=%.1f idle=%zu "
        "server_vmhwm_kb=%s server_vmrss_kb=%s\n",
        options.connections, static_cast<unsigned long long>(messages), seconds,
        static_cast<double>(messages) / seconds, static_cast<double>(p50) / 1e3, static_cast<double>(p99) / 1e3,
        per_message(server_before.schedstat_ns, server_after.schedstat_ns).c_str(),
        per_message(server_before.ticks_ns, server_after.ticks_ns).c_str(),
        messages == 0 ? 0.0 : static_cast<double>(client_cpu) / static_cast<double>(messages), options.idle,
        server_hwm_kb.c_str(), server_rss_kb.c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    Options options;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string_view option{argv[i]};
        const std::string value{argv[i + 1]};
        if (option == "--port") {
            options.port = static_cast<std::uint16_t>(std::stoul(value));
        } else if (option == "--connections") {
            options.connections = std::stoul(value);
        } else if (option == "--size") {
            options.size = std::stoul(value);
        } else if (option == "--warmup") {
            options.warmup_s = std::stod(value);
        } else if (option == "--duration") {
            options.duration_s = std::stod(value);
        } else if (option == "--server-pid") {
            options.server_pid = std::stol(value);
        } else if (option == "--idle") {
            options.idle = std::stoul(value);
        } else {
            std::fprintf(stderr, "bench-echo-client: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (options.port == 0 || options.connections == 0 || options.size == 0) {
        std::fputs(
            "usage: bench-echo-client --port P --connections N [--size 64] [--warmup 0.5] "
            "[--duration 3] [--server-pid PID] [--idle 0]\n",
            stderr);
        return 2;
    }
    try {
        return run(options);
    } catch (const std::exception& error) {
        std::fprintf(stderr, "bench-echo-client: %s\n", error.what());
        return 1;
    }
}
