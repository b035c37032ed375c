// RequestParser: muxio-http's incremental HTTP/1.1 parser, one request at a time.

#include <doctest/doctest.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "http_test_support.hpp"
#include "request_parser.hpp"
#include "support/support.hpp"

using muxio::http::ParserLimits;
using muxio::http::Request;
using muxio::http::RequestParser;
using muxio::http::test::parse;
using muxio::http::test::parse_pieces;
using muxio::http::test::Parsed;

namespace {

constexpr std::string_view simple_get =
    "GET /dir/file.txt?x=1 HTTP/1.1\r\n"
    "Host: example.test\r\n"
    "User-Agent: doctest\r\n"
    "Accept:   */*  \r\n"
    "\r\n";

void check_simple_get(const Request& request) {
    CHECK(request.method == "GET");
    CHECK(request.target == "/dir/file.txt?x=1");
    CHECK(request.version_major == 1);
    CHECK(request.version_minor == 1);
    CHECK(request.keep_alive);
    CHECK_FALSE(request.upgrade);
    REQUIRE(request.headers.size() == 3);
    CHECK(request.headers[0].first == "Host");
    CHECK(request.headers[0].second == "example.test");
    CHECK(request.header("user-agent") == "doctest");
    CHECK(request.header("ACCEPT") == "*/*");  // whitespace around a value is not part of it
    CHECK_FALSE(request.header("Cookie").has_value());
}

std::string repeat(std::string_view text, std::size_t times) {
    std::string out;
    for (std::size_t i = 0; i < times; ++i) {
        out += text;
    }
    return out;
}

}  // namespace

TEST_CASE("a GET parses into method, target, version and headers") {
    muxio::test::FdLeakCheck leak_check;
    const Parsed parsed = parse(simple_get);
    CHECK_FALSE(parsed.error.has_value());
    REQUIRE(parsed.requests.size() == 1);
    check_simple_get(parsed.requests[0]);
}

TEST_CASE("a request split at every byte boundary parses the same") {
    muxio::test::FdLeakCheck leak_check;
    for (std::size_t cut = 0; cut <= simple_get.size(); ++cut) {
        CAPTURE(cut);
        const Parsed parsed = parse(simple_get, {cut});
        CHECK_FALSE(parsed.error.has_value());
        REQUIRE(parsed.requests.size() == 1);
        check_simple_get(parsed.requests[0]);
    }
}

TEST_CASE("a request fed one byte at a time parses the same") {
    muxio::test::FdLeakCheck leak_check;
    std::vector<std::size_t> cuts;
    for (std::size_t i = 1; i < simple_get.size(); ++i) {
        cuts.push_back(i);
    }
    const Parsed parsed = parse(simple_get, cuts);
    CHECK_FALSE(parsed.error.has_value());
    REQUIRE(parsed.requests.size() == 1);
    check_simple_get(parsed.requests[0]);
}

TEST_CASE("pipelined requests in one read come out one at a time, in order") {
    muxio::test::FdLeakCheck leak_check;
    const std::string input =
        "GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
        "HEAD /two HTTP/1.1\r\nHost: a\r\n\r\n"
        "POST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        "GET /four HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

    RequestParser parser;
    // The first feed stops at the end of the first request's head or of the
    // request itself, and nothing more is consumed until it is taken.
    std::size_t used = parser.feed(input);
    if (!parser.has_request()) {
        used += parser.feed(std::string_view{input}.substr(used));
    }
    REQUIRE(parser.has_request());
    CHECK(used == std::string_view{"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"}.size());
    CHECK(parser.feed(std::string_view{input}.substr(used)) == 0);
    CHECK(parser.take_request().target == "/one");

    for (std::size_t cut = 0; cut <= input.size(); cut += 7) {
        CAPTURE(cut);
        const Parsed parsed = parse(input, {cut});
        CHECK_FALSE(parsed.error.has_value());
        REQUIRE(parsed.requests.size() == 4);
        CHECK(parsed.requests[0].method == "GET");
        CHECK(parsed.requests[0].target == "/one");
        CHECK(parsed.requests[1].method == "HEAD");
        CHECK(parsed.requests[1].target == "/two");
        CHECK(parsed.requests[2].method == "POST");
        CHECK(parsed.requests[2].target == "/three");
        CHECK(parsed.requests[3].target == "/four");
        CHECK(parsed.requests[2].keep_alive);
        CHECK_FALSE(parsed.requests[3].keep_alive);
    }
}

TEST_CASE("keep-alive follows the version and the Connection header") {
    muxio::test::FdLeakCheck leak_check;
    struct Case {
        std::string_view input;
        bool keep_alive;
    };
    const std::vector<Case> cases{
        {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n", false},
        {"GET / HTTP/1.0\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
        // RFC 9112 6.1: HTTP/1.0 framing by Transfer-Encoding is suspect; close after it.
        {"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
    };
    for (const Case& item : cases) {
        CAPTURE(item.input);
        const Parsed parsed = parse(item.input);
        REQUIRE(parsed.requests.size() == 1);
        CHECK(parsed.requests[0].keep_alive == item.keep_alive);
    }
}

TEST_CASE("a body is read and dropped, and the next request follows it") {
    muxio::test::FdLeakCheck leak_check;
    const std::string input =
        "PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n0\r\n\r\n"
        "GET /y HTTP/1.1\r\nHost: a\r\n\r\n";
    const Parsed parsed = parse(input, {3, 40, 70, 75});
    CHECK_FALSE(parsed.error.has_value());
    REQUIRE(parsed.requests.size() == 2);
    CHECK(parsed.requests[0].method == "PUT");
    CHECK(parsed.requests[1].target == "/y");
}

TEST_CASE("a head with Expect: 100-continue and a body to come asks for 100 Continue") {
    muxio::test::FdLeakCheck leak_check;
    const auto expects_after_head = [](std::string_view head) {
        RequestParser parser;
        CHECK(parser.feed(head) == head.size());
        return parser.expects_continue();
    };
    const std::string head = "POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n";
    CHECK(expects_after_head(head));
    CHECK(expects_after_head("PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"));
    // No body announced, an HTTP/1.0 client (which never waits), another
    // expectation, or none: nothing to invite.
    CHECK_FALSE(expects_after_head("POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"));
    CHECK_FALSE(expects_after_head("POST /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"));
    CHECK_FALSE(expects_after_head("POST /x HTTP/1.1\r\nExpect: something\r\nContent-Length: 5\r\n\r\n"));
    CHECK_FALSE(expects_after_head("POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n"));
    // A body over the limit fails at the head: the final answer (413) is due
    // instead.
    ParserLimits small_bodies;
    small_bodies.max_body_bytes = 4;
    RequestParser limited{small_bodies};
    (void)limited.feed(head);
    CHECK(limited.failed());
    CHECK_FALSE(limited.expects_continue());

    SUBCASE("until the server has answered it") {
        RequestParser parser;
        CHECK(parser.feed(head) == head.size());
        REQUIRE(parser.expects_continue());
        parser.continue_sent();
        CHECK_FALSE(parser.expects_continue());
        CHECK(parser.feed("hello") == 5);
        REQUIRE(parser.has_request());
        CHECK(parser.take_request().method == "POST");
        CHECK_FALSE(parser.expects_continue());
    }
    SUBCASE("unless the body came along with the head") {
        RequestParser parser;
        const std::string whole = head + "hello";
        CHECK(parser.feed(whole) == whole.size());
        CHECK(parser.has_request());
        CHECK_FALSE(parser.expects_continue());
    }
}

TEST_CASE("malformed requests fail with 400") {
    muxio::test::FdLeakCheck leak_check;
    const std::vector<std::string_view> inputs{
        "GARBAGE\r\n\r\n",
        "GET\r\n\r\n",
        "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        "GET / HTTP/1.1\r\nBad\x01Name: x\r\n\r\n",
        "GET / FTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "GET /a b HTTP/1.1\r\n\r\n",
        std::string_view{"GET /\0 HTTP/1.1\r\n\r\n", 19},
    };
    for (const std::string_view input : inputs) {
        CAPTURE(input);
        const Parsed parsed = parse(input);
        CHECK(parsed.requests.empty());
        REQUIRE(parsed.error.has_value());
        CHECK(parsed.error->status == 400);
        CHECK_FALSE(parsed.error->reason.empty());
    }
}

TEST_CASE("after an error the parser consumes nothing more") {
    muxio::test::FdLeakCheck leak_check;
    RequestParser parser;
    parser.feed("BAD REQUEST LINE\r\n\r\n");
    REQUIRE(parser.failed());
    CHECK(parser.feed("GET / HTTP/1.1\r\nHost: a\r\n\r\n") == 0);
    CHECK_FALSE(parser.has_request());
}

TEST_CASE("a head over the size limit fails with 431, however it is sliced") {
    muxio::test::FdLeakCheck leak_check;
    ParserLimits limits;
    limits.max_header_bytes = 1024;
    // Many small headers, one big one, and one big one sent in one piece.
    const std::string many = "GET / HTTP/1.1\r\nHost: a\r\n" + repeat("X-Filler: 0123456789\r\n", 60) + "\r\n";
    const std::string big = "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(2000, 'v') + "\r\n\r\n";
    for (const std::string& input : {many, big}) {
        for (const std::size_t step : {std::size_t{1}, std::size_t{13}, input.size()}) {
            CAPTURE(step);
            std::vector<std::size_t> cuts;
            for (std::size_t at = step; at < input.size(); at += step) {
                cuts.push_back(at);
            }
            RequestParser parser{limits};
            const Parsed parsed = parse_pieces(parser, input, cuts);
            CHECK(parsed.requests.empty());
            REQUIRE(parsed.error.has_value());
            CHECK(parsed.error->status == 431);
        }
    }
}

TEST_CASE("a head just under the limit parses, and the limit applies per request") {
    muxio::test::FdLeakCheck leak_check;
    ParserLimits limits;
    limits.max_header_bytes = 1024;
    const std::string one = "GET / HTTP/1.1\r\nHost: a\r\n" + repeat("X-Filler: 0123456789\r\n", 40) + "\r\n";
    REQUIRE(one.size() < 1024);
    RequestParser parser{limits};
    const Parsed parsed = parse_pieces(parser, one + one + one + one);
    CHECK_FALSE(parsed.error.has_value());
    CHECK(parsed.requests.size() == 4);
}

TEST_CASE("endless blank lines before a request count against the head limit") {
    muxio::test::FdLeakCheck leak_check;
    ParserLimits limits;
    limits.max_header_bytes = 256;
    RequestParser parser{limits};
    const Parsed parsed = parse_pieces(parser, repeat("\r\n", 1000));
    REQUIRE(parsed.error.has_value());
    CHECK(parsed.error->status == 431);
}

TEST_CASE("too many header fields fail with 431") {
    muxio::test::FdLeakCheck leak_check;
    ParserLimits limits;
    limits.max_header_count = 10;
    RequestParser parser{limits};
    const Parsed parsed = parse_pieces(parser, "GET / HTTP/1.1\r\n" + repeat("A: b\r\n", 11) + "\r\n");
    REQUIRE(parsed.error.has_value());
    CHECK(parsed.error->status == 431);
}

TEST_CASE("a target over its limit fails with 414") {
    muxio::test::FdLeakCheck leak_check;
    ParserLimits limits;
    limits.max_target_bytes = 100;
    RequestParser parser{limits};
    const Parsed parsed = parse_pieces(parser, "GET /" + std::string(200, 'a') + " HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(parsed.error.has_value());
    CHECK(parsed.error->status == 414);
}

TEST_CASE("a body over its limit fails with 413") {
    muxio::test::FdLeakCheck leak_check;
    ParserLimits limits;
    limits.max_body_bytes = 10;
    RequestParser parser{limits};
    const Parsed parsed =
        parse_pieces(parser, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n" + std::string(11, 'b'));
    REQUIRE(parsed.error.has_value());
    CHECK(parsed.error->status == 413);
}

TEST_CASE("other versions, CONNECT and upgrades parse for the handler to judge") {
    muxio::test::FdLeakCheck leak_check;
    Parsed parsed = parse("GET / HTTP/2.0\r\nHost: a\r\n\r\n");
    REQUIRE(parsed.requests.size() == 1);
    CHECK(parsed.requests[0].version_major == 2);

    parsed = parse("CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n");
    REQUIRE(parsed.requests.size() == 1);
    CHECK(parsed.requests[0].method == "CONNECT");
    CHECK(parsed.requests[0].upgrade);

    parsed = parse(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        "GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(parsed.requests.size() == 2);
    CHECK(parsed.requests[0].upgrade);
    CHECK(parsed.requests[1].target == "/next");
}

TEST_CASE("in_request tells a connection between requests from one mid-request") {
    muxio::test::FdLeakCheck leak_check;
    RequestParser parser;
    CHECK_FALSE(parser.in_request());
    CHECK(parser.feed("GET / HT") == 8);
    CHECK(parser.in_request());
    std::size_t used = 0;
    const std::string_view rest = "TP/1.1\r\nHost: a\r\n\r\n";
    while (!parser.has_request() && used < rest.size()) {
        used += parser.feed(rest.substr(used));
    }
    REQUIRE(parser.has_request());
    (void)parser.take_request();
    CHECK_FALSE(parser.in_request());
}

TEST_CASE("a request read in place and finished leaves nothing behind in the next one") {
    // The server reads each request where the parser keeps it and reuses its
    // storage; every field of the next request must be its own.
    RequestParser parser;
    const std::string first =
        "HEAD /first/with/a/long/target?query=1 HTTP/1.0\r\n"
        "Host: one\r\nX-A: 1\r\nX-B: 2\r\nConnection: keep-alive\r\n\r\n";
    CHECK(parser.feed(first) == first.size());
    REQUIRE(parser.has_request());
    CHECK(parser.current_request().method == "HEAD");
    CHECK(parser.current_request().version_minor == 0);
    CHECK(parser.current_request().headers.size() == 4);
    parser.finish_request();
    CHECK_FALSE(parser.has_request());

    const std::string second = "GET /two HTTP/1.1\r\nHost: two\r\n\r\n";
    CHECK(parser.feed(second) == second.size());
    REQUIRE(parser.has_request());
    const Request& request = parser.current_request();
    CHECK(request.method == "GET");
    CHECK(request.target == "/two");
    CHECK(request.version_major == 1);
    CHECK(request.version_minor == 1);
    REQUIRE(request.headers.size() == 1);
    CHECK(request.headers[0].first == "Host");
    CHECK(request.headers[0].second == "two");
    CHECK(request.keep_alive);
    CHECK_FALSE(request.upgrade);
    parser.finish_request();
}

TEST_CASE("field names are tokens of ASCII letters, digits and specials, matched without regard to case") {
    muxio::test::FdLeakCheck leak_check;
    const Parsed good = parse("GET / HTTP/1.1\r\nhOsT: a\r\nX-!#$%&'*+-.^_`|~09az: b\r\n\r\n");
    REQUIRE_FALSE(good.error.has_value());
    REQUIRE(good.requests.size() == 1);
    const Request& request = good.requests[0];
    CHECK(request.header("HOST") == "a");
    CHECK(request.header_count("host") == 1);
    CHECK(request.header("x-!#$%&'*+-.^_`|~09AZ") == "b");
    CHECK_FALSE(request.header("Hos").has_value());
    CHECK_FALSE(request.header("Hostt").has_value());
    // A byte outside ASCII is no token character, in any locale.
    const Parsed bad = parse("GET / HTTP/1.1\r\nHost\xe9: a\r\n\r\n");
    CHECK(bad.requests.empty());
    REQUIRE(bad.error.has_value());
    CHECK(bad.error->status == 400);
}

namespace {

// Every way of cutting `input` in two or three pieces, and one byte at a
// time: the cut lists parse_pieces takes.
std::vector<std::vector<std::size_t>> every_split(std::size_t size) {
    std::vector<std::vector<std::size_t>> splits{{}};
    std::vector<std::size_t> bytes;
    for (std::size_t at = 1; at < size; ++at) {
        splits.push_back({at});
        bytes.push_back(at);
    }
    for (std::size_t at = 1; at + 7 < size; at += 7) {
        splits.push_back({at, at + 5});
    }
    splits.push_back(bytes);
    return splits;
}

}  // namespace

TEST_CASE("a malformed line fails as soon as it is complete, however the head is sliced") {
    muxio::test::FdLeakCheck leak_check;
    // No blank line ends these heads: the error must not wait for one.
    const std::vector<std::string_view> inputs{
        "GARBAGE\r\n",
        "GET / HTTP/1.1\r\nNo colon here\r\n",
        "GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n",
        "\r\n\r\nGET /a b HTTP/1.1\r\n",
    };
    for (const std::string_view input : inputs) {
        for (const std::vector<std::size_t>& cuts : every_split(input.size())) {
            CAPTURE(input);
            CAPTURE(cuts.size());
            const Parsed parsed = parse(input, cuts);
            CHECK(parsed.requests.empty());
            REQUIRE(parsed.error.has_value());
            CHECK(parsed.error->status == 400);
        }
    }
}

TEST_CASE("a head over the limit fails the same whether it arrives whole or in pieces") {
    muxio::test::FdLeakCheck leak_check;
    ParserLimits limits;
    limits.max_header_bytes = 256;
    limits.max_target_bytes = 64;
    const std::string filler = repeat("X-Filler: 0123456789\r\n", 20);  // 440 bytes
    struct Case {
        std::string input;
        int status;
    };
    const std::vector<Case> cases{
        // A bad line within the limit: 400 wherever the head ends.
        {"GET / HTTP/1.1\r\nbad line\r\n" + filler + "\r\n", 400},
        // A bad line past the limit: the limit comes first.
        {"GET / HTTP/1.1\r\n" + filler + "bad line\r\n\r\n", 431},
        // A line that ends past the limit, bad or not.
        {"GET / HTTP/1.1\r\nX-Long: " + std::string(300, 'v') + "\x01\r\n\r\n", 431},
        // A request line over the limit: its target is too long too, but
        // the head's limit is what is crossed first.
        {"GET /" + std::string(300, 't') + " HTTP/1.1\r\n\r\n", 431},
        // A target over its own limit in a head within its limit.
        {"GET /" + std::string(100, 't') + " HTTP/1.1\r\n\r\n", 414},
    };
    for (const Case& test : cases) {
        for (const std::vector<std::size_t>& cuts : every_split(test.input.size())) {
            CAPTURE(test.input);
            CAPTURE(cuts.size());
            RequestParser parser{limits};
            const Parsed parsed = parse_pieces(parser, test.input, cuts);
            CHECK(parsed.requests.empty());
            REQUIRE(parsed.error.has_value());
            CHECK(parsed.error->status == test.status);
        }
    }
}
