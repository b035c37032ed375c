// The TCP and Unix-domain listeners of include/muxio/net.hpp.
#include "muxio/net.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "muxio/error.hpp"

#include "net/socket_ops.hpp"

namespace muxio {

// ----- TcpListener ----------------------------------------------------------------

std::optional<TcpListener> TcpListener::open(Reactor& reactor, const SocketAddress& address,
                                             const ListenOptions& options, std::error_code& error,
                                             std::string* failed) {
    reactor.require_usable("TcpListener::bind");
    detail::require_ip(address, "TcpListener::bind");
    const int fd = detail::open_socket(address.family(), SOCK_STREAM, error);
    if (fd < 0) {
        if (failed != nullptr) {
            *failed = detail::socket_call(address.family(), SOCK_STREAM);
        }
        return std::nullopt;
    }
    TcpListener listener{reactor, fd};
    const auto option = [&](int level, int name, int value, std::string_view what) {
        if (detail::set_option(fd, level, name, value, error)) {
            return true;
        }
        if (failed != nullptr) {
            *failed = fmt::format("setsockopt({}) on fd {}", what, fd);
        }
        return false;
    };
    if (options.reuse_address && !option(SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR")) {
        return std::nullopt;
    }
    if (options.reuse_port && !option(SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT")) {
        return std::nullopt;
    }
    // Set either way, so "::" means the same whatever net.ipv6.bindv6only says.
    if (address.is_ipv6() && !option(IPPROTO_IPV6, IPV6_V6ONLY, options.ipv6_only ? 1 : 0, "IPV6_V6ONLY")) {
        return std::nullopt;
    }
    if (::bind(fd, address.data(), address.size()) != 0) {
        error = detail::errno_code(errno);
        if (failed != nullptr) {
            *failed = fmt::format("bind {}", address);
        }
        return std::nullopt;
    }
    if (::listen(fd, options.backlog) != 0) {
        error = detail::errno_code(errno);
        if (failed != nullptr) {
            *failed = fmt::format("listen on {} on fd {}", address, fd);
        }
        return std::nullopt;
    }
    listener.local_ = listener.Socket::local_address();
    error.clear();
    return listener;
}

TcpListener TcpListener::bind(Reactor& reactor, const SocketAddress& address, const ListenOptions& options) {
    std::error_code error;
    std::string failed;
    std::optional<TcpListener> listener = open(reactor, address, options, error, &failed);
    if (!listener) {
        throw_system_error(error.value(), failed);
    }
    return std::move(*listener);
}

std::optional<TcpListener> TcpListener::bind(Reactor& reactor, const SocketAddress& address, std::error_code& error,
                                             const ListenOptions& options) {
    return open(reactor, address, options, error, nullptr);
}

std::optional<TcpStream> TcpListener::try_accept(std::error_code& error) noexcept {
    SocketAddress peer;
    const int fd = detail::accept_one(fileno(), peer, error);
    if (fd < 0) {
        return std::nullopt;
    }
    return TcpStream{reactor(), fd, peer};
}

namespace {

// One accept attempt for the awaiting accept() of either listener: true
// with `out` set, false when none is queued, std::system_error otherwise.
template <class Listener, class Stream>
bool accept_now(Listener& listener, Stream& out) {
    std::error_code error;
    std::optional<Stream> stream = listener.try_accept(error);
    if (stream) {
        out = std::move(*stream);
        return true;
    }
    if (error) {
        throw_system_error(error.value(), fmt::format("accept on {}", listener.local_address()), listener.fileno());
    }
    return false;
}

}  // namespace

Task<TcpStream> TcpListener::accept(std::stop_token token) {
    require_open("accept");
    TcpStream accepted;
    while (!accept_now(*this, accepted)) {
        co_await readable(token);
    }
    co_return accepted;
}

Task<TcpStream> TcpListener::accept(std::error_code& error, std::stop_token token) {
    require_open("accept");
    for (;;) {
        std::optional<TcpStream> accepted = try_accept(error);
        if (accepted) {
            co_return std::move(*accepted);
        }
        if (error) {
            co_return TcpStream{};  // not retried: the connection stays queued
        }
        co_await readable(token);
    }
}

// ----- UnixListener ---------------------------------------------------------------

UnixListener::UnixListener(UnixListener&& other) noexcept
    : Socket{std::move(other)},
      local_{other.local_},
      device_{other.device_},
      inode_{other.inode_},
      creator_{other.creator_},
      owns_path_{std::exchange(other.owns_path_, false)} {}

UnixListener& UnixListener::operator=(UnixListener&& other) noexcept {
    if (this != &other) {
        close();
        Socket::operator=(std::move(other));
        local_ = other.local_;
        device_ = other.device_;
        inode_ = other.inode_;
        creator_ = other.creator_;
        owns_path_ = std::exchange(other.owns_path_, false);
    }
    return *this;
}

UnixListener::~UnixListener() {
    unlink_path();
}

void UnixListener::close() noexcept {
    unlink_path();
    Socket::close();
}

void UnixListener::unlink_path() noexcept {
    if (!std::exchange(owns_path_, false) || creator_ != ::getpid()) {
        return;  // a forked child's copy: the path is the parent's
    }
    // Only the file this listener made: another server may have replaced it.
    const std::string path{local_.path()};
    struct stat info {};
    if (::lstat(path.c_str(), &info) == 0 && info.st_dev == device_ && info.st_ino == inode_) {
        ::unlink(path.c_str());
    }
}

std::optional<UnixListener> UnixListener::open(Reactor& reactor, const SocketAddress& address,
                                               const UnixListenOptions& options, std::error_code& error,
                                               std::string* failed) {
    reactor.require_usable("UnixListener::bind");
    detail::require_unix(address, "UnixListener::bind");
    const int fd = detail::open_socket(AF_UNIX, SOCK_STREAM, error);
    if (fd < 0) {
        if (failed != nullptr) {
            *failed = detail::socket_call(AF_UNIX, SOCK_STREAM);
        }
        return std::nullopt;
    }
    UnixListener listener{reactor, fd};
    const bool has_file = !address.path().empty() && !address.is_abstract();
    const std::string path{has_file ? address.path() : std::string_view{}};
    struct stat info {};
    if (has_file && options.remove_stale && ::lstat(path.c_str(), &info) == 0 && S_ISSOCK(info.st_mode)) {
        ::unlink(path.c_str());
    }
    if (::bind(fd, address.data(), address.size()) != 0) {
        error = detail::errno_code(errno);
        if (failed != nullptr) {
            *failed = fmt::format("bind {}", address);
        }
        return std::nullopt;
    }
    listener.local_ = address;
    if (has_file && options.unlink_on_close && ::lstat(path.c_str(), &info) == 0) {
        listener.device_ = static_cast<std::uint64_t>(info.st_dev);
        listener.inode_ = static_cast<std::uint64_t>(info.st_ino);
        listener.creator_ = ::getpid();
        listener.owns_path_ = true;
    }
    if (::listen(fd, options.backlog) != 0) {
        error = detail::errno_code(errno);
        if (failed != nullptr) {
            *failed = fmt::format("listen on {} on fd {}", address, fd);
        }
        return std::nullopt;  // the listener removes the path it made
    }
    error.clear();
    return listener;
}

UnixListener UnixListener::bind(Reactor& reactor, const SocketAddress& address, const UnixListenOptions& options) {
    std::error_code error;
    std::string failed;
    std::optional<UnixListener> listener = open(reactor, address, options, error, &failed);
    if (!listener) {
        throw_system_error(error.value(), failed);
    }
    return std::move(*listener);
}

std::optional<UnixListener> UnixListener::bind(Reactor& reactor, const SocketAddress& address, std::error_code& error,
                                               const UnixListenOptions& options) {
    return open(reactor, address, options, error, nullptr);
}

std::optional<UnixStream> UnixListener::try_accept(std::error_code& error) noexcept {
    SocketAddress peer;
    const int fd = detail::accept_one(fileno(), peer, error);
    if (fd < 0) {
        return std::nullopt;
    }
    return UnixStream{reactor(), fd, peer};
}

Task<UnixStream> UnixListener::accept(std::stop_token token) {
    require_open("accept");
    UnixStream accepted;
    while (!accept_now(*this, accepted)) {
        co_await readable(token);
    }
    co_return accepted;
}

Task<UnixStream> UnixListener::accept(std::error_code& error, std::stop_token token) {
    require_open("accept");
    for (;;) {
        std::optional<UnixStream> accepted = try_accept(error);
        if (accepted) {
            co_return std::move(*accepted);
        }
        if (error) {
            co_return UnixStream{};  // not retried: the connection stays queued
        }
        co_await readable(token);
    }
}

}  // namespace muxio
