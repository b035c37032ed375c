#include "support/syscall_counter.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace muxio::test {

namespace {

// The start of the kernel's struct ptrace_syscall_info (linux/ptrace.h,
// which cannot be included next to glibc's sys/ptrace.h): what kind of stop
// this is, and for an entry the call's number. Its layout is the kernel's ABI.
struct SyscallInfoHead {
    std::uint8_t op;
    std::uint8_t pad[3];
    std::uint32_t arch;
    std::uint64_t instruction_pointer;
    std::uint64_t stack_pointer;
    std::uint64_t number;  // entry.nr when op is entry_op
    std::uint64_t args[6];
};
constexpr std::uint8_t entry_op = 1;          // PTRACE_SYSCALL_INFO_ENTRY
constexpr int syscall_stop = SIGTRAP | 0x80;  // with PTRACE_O_TRACESYSGOOD

struct NamedCall {
    long number;
    const char* name;
};

#define MUXIO_CALL(name) NamedCall{SYS_##name, #name},
constexpr NamedCall known_calls[] = {
    // clang-format off
    MUXIO_CALL(read) MUXIO_CALL(write) MUXIO_CALL(readv) MUXIO_CALL(writev)
    MUXIO_CALL(recvfrom) MUXIO_CALL(sendto) MUXIO_CALL(recvmsg) MUXIO_CALL(sendmsg)
    MUXIO_CALL(epoll_ctl) MUXIO_CALL(epoll_pwait) MUXIO_CALL(epoll_pwait2)
    MUXIO_CALL(accept4) MUXIO_CALL(close) MUXIO_CALL(shutdown) MUXIO_CALL(getsockopt) MUXIO_CALL(setsockopt)
    MUXIO_CALL(getsockname) MUXIO_CALL(getpeername) MUXIO_CALL(fcntl) MUXIO_CALL(ioctl)
    MUXIO_CALL(futex) MUXIO_CALL(mmap) MUXIO_CALL(munmap) MUXIO_CALL(mprotect) MUXIO_CALL(madvise)
    MUXIO_CALL(brk) MUXIO_CALL(ppoll) MUXIO_CALL(pselect6) MUXIO_CALL(clock_gettime) MUXIO_CALL(clock_nanosleep)
    MUXIO_CALL(nanosleep) MUXIO_CALL(sched_yield) MUXIO_CALL(rt_sigprocmask) MUXIO_CALL(rt_sigaction)
    MUXIO_CALL(timerfd_settime) MUXIO_CALL(eventfd2) MUXIO_CALL(io_uring_enter) MUXIO_CALL(splice)
    MUXIO_CALL(sendfile) MUXIO_CALL(getpid) MUXIO_CALL(gettid) MUXIO_CALL(openat)
#if defined(SYS_epoll_wait)
    MUXIO_CALL(epoll_wait)
#endif
#if defined(SYS_poll)
    MUXIO_CALL(poll)
#endif
#if defined(SYS_select)
    MUXIO_CALL(select)
#endif
    // clang-format on
};
#undef MUXIO_CALL

// Closes a descriptor on scope exit.
struct OwnedFd {
    int fd = -1;
    explicit OwnedFd(int owned) noexcept : fd{owned} {}
    OwnedFd(const OwnedFd&) = delete;
    OwnedFd& operator=(const OwnedFd&) = delete;
    ~OwnedFd() { reset(); }
    void reset() noexcept {
        if (fd >= 0) {
            ::close(fd);
            fd = -1;
        }
    }
};

void write_line(int fd, std::string_view line) noexcept {
    std::string text{line};
    text += '\n';
    std::size_t done = 0;
    while (done < text.size()) {
        const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;
        }
        done += static_cast<std::size_t>(n);
    }
}

// In the child: asks to be traced, stops until the tracer is set up, serves.
[[noreturn]] void run_traced_child(int tell_fd, const std::function<void(const TellClient&)>& serve) {
    if (::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) {
        write_line(tell_fd, fmt::format("error the kernel refused PTRACE_TRACEME: {}", std::strerror(errno)));
        ::_exit(3);
    }
    ::raise(SIGSTOP);
    int status = 0;
    try {
        serve([tell_fd](std::string_view line) { write_line(tell_fd, fmt::format("ready {}", line)); });
        write_line(tell_fd, "error the server returned");
    } catch (const std::exception& error) {
        write_line(tell_fd, fmt::format("error the server threw: {}", error.what()));
        status = 3;
    } catch (...) {
        write_line(tell_fd, "error the server threw");
        status = 3;
    }
    ::_exit(status);  // no atexit handlers (LeakSanitizer's would ptrace), no doctest report
}

// In the client thread: the child's first line, "ready ..." or "error ...".
std::string read_told_line(int fd, std::chrono::steady_clock::time_point deadline) {
    std::string line;
    while (line.find('\n') == std::string::npos) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            return "error the server did not say it was ready in time";
        }
        pollfd entry{fd, POLLIN, 0};
        const int ready = ::poll(&entry, 1, static_cast<int>(left.count()));
        if (ready < 0 && errno == EINTR) {
            continue;
        }
        if (ready <= 0) {
            continue;  // the deadline check above ends it
        }
        std::array<char, 256> buffer{};
        const ssize_t got = ::read(fd, buffer.data(), buffer.size());
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            return "error the server exited before it was ready";
        }
        line.append(buffer.data(), static_cast<std::size_t>(got));
    }
    line.resize(line.find('\n'));
    return line;
}

}  // namespace

std::string syscall_name(std::uint64_t number) {
    for (const NamedCall& call : known_calls) {
        if (static_cast<std::uint64_t>(call.number) == number) {
            return call.name;
        }
    }
    return fmt::format("syscall {}", number);
}

std::string SyscallTally::describe() const {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> calls(by_number.begin(), by_number.end());
    std::stable_sort(calls.begin(), calls.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    std::string text;
    for (const auto& [number, count] : calls) {
        if (!text.empty()) {
            text += ", ";
        }
        text += fmt::format("{} {}", syscall_name(number), count);
    }
    return text.empty() ? "none" : text;
}

std::optional<SyscallTally> count_server_syscalls(
    const std::function<void(const TellClient& tell)>& serve,
    const std::function<std::string(std::string_view told, CountingWindow& window)>& drive,
    std::chrono::milliseconds deadline, std::string& failure) {
    failure.clear();
    const auto give_up_at = std::chrono::steady_clock::now() + deadline;
    std::array<int, 2> fds{-1, -1};
    if (::pipe2(fds.data(), O_CLOEXEC) != 0) {
        failure = fmt::format("pipe2: {}", std::strerror(errno));
        return std::nullopt;
    }
    OwnedFd told_read{fds[0]};
    OwnedFd told_write{fds[1]};

    // Whatever stdio holds would be written twice if the child flushed it
    // too (the sanitizers' exit paths do).
    std::fflush(nullptr);
    const pid_t child = ::fork();
    if (child < 0) {
        failure = fmt::format("fork: {}", std::strerror(errno));
        return std::nullopt;
    }
    if (child == 0) {
        told_read.reset();
        run_traced_child(told_write.fd, serve);
    }
    told_write.reset();

    // The child stops itself once traced; from there on every thread it
    // starts is traced too, and it dies with this process.
    int status = 0;
    if (::waitpid(child, &status, 0) != child || !WIFSTOPPED(status)) {
        // It could not be traced: it said why on the pipe and exited.
        failure = read_told_line(told_read.fd, give_up_at);
        if (WIFSTOPPED(status)) {
            ::kill(child, SIGKILL);
        }
        ::waitpid(child, &status, 0);
        return std::nullopt;
    }
    constexpr long options = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE | PTRACE_O_EXITKILL;
    if (::ptrace(PTRACE_SETOPTIONS, child, nullptr, reinterpret_cast<void*>(options)) != 0 ||
        ::ptrace(PTRACE_SYSCALL, child, nullptr, nullptr) != 0) {
        failure = fmt::format("ptrace could not set up the child: {}", std::strerror(errno));
        ::kill(child, SIGKILL);
        ::waitpid(child, &status, 0);
        return std::nullopt;
    }

    CountingWindow window;
    std::mutex mutex;
    std::condition_variable finished_changed;
    bool finished = false;
    bool timed_out = false;
    bool reaped = false;  // the child's pid may be reused from then on
    std::string client_failure;
    const auto kill_child = [&] {  // with `mutex` held
        if (!reaped) {
            ::kill(child, SIGKILL);
        }
    };

    // The client: when it is done, whichever way, the child is killed, which
    // ends the tracing loop below.
    std::thread client{[&] {
        std::string outcome;
        const std::string told = read_told_line(told_read.fd, give_up_at);
        if (told.rfind("ready ", 0) == 0) {
            try {
                outcome = drive(std::string_view{told}.substr(6), window);
            } catch (const std::exception& error) {
                outcome = fmt::format("the client threw: {}", error.what());
            }
        } else {
            outcome = told.rfind("error ", 0) == 0 ? told.substr(6) : told;
        }
        window.close();
        {
            std::lock_guard lock{mutex};
            client_failure = std::move(outcome);
            finished = true;
            kill_child();
        }
        finished_changed.notify_all();
    }};
    // The deadline: a client stuck on a server that does not answer is
    // freed by killing the server (its sockets then fail).
    std::thread watchdog{[&] {
        std::unique_lock lock{mutex};
        if (!finished_changed.wait_until(lock, give_up_at, [&] { return finished; })) {
            timed_out = true;
            kill_child();
        }
    }};

    SyscallTally tally;
    bool tracing_failed = false;
    bool info_refused = false;
    for (;;) {
        // Only the child and its threads: the test process has no other child now.
        const pid_t thread = ::waitpid(-1, &status, __WALL);
        if (thread < 0) {
            if (errno == EINTR) {
                continue;
            }
            tracing_failed = true;  // ECHILD: nothing left to wait for
            break;
        }
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            if (thread == child) {
                std::lock_guard lock{mutex};
                reaped = true;
                break;  // the leader is reported last, after its threads
            }
            continue;
        }
        if (!WIFSTOPPED(status)) {
            continue;
        }
        const int signal = WSTOPSIG(status);
        int deliver = 0;
        if (signal == syscall_stop) {
            if (window.is_open()) {
                SyscallInfoHead info{};
                const long size =
                    ::ptrace(PTRACE_GET_SYSCALL_INFO, thread, reinterpret_cast<void*>(sizeof info), &info);
                if (size <= 0) {
                    info_refused = true;  // a kernel before 5.3: no count rather than a count of 0
                } else if (info.op == entry_op) {
                    ++tally.total;
                    ++tally.by_number[info.number];
                }
            }
        } else if (signal != SIGTRAP && signal != SIGSTOP) {
            deliver = signal;  // a real signal for the server: pass it on
        }
        // SIGTRAP with an event (a new thread) and a new thread's first
        // SIGSTOP are the tracer's business: swallowed. ESRCH (the thread
        // died meanwhile) is fine.
        ::ptrace(PTRACE_SYSCALL, thread, nullptr, reinterpret_cast<void*>(static_cast<long>(deliver)));
    }

    client.join();
    {
        std::lock_guard lock{mutex};
        finished = true;
    }
    finished_changed.notify_all();
    watchdog.join();

    if (timed_out) {
        failure = fmt::format("the run took longer than {} ms (the server was killed){}", deadline.count(),
                              client_failure.empty() ? "" : ": " + client_failure);
        return std::nullopt;
    }
    if (!client_failure.empty()) {
        failure = client_failure;
        return std::nullopt;
    }
    if (info_refused) {
        failure = "the kernel refused PTRACE_GET_SYSCALL_INFO (it needs Linux 5.3)";
        return std::nullopt;
    }
    if (tracing_failed) {
        failure = "the traced server vanished from waitpid";
        return std::nullopt;
    }
    return tally;
}

}  // namespace muxio::test
