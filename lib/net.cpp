// Socket addresses and the socket types of include/muxio/net.hpp. Every
// operation is the asyncio sock_* pattern: the system call first, a wait for
// readiness through muxio::readable/writable only when it would block.
#include "muxio/net.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "muxio/error.hpp"

namespace muxio {

namespace {

constexpr int socket_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
constexpr socklen_t sun_path_offset = offsetof(sockaddr_un, sun_path);
// One byte of sun_path is kept for the terminating NUL of a path, or the
// leading NUL of an abstract name.
constexpr std::size_t max_unix_name = sizeof(sockaddr_un::sun_path) - 1;

[[nodiscard]] std::error_code errno_code(int errnum) noexcept {
    return {errnum, std::system_category()};
}

[[nodiscard]] bool would_block(int errnum) noexcept {
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

[[nodiscard]] int open_socket(int family, int type) {
    const int fd = ::socket(family, type | socket_flags, 0);
    if (fd < 0) {
        throw_system_error(errno, fmt::format("socket({}, {})", family_name(family),
                                              type == SOCK_DGRAM ? "SOCK_DGRAM" : "SOCK_STREAM"));
    }
    return fd;
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

// The peer of a connected socket; unspecified if the kernel cannot tell.
[[nodiscard]] SocketAddress peer_of(int fd) noexcept {
    SocketAddress peer;
    socklen_t size = SocketAddress::capacity();
    if (::getpeername(fd, peer.data(), &size) != 0) {
        return {};
    }
    peer.resize(std::min(size, SocketAddress::capacity()));
    return peer;
}

// Checks that `fd` is a stream socket of one of `families` and makes it
// non-blocking; returns its peer. Throws before changing anything, so the
// caller still owns `fd` then.
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

// Starts a non-blocking connect(). True: in progress, wait for writability
// and call finish_connect(); false: connected already.
bool start_connect(int fd, const SocketAddress& address) {
    if (::connect(fd, address.data(), address.size()) == 0) {
        return false;
    }
    const int errnum = errno;
    // EINTR: the handshake goes on in the background, as with EINPROGRESS
    // (POSIX); retrying connect() would fail with EALREADY.
    if (errnum == EINPROGRESS || errnum == EINTR) {
        return true;
    }
    throw_system_error(errnum, fmt::format("connect {}", address));
}

void finish_connect(int fd, const SocketAddress& address) {
    int errnum = 0;
    socklen_t size = sizeof errnum;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &errnum, &size) != 0) {
        errnum = errno;
    }
    if (errnum != 0) {
        throw_system_error(errnum, fmt::format("connect {}", address));
    }
}

// One accept4(), new descriptor non-blocking and close-on-exec: the
// descriptor, or -1 with `error` cleared (none queued) or set.
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
        switch (errnum) {
            case EINTR:
            case ECONNABORTED:
            case EPROTO:
            case ENETDOWN:
            case ENOPROTOOPT:
            case EHOSTDOWN:
            case ENONET:
            case EHOSTUNREACH:
            case ENETUNREACH:
                if (skipped < max_skipped) {
                    continue;
                }
                break;
            default:
                break;
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

[[nodiscard]] std::optional<std::uint16_t> parse_port(std::string_view text) noexcept {
    if (text.empty() || text.size() > 5) {
        return std::nullopt;
    }
    unsigned value = 0;
    const auto [end, status] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (status != std::errc{} || end != text.data() + text.size() || value > 65535U) {
        return std::nullopt;
    }
    return static_cast<std::uint16_t>(value);
}

template <class Sockaddr>
SocketAddress from_struct(const Sockaddr& address) noexcept {
    SocketAddress result;
    std::memcpy(result.data(), &address, sizeof address);
    result.resize(sizeof address);
    return result;
}

[[nodiscard]] std::optional<SocketAddress> make_ipv4(std::string_view host, std::uint16_t port) noexcept {
    std::array<char, INET_ADDRSTRLEN> text{};
    if (host.size() >= text.size()) {
        return std::nullopt;
    }
    std::copy(host.begin(), host.end(), text.begin());
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    if (::inet_pton(AF_INET, text.data(), &address.sin_addr) != 1) {
        return std::nullopt;
    }
    return from_struct(address);
}

[[nodiscard]] std::optional<SocketAddress> make_ipv6(std::string_view host, std::uint16_t port) noexcept {
    std::string_view scope;
    if (const auto percent = host.find('%'); percent != std::string_view::npos) {
        scope = host.substr(percent + 1);
        host = host.substr(0, percent);
        if (scope.empty()) {
            return std::nullopt;
        }
    }
    std::array<char, INET6_ADDRSTRLEN> text{};
    if (host.size() >= text.size()) {
        return std::nullopt;
    }
    std::copy(host.begin(), host.end(), text.begin());
    sockaddr_in6 address{};
    address.sin6_family = AF_INET6;
    address.sin6_port = htons(port);
    if (::inet_pton(AF_INET6, text.data(), &address.sin6_addr) != 1) {
        return std::nullopt;
    }
    if (!scope.empty()) {
        std::uint32_t index = 0;
        const auto [end, status] = std::from_chars(scope.data(), scope.data() + scope.size(), index);
        if (status != std::errc{} || end != scope.data() + scope.size()) {
            std::array<char, IF_NAMESIZE> name{};
            if (scope.size() >= name.size()) {
                return std::nullopt;
            }
            std::copy(scope.begin(), scope.end(), name.begin());
            index = ::if_nametoindex(name.data());
            if (index == 0) {
                return std::nullopt;
            }
        }
        address.sin6_scope_id = index;
    }
    return from_struct(address);
}

// `name` is the whole of sun_path's content: a path, or an abstract name
// with its leading NUL.
[[nodiscard]] SocketAddress make_unix(std::string_view name, bool terminate) noexcept {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::copy(name.begin(), name.end(), std::begin(address.sun_path));
    SocketAddress result;
    const auto size = static_cast<socklen_t>(sun_path_offset + name.size() + (terminate ? 1U : 0U));
    std::memcpy(result.data(), &address, size);
    result.resize(size);
    return result;
}

[[nodiscard]] std::optional<SocketAddress> make_unix_path(std::string_view path) noexcept {
    if (path.empty() || path.size() > max_unix_name || path.find('\0') != std::string_view::npos) {
        return std::nullopt;
    }
    return make_unix(path, true);
}

[[nodiscard]] std::optional<SocketAddress> make_unix_abstract(std::string_view name) noexcept {
    if (name.size() > max_unix_name) {
        return std::nullopt;
    }
    std::array<char, max_unix_name + 1> bytes{};
    std::copy(name.begin(), name.end(), bytes.begin() + 1);
    return make_unix({bytes.data(), name.size() + 1}, false);
}

}  // namespace

// ----- SocketAddress --------------------------------------------------------------

SocketAddress::SocketAddress() noexcept : storage_{} {
    storage_.ss_family = AF_UNSPEC;
}

SocketAddress::SocketAddress(const sockaddr* address, socklen_t size) : SocketAddress{} {
    if (size > capacity()) {
        throw std::invalid_argument(fmt::format("SocketAddress: size {} exceeds sockaddr_storage", size));
    }
    if (size > 0) {
        std::memcpy(&storage_, address, size);
    }
    size_ = size;
}

SocketAddress SocketAddress::ipv4(std::string_view host, std::uint16_t port) {
    if (auto address = make_ipv4(host, port)) {
        return *address;
    }
    throw std::invalid_argument(fmt::format("not a numeric IPv4 address: '{}'", host));
}

SocketAddress SocketAddress::ipv6(std::string_view host, std::uint16_t port) {
    if (auto address = make_ipv6(host, port)) {
        return *address;
    }
    throw std::invalid_argument(fmt::format("not a numeric IPv6 address: '{}'", host));
}

SocketAddress SocketAddress::unix_path(std::string_view path) {
    if (auto address = make_unix_path(path)) {
        return *address;
    }
    throw std::invalid_argument(
        fmt::format("not a Unix socket path (empty, NUL inside, or over {} bytes): '{}'", max_unix_name, path));
}

SocketAddress SocketAddress::unix_abstract(std::string_view name) {
    if (auto address = make_unix_abstract(name)) {
        return *address;
    }
    throw std::invalid_argument(fmt::format("abstract Unix socket name over {} bytes", max_unix_name));
}

std::optional<SocketAddress> SocketAddress::parse(std::string_view text) noexcept {
    constexpr std::string_view unix_prefix = "unix:";
    if (text.starts_with(unix_prefix)) {
        text.remove_prefix(unix_prefix.size());
        if (text.starts_with('@')) {
            return make_unix_abstract(text.substr(1));
        }
        return make_unix_path(text);
    }
    if (text.starts_with('[')) {
        const auto close = text.find("]:");
        if (close == std::string_view::npos) {
            return std::nullopt;
        }
        const auto port = parse_port(text.substr(close + 2));
        if (!port) {
            return std::nullopt;
        }
        return make_ipv6(text.substr(1, close - 1), *port);
    }
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) {
        return std::nullopt;
    }
    const auto port = parse_port(text.substr(colon + 1));
    if (!port) {
        return std::nullopt;
    }
    return make_ipv4(text.substr(0, colon), *port);
}

std::optional<SocketAddress> SocketAddress::ip(std::string_view host, std::uint16_t port) noexcept {
    return host.find(':') != std::string_view::npos ? make_ipv6(host, port) : make_ipv4(host, port);
}

SocketAddress SocketAddress::from_string(std::string_view text) {
    if (auto address = parse(text)) {
        return *address;
    }
    throw std::invalid_argument(
        fmt::format("not a socket address (expected 1.2.3.4:port, [::1]:port, unix:/path or unix:@name): '{}'", text));
}

int SocketAddress::family() const noexcept {
    return size_ == 0 ? AF_UNSPEC : storage_.ss_family;
}

bool SocketAddress::is_loopback() const noexcept {
    if (is_ipv4()) {
        sockaddr_in address{};
        std::memcpy(&address, &storage_, sizeof address);
        return (ntohl(address.sin_addr.s_addr) >> 24U) == 127U;
    }
    if (is_ipv6()) {
        sockaddr_in6 address{};
        std::memcpy(&address, &storage_, sizeof address);
        const auto* bytes = std::begin(address.sin6_addr.s6_addr);
        const auto zero = [](std::uint8_t byte) { return byte == 0; };
        if (!std::all_of(bytes, bytes + 10, zero)) {
            return false;
        }
        if (bytes[10] == 0xff && bytes[11] == 0xff) {
            return bytes[12] == 127;  // ::ffff:127.0.0.0/104
        }
        return std::all_of(bytes + 10, bytes + 15, zero) && bytes[15] == 1;  // ::1
    }
    return false;
}

std::uint16_t SocketAddress::port() const noexcept {
    if (is_ipv4()) {
        sockaddr_in address{};
        std::memcpy(&address, &storage_, sizeof address);
        return ntohs(address.sin_port);
    }
    if (is_ipv6()) {
        sockaddr_in6 address{};
        std::memcpy(&address, &storage_, sizeof address);
        return ntohs(address.sin6_port);
    }
    return 0;
}

SocketAddress SocketAddress::with_port(std::uint16_t port) const noexcept {
    SocketAddress copy = *this;
    const std::uint16_t network = htons(port);
    // sin_port and sin6_port sit at the same offset; written byte-wise to
    // keep to the storage's own type.
    static_assert(offsetof(sockaddr_in, sin_port) == offsetof(sockaddr_in6, sin6_port));
    if (is_ipv4() || is_ipv6()) {
        std::memcpy(reinterpret_cast<char*>(&copy.storage_) + offsetof(sockaddr_in, sin_port), &network,
                    sizeof network);
    }
    return copy;
}

std::string SocketAddress::host() const {
    std::array<char, INET6_ADDRSTRLEN> text{};
    if (is_ipv4()) {
        sockaddr_in address{};
        std::memcpy(&address, &storage_, sizeof address);
        ::inet_ntop(AF_INET, &address.sin_addr, text.data(), static_cast<socklen_t>(text.size()));
        return text.data();
    }
    if (is_ipv6()) {
        sockaddr_in6 address{};
        std::memcpy(&address, &storage_, sizeof address);
        ::inet_ntop(AF_INET6, &address.sin6_addr, text.data(), static_cast<socklen_t>(text.size()));
        if (address.sin6_scope_id != 0) {
            return fmt::format("{}%{}", text.data(), address.sin6_scope_id);
        }
        return text.data();
    }
    return {};
}

std::string_view SocketAddress::path() const noexcept {
    if (!is_unix() || size_ <= sun_path_offset) {
        return {};
    }
    const char* name = reinterpret_cast<const char*>(&storage_) + sun_path_offset;
    const std::size_t length = size_ - sun_path_offset;
    if (name[0] == '\0') {
        return {name, length};
    }
    // A path's terminating NUL may or may not be counted in the size.
    return {name, ::strnlen(name, length)};
}

bool SocketAddress::is_abstract() const noexcept {
    const std::string_view name = path();
    return !name.empty() && name.front() == '\0';
}

std::string SocketAddress::to_string() const {
    switch (family()) {
        case AF_INET:
            return fmt::format("{}:{}", host(), port());
        case AF_INET6:
            return fmt::format("[{}]:{}", host(), port());
        case AF_UNIX: {
            const std::string_view name = path();
            if (name.empty()) {
                return "unix:<unnamed>";
            }
            if (name.front() == '\0') {
                return fmt::format("unix:@{}", name.substr(1));
            }
            return fmt::format("unix:{}", name);
        }
        default:
            return "<unspecified>";
    }
}

const sockaddr* SocketAddress::data() const noexcept {
    return reinterpret_cast<const sockaddr*>(&storage_);
}

sockaddr* SocketAddress::data() noexcept {
    return reinterpret_cast<sockaddr*>(&storage_);
}

void SocketAddress::resize(socklen_t size) {
    if (size > capacity()) {
        throw std::invalid_argument(fmt::format("SocketAddress: size {} exceeds sockaddr_storage", size));
    }
    size_ = size;
}

namespace {

// The bytes that make an address what it is, for == and hash().
struct AddressKey {
    std::array<char, sizeof(sockaddr_storage) + 8> bytes{};
    std::size_t size = 0;

    void add(const void* data, std::size_t count) noexcept {
        std::memcpy(bytes.data() + size, data, count);
        size += count;
    }
    [[nodiscard]] std::string_view view() const noexcept { return {bytes.data(), size}; }
};

AddressKey key_of(const SocketAddress& address) noexcept {
    AddressKey key;
    const int family = address.family();
    key.add(&family, sizeof family);
    if (address.is_ipv4()) {
        sockaddr_in in{};
        std::memcpy(&in, address.data(), sizeof in);
        key.add(&in.sin_addr, sizeof in.sin_addr);
        key.add(&in.sin_port, sizeof in.sin_port);
    } else if (address.is_ipv6()) {
        sockaddr_in6 in6{};
        std::memcpy(&in6, address.data(), sizeof in6);
        key.add(&in6.sin6_addr, sizeof in6.sin6_addr);
        key.add(&in6.sin6_port, sizeof in6.sin6_port);
        key.add(&in6.sin6_scope_id, sizeof in6.sin6_scope_id);
    } else if (address.is_unix()) {
        const std::string_view name = address.path();
        key.add(name.data(), name.size());
    }
    return key;
}

}  // namespace

bool operator==(const SocketAddress& a, const SocketAddress& b) noexcept {
    return key_of(a).view() == key_of(b).view();
}

std::size_t SocketAddress::hash() const noexcept {
    return std::hash<std::string_view>{}(key_of(*this).view());
}

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
    return transfer(error, [&] { return ::recv(fileno(), buffer.data(), buffer.size(), 0); });
}

std::optional<std::size_t> StreamSocket::try_write(std::span<const std::byte> buffer, std::error_code& error) noexcept {
    return transfer(error, [&] { return ::send(fileno(), buffer.data(), buffer.size(), MSG_NOSIGNAL); });
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
                transfer_errno(error_, [&] { return ::recv(fd, read_buffer_.data(), read_buffer_.size(), 0); });
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
                const ssize_t got = transfer_errno(error_, [&] { return ::recv(fd, rest.data(), rest.size(), 0); });
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
            const ssize_t sent = transfer_errno(
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
                    transfer_errno(error_, [&] { return ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL); });
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
    require_ip(address, "TcpStream::connect");
    if (token.stop_requested() || (co_await get_stop_token()).stop_requested()) {
        throw Cancelled{};
    }
    TcpStream stream{reactor, open_socket(address.family(), SOCK_STREAM), address};
    if (start_connect(stream.fileno(), address)) {
        // On cancellation `stream` closes the half-open socket as the frame unwinds.
        co_await stream.writable(token);
        finish_connect(stream.fileno(), address);
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
    const SocketAddress peer = prepare_adopted(fd, {AF_INET, AF_INET6}, "TcpStream");
    return TcpStream{reactor, fd, peer};
}

void TcpStream::set_nodelay(bool enabled) {
    require_open("set_nodelay");
    set_option(fileno(), IPPROTO_TCP, TCP_NODELAY, enabled ? 1 : 0, "TCP_NODELAY");
}

bool TcpStream::nodelay() const {
    require_open("nodelay");
    return get_option(fileno(), IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY") != 0;
}

// ----- UnixStream -----------------------------------------------------------------

Task<UnixStream> UnixStream::connect(Reactor& reactor, SocketAddress address, std::stop_token token) {
    reactor.require_usable("UnixStream::connect");
    require_unix(address, "UnixStream::connect");
    if (token.stop_requested() || (co_await get_stop_token()).stop_requested()) {
        throw Cancelled{};
    }
    UnixStream stream{reactor, open_socket(AF_UNIX, SOCK_STREAM), address};
    // A Unix connect completes or fails at once (EAGAIN: backlog full); the
    // wait is there for kernels that say EINPROGRESS all the same.
    if (start_connect(stream.fileno(), address)) {
        co_await stream.writable(token);
        finish_connect(stream.fileno(), address);
    }
    co_return std::move(stream);
}

std::pair<UnixStream, UnixStream> UnixStream::pair(Reactor& reactor) {
    reactor.require_usable("UnixStream::pair");
    std::array<int, 2> fds{-1, -1};
    if (::socketpair(AF_UNIX, SOCK_STREAM | socket_flags, 0, fds.data()) != 0) {
        throw_system_error(errno, "socketpair(AF_UNIX, SOCK_STREAM)");
    }
    return {UnixStream{reactor, fds[0], peer_of(fds[0])}, UnixStream{reactor, fds[1], peer_of(fds[1])}};
}

UnixStream UnixStream::adopt(Reactor& reactor, int fd) {
    reactor.require_usable("UnixStream::adopt");
    const SocketAddress peer = prepare_adopted(fd, {AF_UNIX}, "UnixStream");
    return UnixStream{reactor, fd, peer};
}

// ----- TcpListener ----------------------------------------------------------------

TcpListener TcpListener::bind(Reactor& reactor, const SocketAddress& address, const ListenOptions& options) {
    reactor.require_usable("TcpListener::bind");
    require_ip(address, "TcpListener::bind");
    TcpListener listener{reactor, open_socket(address.family(), SOCK_STREAM)};
    const int fd = listener.fileno();
    if (options.reuse_address) {
        set_option(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    }
    if (options.reuse_port) {
        set_option(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
    }
    if (address.is_ipv6()) {
        // Set either way, so "::" means the same whatever net.ipv6.bindv6only says.
        set_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, options.ipv6_only ? 1 : 0, "IPV6_V6ONLY");
    }
    if (::bind(fd, address.data(), address.size()) != 0) {
        throw_system_error(errno, fmt::format("bind {}", address));
    }
    if (::listen(fd, options.backlog) != 0) {
        throw_system_error(errno, fmt::format("listen on {}", address), fd);
    }
    listener.local_ = listener.Socket::local_address();
    return listener;
}

std::optional<TcpStream> TcpListener::try_accept(std::error_code& error) noexcept {
    SocketAddress peer;
    const int fd = accept_one(fileno(), peer, error);
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

UnixListener UnixListener::bind(Reactor& reactor, const SocketAddress& address, const UnixListenOptions& options) {
    reactor.require_usable("UnixListener::bind");
    require_unix(address, "UnixListener::bind");
    UnixListener listener{reactor, open_socket(AF_UNIX, SOCK_STREAM)};
    const int fd = listener.fileno();
    const bool has_file = !address.path().empty() && !address.is_abstract();
    const std::string path{has_file ? address.path() : std::string_view{}};
    struct stat info {};
    if (has_file && options.remove_stale && ::lstat(path.c_str(), &info) == 0 && S_ISSOCK(info.st_mode)) {
        ::unlink(path.c_str());
    }
    if (::bind(fd, address.data(), address.size()) != 0) {
        throw_system_error(errno, fmt::format("bind {}", address));
    }
    listener.local_ = address;
    if (has_file && options.unlink_on_close && ::lstat(path.c_str(), &info) == 0) {
        listener.device_ = static_cast<std::uint64_t>(info.st_dev);
        listener.inode_ = static_cast<std::uint64_t>(info.st_ino);
        listener.creator_ = ::getpid();
        listener.owns_path_ = true;
    }
    if (::listen(fd, options.backlog) != 0) {
        throw_system_error(errno, fmt::format("listen on {}", address), fd);
    }
    return listener;
}

std::optional<UnixStream> UnixListener::try_accept(std::error_code& error) noexcept {
    SocketAddress peer;
    const int fd = accept_one(fileno(), peer, error);
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

// ----- UdpSocket --------------------------------------------------------------------

UdpSocket UdpSocket::bind(Reactor& reactor, const SocketAddress& address, const UdpOptions& options) {
    reactor.require_usable("UdpSocket::bind");
    require_ip(address, "UdpSocket::bind");
    UdpSocket socket{reactor, open_socket(address.family(), SOCK_DGRAM)};
    const int fd = socket.fileno();
    if (options.reuse_address) {
        set_option(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    }
    if (options.reuse_port) {
        set_option(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
    }
    if (options.broadcast) {
        set_option(fd, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
    }
    if (address.is_ipv6()) {
        set_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, options.ipv6_only ? 1 : 0, "IPV6_V6ONLY");
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
    return UdpSocket{reactor, open_socket(family, SOCK_DGRAM)};
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
    return transfer(error, [&] {
        return ::sendto(fileno(), buffer.data(), buffer.size(), MSG_NOSIGNAL, destination.data(), destination.size());
    });
}

std::optional<std::size_t> UdpSocket::try_send(std::span<const std::byte> buffer, std::error_code& error) noexcept {
    return transfer(error, [&] { return ::send(fileno(), buffer.data(), buffer.size(), MSG_NOSIGNAL); });
}

std::optional<Datagram> UdpSocket::try_recv_from(std::span<std::byte> buffer, std::error_code& error) noexcept {
    Datagram datagram;
    iovec vector{buffer.data(), buffer.size()};
    msghdr message{};
    message.msg_name = datagram.peer.data();
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    const auto got = transfer(error, [&] {
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
