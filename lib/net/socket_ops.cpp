#include "net/socket_ops.hpp"

#include <fcntl.h>
#include <sys/socket.h>

#include <algorithm>

#include <fmt/format.h>

#include "muxio/error.hpp"

namespace muxio::detail {

[[nodiscard]] std::string_view family_name(int family) noexcept {
    switch (family) {
        case AF_INET:
            return "AF_INET";
        case AF_INET6:
            return "AF_INET6";
        case AF_UNIX:
            return "AF_UNIX";
        default:
            return "AF_UNSPEC";
    }
}

std::string socket_call(int family, int type) {
    return fmt::format("socket({}, {})", family_name(family), type == SOCK_DGRAM ? "SOCK_DGRAM" : "SOCK_STREAM");
}

[[nodiscard]] int open_socket(int family, int type) {
    std::error_code error;
    const int fd = open_socket(family, type, error);
    if (fd < 0) {
        throw_system_error(error.value(), socket_call(family, type));
    }
    return fd;
}

[[nodiscard]] int open_socket(int family, int type, std::error_code& error) noexcept {
    const int fd = ::socket(family, type | socket_flags, 0);
    if (fd < 0) {
        error = errno_code(errno);
    } else {
        error.clear();
    }
    return fd;
}

bool set_option(int fd, int level, int name, int value, std::error_code& error) noexcept {
    if (::setsockopt(fd, level, name, &value, sizeof value) != 0) {
        error = errno_code(errno);
        return false;
    }
    error.clear();
    return true;
}

void set_option(int fd, int level, int name, int value, std::string_view option) {
    if (::setsockopt(fd, level, name, &value, sizeof value) != 0) {
        throw_system_error(errno, fmt::format("setsockopt({})", option), fd);
    }
}

[[nodiscard]] int get_option(int fd, int level, int name, std::string_view option) {
    int value = 0;
    socklen_t size = sizeof value;
    if (::getsockopt(fd, level, name, &value, &size) != 0) {
        throw_system_error(errno, fmt::format("getsockopt({})", option), fd);
    }
    return value;
}

void require_ip(const SocketAddress& address, std::string_view operation) {
    if (!address.is_ipv4() && !address.is_ipv6()) {
        throw std::invalid_argument(fmt::format("{}: {} is not an IPv4 or IPv6 address", operation, address));
    }
}

void require_unix(const SocketAddress& address, std::string_view operation) {
    if (!address.is_unix()) {
        throw std::invalid_argument(fmt::format("{}: {} is not a Unix-domain address", operation, address));
    }
}

[[nodiscard]] SocketAddress peer_of(int fd) noexcept {
    SocketAddress peer;
    socklen_t size = SocketAddress::capacity();
    if (::getpeername(fd, peer.data(), &size) != 0) {
        return {};
    }
    peer.resize(std::min(size, SocketAddress::capacity()));
    return peer;
}

SocketAddress prepare_adopted(int fd, std::initializer_list<int> families, std::string_view what) {
    if (fd < 0) {
        throw std::invalid_argument(fmt::format("{}::adopt: invalid file descriptor {}", what, fd));
    }
    int type = 0;
    int domain = 0;
    socklen_t size = sizeof type;
    if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) != 0) {
        const int errnum = errno;
        if (errnum == ENOTSOCK) {
            throw std::invalid_argument(fmt::format("{}::adopt: fd {} is not a socket", what, fd));
        }
        throw_system_error(errnum, fmt::format("{}::adopt: getsockopt(SO_TYPE)", what), fd);
    }
    size = sizeof domain;
    if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &size) != 0) {
        throw_system_error(errno, fmt::format("{}::adopt: getsockopt(SO_DOMAIN)", what), fd);
    }
    if (type != SOCK_STREAM || std::find(families.begin(), families.end(), domain) == families.end()) {
        throw std::invalid_argument(
            fmt::format("{}::adopt: fd {} is a {} socket of type {}, not the stream socket expected", what, fd,
                        family_name(domain), type));
    }
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0) {
        throw_system_error(errno, fmt::format("{}::adopt: fcntl(F_GETFL)", what), fd);
    }
    if ((static_cast<unsigned>(flags) & O_NONBLOCK) == 0U && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        throw_system_error(errno, fmt::format("{}::adopt: fcntl(F_SETFL, O_NONBLOCK)", what), fd);
    }
    return peer_of(fd);
}

bool start_connect(int fd, const SocketAddress& address) {
    std::error_code error;
    const bool in_progress = start_connect(fd, address, error);
    if (error) {
        throw_system_error(error.value(), fmt::format("connect {}", address));
    }
    return in_progress;
}

void finish_connect(int fd, const SocketAddress& address) {
    std::error_code error;
    finish_connect(fd, error);
    if (error) {
        throw_system_error(error.value(), fmt::format("connect {}", address));
    }
}

bool start_connect(int fd, const SocketAddress& address, std::error_code& error) noexcept {
    error.clear();
    if (::connect(fd, address.data(), address.size()) == 0) {
        return false;
    }
    const int errnum = errno;
    // EINTR: the handshake goes on in the background, as with EINPROGRESS
    // (POSIX); retrying connect() would fail with EALREADY.
    if (errnum == EINPROGRESS || errnum == EINTR) {
        return true;
    }
    error = errno_code(errnum);
    return false;
}

void finish_connect(int fd, std::error_code& error) noexcept {
    int errnum = 0;
    socklen_t size = sizeof errnum;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &errnum, &size) != 0) {
        errnum = errno;
    }
    if (errnum != 0) {
        error = errno_code(errnum);
    } else {
        error.clear();
    }
}

bool is_connection_error(int errnum) noexcept {
    switch (errnum) {
        case ECONNABORTED:
        case EPROTO:
        case ENETDOWN:
        case ENOPROTOOPT:
        case EHOSTDOWN:
        case ENONET:
        case EHOSTUNREACH:
        case ENETUNREACH:
            return true;
        default:
            return false;
    }
}

int accept_one(int listener, SocketAddress& peer, std::error_code& error) noexcept {
    // Errors that concern one queued connection, not the listener: the next
    // one may be fine (accept(2), "Error handling"). Bounded, in case a
    // listener reports one of them for good.
    constexpr int max_skipped = 64;
    for (int skipped = 0;; ++skipped) {
        socklen_t size = SocketAddress::capacity();
        const int fd = ::accept4(listener, peer.data(), &size, socket_flags);
        if (fd >= 0) {
            peer.resize(std::min(size, SocketAddress::capacity()));
            error.clear();
            return fd;
        }
        const int errnum = errno;
        if ((errnum == EINTR || is_connection_error(errnum)) && skipped < max_skipped) {
            continue;
        }
        // EMFILE and ENFILE land here: the connection stays queued, so
        // retrying now would spin; the caller decides.
        if (would_block(errnum)) {
            error.clear();
        } else {
            error = errno_code(errnum);
        }
        return -1;
    }
}

}  // namespace muxio::detail
