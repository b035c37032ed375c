#include "support/seccomp.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#if MUXIO_TEST_HAS_SECCOMP
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#endif

#include <array>
#include <cerrno>
#include <cstddef>
#include <exception>
#include <vector>

#include <doctest/doctest.h>

#include "support/support.hpp"

namespace muxio::test {

#if MUXIO_TEST_HAS_SECCOMP

namespace {

#if defined(__x86_64__)
constexpr std::uint32_t audit_arch = AUDIT_ARCH_X86_64;
#else
constexpr std::uint32_t audit_arch = AUDIT_ARCH_AARCH64;
#endif

// The BPF macros of <linux/filter.h> are C casts; these are the same
// instructions without them.
constexpr sock_filter bpf_statement(std::uint16_t code, std::uint32_t k) {
    return sock_filter{code, 0, 0, k};
}
constexpr sock_filter bpf_jump(std::uint16_t test, std::uint32_t k, std::uint8_t if_true, std::uint8_t if_false) {
    return sock_filter{static_cast<std::uint16_t>(BPF_JMP | test | BPF_K), if_true, if_false, k};
}

// The offset of the low 32 bits of system call argument `index`.
std::uint32_t argument_low_word(unsigned index) {
    auto offset = static_cast<std::uint32_t>(offsetof(seccomp_data, args) + index * sizeof(std::uint64_t));
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    offset += sizeof(std::uint32_t);
#endif
    return offset;
}

}  // namespace

bool refuse_syscalls_in_this_process(std::span<const SyscallRefusal> refusals, int errnum) {
    const std::uint32_t allow = SECCOMP_RET_ALLOW;
    const std::uint32_t refuse = SECCOMP_RET_ERRNO | (static_cast<std::uint32_t>(errnum) & SECCOMP_RET_DATA);
    std::vector<sock_filter> program;
    // A foreign architecture's numbering means nothing here: allow.
    program.push_back(bpf_statement(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
    program.push_back(bpf_jump(BPF_JEQ, audit_arch, 1, 0));
    program.push_back(bpf_statement(BPF_RET | BPF_K, allow));
    // One block per refusal, each starting with the number loaded:
    //   number != refusal's: on to the next block
    //   [load the argument; has one of unless_flags: allow]
    //   refuse
    for (const SyscallRefusal& refusal : refusals) {
        program.push_back(bpf_statement(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
        const bool conditional = refusal.unless_flags != 0;
        const std::uint8_t block_rest = conditional ? 4 : 1;
        program.push_back(bpf_jump(BPF_JEQ, refusal.number, 0, block_rest));
        if (conditional) {
            program.push_back(bpf_statement(BPF_LD | BPF_W | BPF_ABS, argument_low_word(refusal.argument)));
            program.push_back(bpf_jump(BPF_JSET, refusal.unless_flags, 0, 1));
            program.push_back(bpf_statement(BPF_RET | BPF_K, allow));
        }
        program.push_back(bpf_statement(BPF_RET | BPF_K, refuse));
    }
    program.push_back(bpf_statement(BPF_RET | BPF_K, allow));

    const sock_fprog filter{static_cast<unsigned short>(program.size()), program.data()};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        return false;
    }
    return ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &filter) == 0;
}

#else

bool refuse_syscalls_in_this_process(std::span<const SyscallRefusal> /*refusals*/, int /*errnum*/) {
    return false;
}

#endif

bool refuse_syscalls_in_this_process(std::span<const std::uint32_t> numbers, int errnum) {
    std::vector<SyscallRefusal> refusals;
    for (const std::uint32_t number : numbers) {
        refusals.push_back(SyscallRefusal{.number = number});
    }
    return refuse_syscalls_in_this_process(std::span<const SyscallRefusal>{refusals}, errnum);
}

std::optional<std::string> report_from_child(const std::function<std::string()>& report,
                                             std::chrono::milliseconds deadline) {
    using namespace std::chrono_literals;
    std::array<int, 2> fds{-1, -1};
    REQUIRE(::pipe2(fds.data(), O_CLOEXEC) == 0);
    UniqueFd read_end{fds[0]};
    UniqueFd write_end{fds[1]};
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        int status = 3;
        std::string line;
        try {
            line = report();
            status = 0;
        } catch (const std::exception& error) {
            line = std::string{"threw: "} + error.what();
        } catch (...) {
            line = "threw";
        }
        if (::write(write_end.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
            status = 2;
        }
        ::_exit(status);  // no atexit handlers, no doctest report from the child
    }
    write_end.reset();

    std::string line;
    const auto start = std::chrono::steady_clock::now();
    bool finished = false;
    while (!finished) {
        const auto left =
            deadline - std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
        if (left <= 0ms) {
            break;
        }
        pollfd entry{read_end.get(), POLLIN, 0};
        const int ready = ::poll(&entry, 1, static_cast<int>(left.count()));
        if (ready < 0 && errno == EINTR) {
            continue;
        }
        REQUIRE(ready >= 0);
        if (ready == 0) {
            break;
        }
        std::array<char, 512> buffer{};
        const ssize_t got = ::read(read_end.get(), buffer.data(), buffer.size());
        if (got <= 0) {
            finished = true;  // end of file: the child exited
        } else {
            line.append(buffer.data(), static_cast<std::size_t>(got));
        }
    }
    if (!finished) {
        ::kill(child, SIGKILL);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);  // returns at once: exited or killed
    if (!finished) {
        return std::nullopt;
    }
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    return line;
}

}  // namespace muxio::test
