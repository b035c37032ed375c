// SocketAddress: parsing, formatting and comparing the addresses of
// include/muxio/net.hpp.
#include "muxio/net.hpp"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <string>

#include <fmt/format.h>

namespace muxio {

namespace {

constexpr socklen_t sun_path_offset = offsetof(sockaddr_un, sun_path);
// One byte of sun_path is kept for the terminating NUL of a path, or the
// leading NUL of an abstract name.
constexpr std::size_t max_unix_name = sizeof(sockaddr_un::sun_path) - 1;

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

}  // namespace muxio
