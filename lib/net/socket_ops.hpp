// The system calls under every socket type of include/muxio/net.hpp, each
// with its errors turned into muxio's exceptions or error codes once. Private
// to lib/net/.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "muxio/net.hpp"

namespace muxio::detail {

inline constexpr int socket_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;

[[nodiscard]] inline std::error_code errno_code(int errnum) noexcept {
    return {errnum, std::system_category()};
}

[[nodiscard]] inline bool would_block(int errnum) noexcept {
    return errnum == EAGAIN || errnum == EWOULDBLOCK;
}

// One non-blocking transfer call (recv, send, ...), EINTR retried: the byte
// count, or -1 with `errnum` set to the error (0 when it would block). The
// stream operations use it as it is: no std::error_code on their hot path.
template <class Call>
ssize_t transfer_errno(int& errnum, Call call) noexcept {
    for (;;) {
        const ssize_t done = call();
        if (done >= 0) {
            return done;
        }
        if (errno != EINTR) {
            errnum = would_block(errno) ? 0 : errno;
            return -1;
        }
    }
}

// The result of a non-blocking transfer call: its byte count, or nullopt
// with `error` cleared (would block) or set. EINTR retries.
template <class Call>
std::optional<std::size_t> transfer(std::error_code& error, Call call) noexcept {
    int errnum = 0;
    const ssize_t done = transfer_errno(errnum, call);
    if (done >= 0) {
        error.clear();
        return static_cast<std::size_t>(done);
    }
    if (errnum == 0) {
        error.clear();
    } else {
        error = errno_code(errnum);
    }
    return std::nullopt;
}

[[nodiscard]] std::string_view family_name(int family) noexcept;

// A new non-blocking, close-on-exec socket.
[[nodiscard]] int open_socket(int family, int type);
// The same, -1 with `error` set on failure.
[[nodiscard]] int open_socket(int family, int type, std::error_code& error) noexcept;
// What open_socket() names in its message: "socket(AF_INET, SOCK_STREAM)".
[[nodiscard]] std::string socket_call(int family, int type);

void set_option(int fd, int level, int name, int value, std::string_view option);
// The same: false with `error` set on failure.
bool set_option(int fd, int level, int name, int value, std::error_code& error) noexcept;
[[nodiscard]] int get_option(int fd, int level, int name, std::string_view option);

// std::invalid_argument naming `operation` unless the address is of the family.
void require_ip(const SocketAddress& address, std::string_view operation);
void require_unix(const SocketAddress& address, std::string_view operation);

// The peer of a connected socket; unspecified if the kernel cannot tell.
[[nodiscard]] SocketAddress peer_of(int fd) noexcept;

// Checks that `fd` is a stream socket of one of `families` and makes it
// non-blocking; returns its peer. Throws before changing anything, so the
// caller still owns `fd` then.
SocketAddress prepare_adopted(int fd, std::initializer_list<int> families, std::string_view what);

// Starts a non-blocking connect(). True: in progress, wait for writability
// and call finish_connect(); false: connected already.
bool start_connect(int fd, const SocketAddress& address);
void finish_connect(int fd, const SocketAddress& address);
// The same with the failure in `error` (cleared otherwise): start_connect()
// is false when connected or failed.
bool start_connect(int fd, const SocketAddress& address, std::error_code& error) noexcept;
void finish_connect(int fd, std::error_code& error) noexcept;

// Whether an accept failed for one queued connection's trouble (it went
// away, the network failed it), not the listener's: the next one may work.
bool is_connection_error(int errnum) noexcept;

// One accept4(), new descriptor non-blocking and close-on-exec: the
// descriptor, or -1 with `error` cleared (none queued) or set.
int accept_one(int listener, SocketAddress& peer, std::error_code& error) noexcept;

}  // namespace muxio::detail
