// The stream sockets of include/muxio/net.hpp. Every operation is the
// asyncio sock_* pattern: the system call first, a wait for readiness
// through muxio::readable/writable only when it would block.
#include "muxio/net.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <string>

#include <fmt/format.h>

#include "muxio/error.hpp"

#include "net/socket_ops.hpp"

namespace muxio {

// ----- Socket -----------------------------------------------------------------------

Socket& Socket::operator=(Socket&& other) noexcept {
    if (this != &other) {
        close();
        watch_ = std::move(other.watch_);
    }
    return *this;
}

void Socket::close() noexcept {
    // Registrations go first: once closed, the number may be reused by
    // another descriptor whose registrations must not be touched. The watch
    // removes its own and cancels a pending await; a detached one (its
    // reactor closed) has nothing left to remove.
    Reactor* const reactor = watch_.reactor();
    const int fd = watch_.release();
    if (fd < 0) {
        return;
    }
    if (reactor != nullptr) {
        try {
            reactor->remove_reader(fd);
            reactor->remove_writer(fd);
        } catch (...) {
            // A kernel refusing to drop the fd (closing it drops it from
            // epoll anyway), or a forked child, whose reactor leaves the
            // registrations it shares with the parent alone.
        }
    }
    // Linux releases the descriptor even when close() reports EINTR, so it
    // is never retried.
    ::close(fd);
}

int Socket::release() noexcept {
    return watch_.release();
}

SocketAddress Socket::local_address() const {
    require_open("local_address");
    SocketAddress address;
    socklen_t size = SocketAddress::capacity();
    if (::getsockname(fileno(), address.data(), &size) != 0) {
        throw_system_error(errno, "getsockname", fileno());
    }
    address.resize(std::min(size, SocketAddress::capacity()));
    return address;
}

void Socket::refuse_closed(std::string_view operation) const {
    throw std::logic_error(fmt::format("{}: {} is closed", operation, watch_.detached() ? "reactor" : "socket"));
}

// ----- StreamSocket -------------------------------------------------------------------

void StreamSocket::fail(int errnum, std::string_view verb) const {
    if (peer_.family() == AF_UNSPEC) {
        throw_system_error(errnum, verb, fileno());
    }
    throw_system_error(errnum, fmt::format("{} {}", verb, peer_), fileno());
}

std::optional<std::size_t> StreamSocket::try_read(std::span<std::byte> buffer, std::error_code& error) noexcept {
    return detail::transfer(error, [&] { return ::recv(fileno(), buffer.data(), buffer.size(), 0); });
}

std::optional<std::size_t> StreamSocket::try_write(std::span<const std::byte> buffer, std::error_code& error) noexcept {
    return detail::transfer(error, [&] { return ::send(fileno(), buffer.data(), buffer.size(), MSG_NOSIGNAL); });
}

// ----- StreamIo -----------------------------------------------------------------------

namespace detail {

namespace {

std::string_view operation_name(StreamIo::Op op) noexcept {
    switch (op) {
        case StreamIo::Op::read_some:
            return "read_some";
        case StreamIo::Op::read_exact:
            return "read_exact";
        case StreamIo::Op::write_some:
            return "write_some";
        case StreamIo::Op::write_all:
            return "write_all";
    }
    return "stream operation";
}

}  // namespace

bool StreamIo::await_ready() {
    if (awaited_) [[unlikely]] {
        throw std::logic_error(fmt::format("{}: a stream operation can be awaited once", operation_name(op_)));
    }
    awaited_ = true;
    socket_->require_open(operation_name(op_));
    // After a read that emptied the socket, a read now would most likely
    // fail with EAGAIN: a wasted system call per message in a
    // request-response exchange. Readiness comes first then; if data did
    // arrive meanwhile, the wait ends in the next iteration.
    if (reading() && socket_->drained_ && !read_buffer_.empty()) {
        socket_->drained_ = false;
        return false;
    }
    return attempt();
}

ReactorWait& StreamIo::arm() {
    const auto kind = reading() ? ReactorWait::Kind::read : ReactorWait::Kind::write;
    ReactorWait& wait = wait_.construct(kind, socket_->watch_, std::move(token_), &attempt_on_ready, this);
    armed_ = true;
    return wait;
}

bool StreamIo::attempt() noexcept {
    const int fd = socket_->fileno();
    switch (op_) {
        case Op::read_some: {
            const ssize_t got =
                detail::transfer_errno(error_, [&] { return ::recv(fd, read_buffer_.data(), read_buffer_.size(), 0); });
            if (got >= 0) {
                done_ = static_cast<std::size_t>(got);
                socket_->drained_ = done_ < read_buffer_.size();
                return true;
            }
            break;
        }
        case Op::read_exact:
            while (done_ < read_buffer_.size()) {
                const std::span<std::byte> rest = read_buffer_.subspan(done_);
                const ssize_t got =
                    detail::transfer_errno(error_, [&] { return ::recv(fd, rest.data(), rest.size(), 0); });
                if (got < 0) {
                    break;
                }
                if (got == 0) {
                    end_of_stream_ = true;
                    return true;
                }
                done_ += static_cast<std::size_t>(got);
                if (done_ < read_buffer_.size()) {
                    return false;  // the socket is empty: wait rather than fail a read
                }
            }
            if (done_ == read_buffer_.size()) {
                return true;
            }
            break;
        case Op::write_some: {
            const ssize_t sent = detail::transfer_errno(
                error_, [&] { return ::send(fd, write_buffer_.data(), write_buffer_.size(), MSG_NOSIGNAL); });
            if (sent >= 0) {
                done_ = static_cast<std::size_t>(sent);
                return true;
            }
            break;
        }
        case Op::write_all:
            while (done_ < write_buffer_.size()) {
                const std::span<const std::byte> rest = write_buffer_.subspan(done_);
                const ssize_t sent =
                    detail::transfer_errno(error_, [&] { return ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL); });
                if (sent < 0) {
                    break;
                }
                done_ += static_cast<std::size_t>(sent);
                if (done_ < write_buffer_.size()) {
                    return false;  // the send buffer is full: wait rather than fail a write
                }
            }
            if (done_ == write_buffer_.size()) {
                return true;
            }
            break;
    }
    return error_ != 0;  // failed, or would block
}

void StreamIo::fail() const {
    if (error_ != 0) {
        socket_->fail(error_, reading() ? "read from" : "write to");
    }
    const SocketAddress& peer = socket_->peer_address();
    const std::string from = peer.family() == AF_UNSPEC ? std::string{} : " from " + peer.to_string();
    throw IncompleteRead{fmt::format("read_exact{} on fd {}: end of stream after {} of {} bytes", from,
                                     socket_->fileno(), done_, read_buffer_.size()),
                         done_, read_buffer_.size()};
}

}  // namespace detail

void StreamSocket::shutdown(ShutdownHow how) {
    require_open("shutdown");
    const int mode = how == ShutdownHow::read ? SHUT_RD : how == ShutdownHow::write ? SHUT_WR : SHUT_RDWR;
    if (::shutdown(fileno(), mode) != 0) {
        fail(errno, "shutdown");
    }
}

// ----- TcpStream ----------------------------------------------------------------------

Task<TcpStream> TcpStream::connect(Reactor& reactor, SocketAddress address, std::stop_token token) {
    reactor.require_usable("TcpStream::connect");
    detail::require_ip(address, "TcpStream::connect");
    if (token.stop_requested() || (co_await get_stop_token()).stop_requested()) {
        throw Cancelled{};
    }
    TcpStream stream{reactor, detail::open_socket(address.family(), SOCK_STREAM), address};
    if (detail::start_connect(stream.fileno(), address)) {
        // On cancellation `stream` closes the half-open socket as the frame unwinds.
        co_await stream.writable(token);
        detail::finish_connect(stream.fileno(), address);
    }
    co_return std::move(stream);
}

Task<TcpStream> TcpStream::connect(Reactor& reactor, std::string host, std::uint16_t port, std::stop_token token) {
    const std::vector<SocketAddress> addresses = co_await muxio::resolve(reactor, host, port, ResolveHints{}, token);
    int last_error = EHOSTUNREACH;  // only if the resolver returned nothing, which getaddrinfo never does
    for (const SocketAddress& address : addresses) {
        try {
            co_return co_await connect(reactor, address, token);
        } catch (const std::system_error& error) {
            if (error.code().category() != std::system_category()) {
                throw;
            }
            last_error = error.code().value();
        }
    }
    throw_system_error(last_error, fmt::format("connect {}:{} (tried {})", host, port, fmt::join(addresses, ", ")));
}

TcpStream TcpStream::adopt(Reactor& reactor, int fd) {
    reactor.require_usable("TcpStream::adopt");
    const SocketAddress peer = detail::prepare_adopted(fd, {AF_INET, AF_INET6}, "TcpStream");
    return TcpStream{reactor, fd, peer};
}

void TcpStream::set_nodelay(bool enabled) {
    require_open("set_nodelay");
    detail::set_option(fileno(), IPPROTO_TCP, TCP_NODELAY, enabled ? 1 : 0, "TCP_NODELAY");
}

bool TcpStream::nodelay() const {
    require_open("nodelay");
    return detail::get_option(fileno(), IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY") != 0;
}

// ----- UnixStream -----------------------------------------------------------------

Task<UnixStream> UnixStream::connect(Reactor& reactor, SocketAddress address, std::stop_token token) {
    reactor.require_usable("UnixStream::connect");
    detail::require_unix(address, "UnixStream::connect");
    if (token.stop_requested() || (co_await get_stop_token()).stop_requested()) {
        throw Cancelled{};
    }
    UnixStream stream{reactor, detail::open_socket(AF_UNIX, SOCK_STREAM), address};
    // A Unix connect completes or fails at once (EAGAIN: backlog full); the
    // wait is there for kernels that say EINPROGRESS all the same.
    if (detail::start_connect(stream.fileno(), address)) {
        co_await stream.writable(token);
        detail::finish_connect(stream.fileno(), address);
    }
    co_return std::move(stream);
}

std::pair<UnixStream, UnixStream> UnixStream::pair(Reactor& reactor) {
    reactor.require_usable("UnixStream::pair");
    std::array<int, 2> fds{-1, -1};
    if (::socketpair(AF_UNIX, SOCK_STREAM | detail::socket_flags, 0, fds.data()) != 0) {
        throw_system_error(errno, "socketpair(AF_UNIX, SOCK_STREAM)");
    }
    return {UnixStream{reactor, fds[0], detail::peer_of(fds[0])}, UnixStream{reactor, fds[1], detail::peer_of(fds[1])}};
}

UnixStream UnixStream::adopt(Reactor& reactor, int fd) {
    reactor.require_usable("UnixStream::adopt");
    const SocketAddress peer = detail::prepare_adopted(fd, {AF_UNIX}, "UnixStream");
    return UnixStream{reactor, fd, peer};
}

}  // namespace muxio
