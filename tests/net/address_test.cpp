// SocketAddress: construction, parsing, formatting, comparison.
#include <netinet/in.h>
#include <sys/un.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <unordered_set>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/net.hpp"

using muxio::SocketAddress;

TEST_CASE("an IPv4 address knows its family, host and port and formats as host:port") {
    const SocketAddress address = SocketAddress::ipv4("127.0.0.1", 8080);
    CHECK(address.family() == AF_INET);
    CHECK(address.is_ipv4());
    CHECK(address.port() == 8080);
    CHECK(address.host() == "127.0.0.1");
    CHECK(address.size() == sizeof(sockaddr_in));
    CHECK(address.to_string() == "127.0.0.1:8080");
    CHECK(fmt::format("{}", address) == "127.0.0.1:8080");
    CHECK(fmt::format("{:>16}", address) == "  127.0.0.1:8080");
    CHECK(address.is_loopback());
    CHECK_FALSE(SocketAddress::ipv4("10.1.2.3", 1).is_loopback());
}

TEST_CASE("an IPv6 address formats in brackets, with its scope when it has one") {
    const SocketAddress address = SocketAddress::ipv6("::1", 80);
    CHECK(address.family() == AF_INET6);
    CHECK(address.port() == 80);
    CHECK(address.to_string() == "[::1]:80");
    CHECK(address.is_loopback());
    const SocketAddress scoped = SocketAddress::ipv6("fe80::1%7", 443);
    CHECK(scoped.host() == "fe80::1%7");
    CHECK(scoped.to_string() == "[fe80::1%7]:443");
    CHECK_FALSE(scoped.is_loopback());
    CHECK(SocketAddress::ipv6("::ffff:127.0.0.2", 1).is_loopback());
    CHECK_FALSE(SocketAddress::ipv6("::ffff:10.0.0.1", 1).is_loopback());
    CHECK_FALSE(SocketAddress::ipv6("::", 1).is_loopback());
}

TEST_CASE("a Unix-domain address holds a path or an abstract name") {
    const SocketAddress path = SocketAddress::unix_path("/run/app.sock");
    CHECK(path.is_unix());
    CHECK(path.path() == "/run/app.sock");
    CHECK_FALSE(path.is_abstract());
    CHECK(path.port() == 0);
    CHECK(path.to_string() == "unix:/run/app.sock");
    CHECK(path.size() == offsetof(sockaddr_un, sun_path) + 14);  // the terminating NUL counted

    const SocketAddress abstract = SocketAddress::unix_abstract("muxio-test");
    CHECK(abstract.is_abstract());
    CHECK(abstract.path() == std::string_view{"\0muxio-test", 11});
    CHECK(abstract.to_string() == "unix:@muxio-test");
    CHECK(abstract != SocketAddress::unix_path("muxio-test"));
}

TEST_CASE("bad addresses are refused with invalid_argument naming them") {
    CHECK_THROWS_AS((void)SocketAddress::ipv4("localhost", 1), std::invalid_argument);
    CHECK_THROWS_AS((void)SocketAddress::ipv4("::1", 1), std::invalid_argument);
    CHECK_THROWS_AS((void)SocketAddress::ipv4("256.0.0.1", 1), std::invalid_argument);
    CHECK_THROWS_AS((void)SocketAddress::ipv6("127.0.0.1", 1), std::invalid_argument);
    CHECK_THROWS_AS((void)SocketAddress::ipv6("fe80::1%", 1), std::invalid_argument);
    CHECK_THROWS_AS((void)SocketAddress::ipv6("fe80::1%no-such-interface-x", 1), std::invalid_argument);
    CHECK_THROWS_AS((void)SocketAddress::unix_path(""), std::invalid_argument);
    CHECK_THROWS_AS((void)SocketAddress::unix_path(std::string(200, 'x')), std::invalid_argument);
    CHECK_THROWS_AS((void)SocketAddress::unix_path(std::string_view{"a\0b", 3}), std::invalid_argument);
    CHECK_THROWS_AS((void)SocketAddress::unix_abstract(std::string(108, 'x')), std::invalid_argument);
    CHECK_THROWS_WITH_AS((void)SocketAddress::from_string("example.com:80"), doctest::Contains("'example.com:80'"),
                         std::invalid_argument);
}

TEST_CASE("parse reads back what to_string writes") {
    for (const char* text :
         {"127.0.0.1:80", "0.0.0.0:0", "[::1]:65535", "[fe80::1%3]:22", "unix:/tmp/x.sock", "unix:@name"}) {
        CAPTURE(text);
        const auto address = SocketAddress::parse(text);
        REQUIRE(address.has_value());
        CHECK(address->to_string() == text);
    }
    for (const char* text : {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:8x", "[::1]",
                             "::1:80", "[::1]:", "localhost:80", "unix:", "tcp://1.2.3.4:5"}) {
        CAPTURE(text);
        CHECK_FALSE(SocketAddress::parse(text).has_value());
    }
}

TEST_CASE("addresses compare by what they name and hash alike when equal") {
    CHECK(SocketAddress::ipv4("127.0.0.1", 1) == SocketAddress::from_string("127.0.0.1:1"));
    CHECK(SocketAddress::ipv4("127.0.0.1", 1) != SocketAddress::ipv4("127.0.0.1", 2));
    CHECK(SocketAddress::ipv4("127.0.0.1", 1) != SocketAddress::ipv6("::ffff:127.0.0.1", 1));
    CHECK(SocketAddress::ipv6("fe80::1%1", 1) != SocketAddress::ipv6("fe80::1%2", 1));
    CHECK(SocketAddress{} == SocketAddress{});
    CHECK(SocketAddress{}.family() == AF_UNSPEC);
    CHECK(SocketAddress{}.to_string() == "<unspecified>");

    // A kernel-made address, with or without the path's NUL counted, is the same.
    sockaddr_un raw{};
    raw.sun_family = AF_UNIX;
    std::memcpy(raw.sun_path, "/tmp/s", 6);
    const SocketAddress without_nul{reinterpret_cast<const sockaddr*>(&raw),
                                    static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 6)};
    CHECK(without_nul == SocketAddress::unix_path("/tmp/s"));

    std::unordered_set<SocketAddress> set{SocketAddress::ipv4("127.0.0.1", 1),
                                          SocketAddress::from_string("127.0.0.1:1"), SocketAddress::ipv6("::1", 1),
                                          without_nul, SocketAddress::unix_path("/tmp/s")};
    CHECK(set.size() == 3);
}

TEST_CASE("with_port changes the port of an IP address only") {
    CHECK(SocketAddress::ipv4("127.0.0.1", 1).with_port(99).to_string() == "127.0.0.1:99");
    CHECK(SocketAddress::ipv6("::1", 1).with_port(99).to_string() == "[::1]:99");
    CHECK(SocketAddress::unix_path("/a").with_port(99) == SocketAddress::unix_path("/a"));
}

TEST_CASE("an unnamed Unix address formats as unnamed") {
    sockaddr_un raw{};
    raw.sun_family = AF_UNIX;
    const SocketAddress unnamed{reinterpret_cast<const sockaddr*>(&raw), sizeof(sa_family_t)};
    CHECK(unnamed.is_unix());
    CHECK(unnamed.path().empty());
    CHECK(unnamed.to_string() == "unix:<unnamed>");
    CHECK_THROWS_AS((SocketAddress{reinterpret_cast<const sockaddr*>(&raw), SocketAddress::capacity() + 1}),
                    std::invalid_argument);
}

TEST_CASE("ip() makes an address of a numeric IPv4 or IPv6 host and a port, and nothing else") {
    const auto v4 = SocketAddress::ip("127.0.0.1", 8080);
    REQUIRE(v4.has_value());
    CHECK(v4->is_ipv4());
    CHECK(v4->to_string() == "127.0.0.1:8080");
    const auto v6 = SocketAddress::ip("::1", 0);
    REQUIRE(v6.has_value());
    CHECK(v6->is_ipv6());
    CHECK(v6->to_string() == "[::1]:0");
    for (const char* refused : {"localhost", "", "unix", "[::1]", "1.2.3.4:5", "1.2.3.256", "::g"}) {
        CAPTURE(refused);
        CHECK_FALSE(SocketAddress::ip(refused, 80).has_value());
    }
}
