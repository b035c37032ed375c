#include "support/support.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <doctest/doctest.h>

namespace muxio::test {

int count_open_fds() {
    DIR* dir = ::opendir("/proc/self/fd");
    REQUIRE(dir != nullptr);
    int count = 0;
    while (const dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] != '.') {
            ++count;
        }
    }
    ::closedir(dir);
    return count - 1;  // the directory stream's own descriptor
}

FdLeakCheck::FdLeakCheck() : before_{count_open_fds()} {}

FdLeakCheck::~FdLeakCheck() {
    CHECK_MESSAGE(count_open_fds() == before_, "descriptors leaked");
}

void UniqueFd::reset(int fd) noexcept {
    if (fd_ >= 0) {
        ::close(fd_);
    }
    fd_ = fd;
}

SocketPair::SocketPair() {
    std::array<int, 2> fds{-1, -1};
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds.data()) == 0);
    left.reset(fds[0]);
    right.reset(fds[1]);
}

Pipe::Pipe() {
    std::array<int, 2> fds{-1, -1};
    REQUIRE(::pipe2(fds.data(), O_NONBLOCK | O_CLOEXEC) == 0);
    read_end.reset(fds[0]);
    write_end.reset(fds[1]);
}

void write_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        const ssize_t written = ::write(fd, bytes.data(), bytes.size());
        REQUIRE_MESSAGE(written > 0, "write failed: ", std::strerror(errno));
        bytes.remove_prefix(static_cast<std::size_t>(written));
    }
}

std::size_t drain(int fd) {
    std::array<char, 4096> buffer{};
    std::size_t total = 0;
    for (;;) {
        const ssize_t got = ::read(fd, buffer.data(), buffer.size());
        if (got <= 0) {
            return total;
        }
        total += static_cast<std::size_t>(got);
    }
}

void fill_until_blocked(int fd) {
    std::array<char, 65536> buffer{};
    for (int round = 0; round < 10'000; ++round) {
        const ssize_t written = ::write(fd, buffer.data(), buffer.size());
        if (written < 0) {
            REQUIRE((errno == EAGAIN || errno == EWOULDBLOCK));
            return;
        }
    }
    FAIL("the send buffer never filled");
}

long raise_fd_limit(long wanted) {
    rlimit limit{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &limit) == 0);
    const auto target = static_cast<rlim_t>(wanted);
    if (limit.rlim_cur < target) {
        limit.rlim_cur = std::min(target, limit.rlim_max);
        ::setrlimit(RLIMIT_NOFILE, &limit);
        REQUIRE(::getrlimit(RLIMIT_NOFILE, &limit) == 0);
    }
    return static_cast<long>(limit.rlim_cur);
}

NoFreeDescriptors::NoFreeDescriptors() {
    rlimit limit{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &limit) == 0);
    saved_soft_limit_ = limit.rlim_cur;
    const int lowest_free = ::fcntl(0, F_DUPFD_CLOEXEC, 0);
    REQUIRE(lowest_free >= 0);
    ::close(lowest_free);
    limit.rlim_cur = static_cast<rlim_t>(lowest_free);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &limit) == 0);
}

NoFreeDescriptors::~NoFreeDescriptors() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        limit.rlim_cur = static_cast<rlim_t>(saved_soft_limit_);
        ::setrlimit(RLIMIT_NOFILE, &limit);
    }
}

UniqueFd dup_at_or_above(int fd, int lowest) {
    const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, lowest);
    REQUIRE_MESSAGE(copy >= lowest, "fcntl(F_DUPFD_CLOEXEC, ", lowest, ") failed: ", std::strerror(errno));
    return UniqueFd{copy};
}

bool is_open_fd(int fd) {
    return ::fcntl(fd, F_GETFD) != -1;
}

ScopedEnv::ScopedEnv(std::string name, const std::optional<std::string>& value) : name_{std::move(name)} {
    if (const char* old = std::getenv(name_.c_str())) {
        saved_ = old;
    }
    if (value) {
        REQUIRE(::setenv(name_.c_str(), value->c_str(), 1) == 0);
    } else {
        REQUIRE(::unsetenv(name_.c_str()) == 0);
    }
}

ScopedEnv::~ScopedEnv() {
    if (saved_) {
        ::setenv(name_.c_str(), saved_->c_str(), 1);
    } else {
        ::unsetenv(name_.c_str());
    }
}

OccupyDescriptorsBelow::OccupyDescriptorsBelow(int limit, int headroom) {
    REQUIRE_MESSAGE(raise_fd_limit(static_cast<long>(limit) + headroom) >= static_cast<long>(limit) + headroom,
                    "RLIMIT_NOFILE's hard limit is below ", limit + headroom);
    const int source = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    REQUIRE_MESSAGE(source >= 0, "open /dev/null: ", std::strerror(errno));
    taken_.push_back(source);
    // The lowest free number each time, until it is `limit` or above.
    for (;;) {
        const int copy = ::fcntl(source, F_DUPFD_CLOEXEC, 0);
        if (copy < 0) {
            const int error = errno;
            for (const int fd : taken_) {
                ::close(fd);
            }
            taken_.clear();
            FAIL("fcntl(F_DUPFD_CLOEXEC): ", std::strerror(error));
        }
        if (copy >= limit) {
            ::close(copy);
            break;
        }
        taken_.push_back(copy);
    }
    if (source >= limit) {
        ::close(source);
        taken_.clear();
    }
}

OccupyDescriptorsBelow::~OccupyDescriptorsBelow() {
    for (const int fd : taken_) {
        ::close(fd);
    }
}

}  // namespace muxio::test
