// Helpers for the socket suites: byte spans of text, a patterned payload,
// IPv6 loopback detection, a temporary directory, scoped RLIMIT_NOFILE and
// SIGPIPE settings.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/net.hpp"

namespace muxio::net_test {

inline std::span<const std::byte> bytes(std::string_view text) noexcept {
    return std::as_bytes(std::span{text.data(), text.size()});
}

inline std::span<std::byte> writable_bytes(std::string& text) noexcept {
    return std::as_writable_bytes(std::span{text.data(), text.size()});
}

/// `size` bytes of a pattern that depends on `seed` and each byte's
/// position, so a lost, duplicated or reordered chunk shows.
inline std::vector<std::byte> pattern(std::size_t size, std::uint32_t seed) {
    std::vector<std::byte> data(size);
    std::uint32_t state = seed * 2654435761U + 1U;
    for (std::byte& b : data) {
        state = state * 1103515245U + 12345U;
        b = static_cast<std::byte>(state >> 24U);
    }
    return data;
}

/// True if a socket can be bound to [::1] (IPv6 loopback configured).
inline bool ipv6_loopback_available() {
    static const bool available = [] {
        const int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            return false;
        }
        sockaddr_in6 address{};
        address.sin6_family = AF_INET6;
        address.sin6_addr = in6addr_loopback;
        const bool bound = ::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0;
        ::close(fd);
        return bound;
    }();
    return available;
}

/// The loopback address of `family` with port 0.
inline SocketAddress loopback(int family) {
    return family == AF_INET6 ? SocketAddress::ipv6("::1", 0) : SocketAddress::ipv4("127.0.0.1", 0);
}

/// The lowest descriptor number free now: the one the next socket gets.
inline int lowest_free_fd() {
    const int fd = ::fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    ::close(fd);
    return fd;
}

/// A fresh directory under the system's temporary directory, removed with
/// what it holds when this goes out of scope.
class TempDir {
public:
    TempDir() {
        std::string templ = (std::filesystem::temp_directory_path() / "muxio-net-XXXXXX").string();
        REQUIRE(::mkdtemp(templ.data()) != nullptr);
        path_ = templ;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

private:
    std::filesystem::path path_;
};

/// Sets RLIMIT_NOFILE's soft limit for its lifetime.
class ScopedFdLimit {
public:
    explicit ScopedFdLimit(rlim_t soft) {
        REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved_) == 0);
        rlimit lowered = saved_;
        lowered.rlim_cur = soft;
        REQUIRE(::setrlimit(RLIMIT_NOFILE, &lowered) == 0);
    }
    ~ScopedFdLimit() { ::setrlimit(RLIMIT_NOFILE, &saved_); }
    ScopedFdLimit(const ScopedFdLimit&) = delete;
    ScopedFdLimit& operator=(const ScopedFdLimit&) = delete;

private:
    rlimit saved_{};
};

/// SIGPIPE at its default disposition (kill the process) for its lifetime,
/// so a test proves writes never raise it rather than relying on a runner
/// that ignores it.
class DefaultSigpipe {
public:
    DefaultSigpipe() {
        struct sigaction deflt {};
        deflt.sa_handler = SIG_DFL;
        REQUIRE(::sigaction(SIGPIPE, &deflt, &saved_) == 0);
    }
    ~DefaultSigpipe() { ::sigaction(SIGPIPE, &saved_, nullptr); }
    DefaultSigpipe(const DefaultSigpipe&) = delete;
    DefaultSigpipe& operator=(const DefaultSigpipe&) = delete;

private:
    struct sigaction saved_ {};
};

}  // namespace muxio::net_test
