// The UDP socket of include/muxio/net.hpp.
#include "muxio/net.hpp"

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>

#include <fmt/format.h>

#include "muxio/error.hpp"

#include "net/socket_ops.hpp"

namespace muxio {

// ----- UdpSocket --------------------------------------------------------------------

UdpSocket UdpSocket::bind(Reactor& reactor, const SocketAddress& address, const UdpOptions& options) {
    reactor.require_usable("UdpSocket::bind");
    detail::require_ip(address, "UdpSocket::bind");
    UdpSocket socket{reactor, detail::open_socket(address.family(), SOCK_DGRAM)};
    const int fd = socket.fileno();
    if (options.reuse_address) {
        detail::set_option(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    }
    if (options.reuse_port) {
        detail::set_option(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
    }
    if (options.broadcast) {
        detail::set_option(fd, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
    }
    if (address.is_ipv6()) {
        detail::set_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, options.ipv6_only ? 1 : 0, "IPV6_V6ONLY");
    }
    if (::bind(fd, address.data(), address.size()) != 0) {
        throw_system_error(errno, fmt::format("bind {}", address));
    }
    return socket;
}

UdpSocket UdpSocket::open(Reactor& reactor, int family) {
    reactor.require_usable("UdpSocket::open");
    if (family != AF_INET && family != AF_INET6) {
        throw std::invalid_argument(fmt::format("UdpSocket::open: family {} is not AF_INET or AF_INET6", family));
    }
    return UdpSocket{reactor, detail::open_socket(family, SOCK_DGRAM)};
}

void UdpSocket::connect(const SocketAddress& peer) {
    require_open("connect");
    if (::connect(fileno(), peer.data(), peer.size()) != 0) {
        throw_system_error(errno, fmt::format("connect {}", peer), fileno());
    }
    peer_ = peer;
}

std::optional<std::size_t> UdpSocket::try_send_to(std::span<const std::byte> buffer, const SocketAddress& destination,
                                                  std::error_code& error) noexcept {
    return detail::transfer(error, [&] {
        return ::sendto(fileno(), buffer.data(), buffer.size(), MSG_NOSIGNAL, destination.data(), destination.size());
    });
}

std::optional<std::size_t> UdpSocket::try_send(std::span<const std::byte> buffer, std::error_code& error) noexcept {
    return detail::transfer(error, [&] { return ::send(fileno(), buffer.data(), buffer.size(), MSG_NOSIGNAL); });
}

std::optional<Datagram> UdpSocket::try_recv_from(std::span<std::byte> buffer, std::error_code& error) noexcept {
    Datagram datagram;
    iovec vector{buffer.data(), buffer.size()};
    msghdr message{};
    message.msg_name = datagram.peer.data();
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    const auto got = detail::transfer(error, [&] {
        message.msg_namelen = SocketAddress::capacity();
        return ::recvmsg(fileno(), &message, 0);
    });
    if (!got) {
        return std::nullopt;
    }
    datagram.size = *got;
    datagram.peer.resize(std::min(message.msg_namelen, SocketAddress::capacity()));
    datagram.truncated = (static_cast<unsigned>(message.msg_flags) & static_cast<unsigned>(MSG_TRUNC)) != 0U;
    return datagram;
}

Task<std::size_t> UdpSocket::send_to(std::span<const std::byte> buffer, SocketAddress destination,
                                     std::stop_token token) {
    require_open("send_to");
    for (;;) {
        std::error_code error;
        if (const auto sent = try_send_to(buffer, destination, error)) {
            co_return *sent;
        }
        if (error) {
            throw_system_error(error.value(), fmt::format("send to {}", destination), fileno());
        }
        co_await writable(token);
    }
}

Task<std::size_t> UdpSocket::send(std::span<const std::byte> buffer, std::stop_token token) {
    require_open("send");
    for (;;) {
        std::error_code error;
        if (const auto sent = try_send(buffer, error)) {
            co_return *sent;
        }
        if (error) {
            throw_system_error(error.value(), fmt::format("send to {}", peer_), fileno());
        }
        co_await writable(token);
    }
}

Task<Datagram> UdpSocket::recv_from(std::span<std::byte> buffer, std::stop_token token) {
    require_open("recv_from");
    for (;;) {
        std::error_code error;
        if (auto datagram = try_recv_from(buffer, error)) {
            co_return std::move(*datagram);
        }
        if (error) {
            throw_system_error(error.value(), "receive", fileno());
        }
        co_await readable(token);
    }
}

}  // namespace muxio
