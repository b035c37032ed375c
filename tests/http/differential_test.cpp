// muxio-http's own request parser against libhttp-parser, the parser it
// replaced: random well-formed requests, pipelined and cut at random places,
// must come out of both the same. Seeded, so a failure reproduces.

#include <doctest/doctest.h>
#include <http_parser.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "http_test_support.hpp"
#include "request_parser.hpp"

using muxio::http::Request;
using muxio::http::RequestParser;
using muxio::http::test::parse_pieces;
using muxio::http::test::Parsed;

namespace {

// What libhttp-parser makes of a stream of requests.
struct Reference {
    std::vector<Request> requests;
    bool failed = false;
    Request current;
    bool in_trailers = false;

    static Reference& of(http_parser* parser) { return *static_cast<Reference*>(parser->data); }

    static Reference parse(std::string_view input) {
        http_parser_settings settings{};
        http_parser_settings_init(&settings);
        settings.on_url = [](http_parser* p, const char* at, std::size_t length) {
            of(p).current.target.append(at, length);
            return 0;
        };
        settings.on_header_field = [](http_parser* p, const char* at, std::size_t length) {
            // One execute() over the whole input: one call per field name.
            // Trailer fields come the same way; muxio-http drops them.
            if (!of(p).in_trailers) {
                of(p).current.headers.emplace_back(std::string{at, length}, std::string{});
            }
            return 0;
        };
        settings.on_header_value = [](http_parser* p, const char* at, std::size_t length) {
            if (!of(p).in_trailers) {
                of(p).current.headers.back().second.append(at, length);
            }
            return 0;
        };
        settings.on_headers_complete = [](http_parser* p) {
            Reference& self = of(p);
            self.current.method = http_method_str(static_cast<http_method>(p->method));
            self.current.version_major = p->http_major;
            self.current.version_minor = p->http_minor;
            self.current.keep_alive = http_should_keep_alive(p) != 0;
            self.current.upgrade = p->upgrade != 0;
            self.in_trailers = true;
            return 0;
        };
        settings.on_message_complete = [](http_parser* p) {
            Reference& self = of(p);
            self.requests.push_back(std::move(self.current));
            self.current = Request{};
            self.in_trailers = false;
            return 0;
        };
        Reference reference;
        http_parser parser{};
        http_parser_init(&parser, HTTP_REQUEST);
        parser.data = &reference;
        const std::size_t used = http_parser_execute(&parser, &settings, input.data(), input.size());
        reference.failed = used != input.size() || parser.http_errno != HPE_OK;
        return reference;
    }
};

std::string pick(std::mt19937& random, const auto& choices) {
    return std::string{choices[std::uniform_int_distribution<std::size_t>{0, choices.size() - 1}(random)]};
}

std::size_t below(std::mt19937& random, std::size_t bound) {
    return std::uniform_int_distribution<std::size_t>{0, bound - 1}(random);
}

std::string random_text(std::mt19937& random, std::string_view alphabet, std::size_t min, std::size_t max) {
    std::string text(min + below(random, max - min + 1), ' ');
    for (char& c : text) {
        c = alphabet[below(random, alphabet.size())];
    }
    return text;
}

constexpr std::string_view name_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~";
constexpr std::string_view value_chars =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.,;:=/\"()<>@[]{}?!#$%&'*+^`|~\t";
constexpr std::string_view path_chars = "abcdefghijklmnopqrstuvwxyz0123456789-_.~/%=&?+:@!$'()*,;";

// One well-formed request, and whether its framing lets more follow.
std::string random_request(std::mt19937& random) {
    constexpr std::array methods{"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"};
    const std::string method = pick(random, methods);
    const bool http10 = below(random, 5) == 0;
    std::string out = method + " /" + random_text(random, path_chars, 0, 40) + (http10 ? " HTTP/1.0" : " HTTP/1.1");
    const std::string_view eol = below(random, 8) == 0 ? "\n" : "\r\n";
    out += eol;
    const std::size_t fields = below(random, 8);
    for (std::size_t i = 0; i < fields; ++i) {
        // Values start and end with a visible byte: libhttp-parser keeps
        // trailing whitespace, which RFC 9110 and muxio-http do not.
        std::string value = random_text(random, value_chars, 0, 30);
        while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) {
            value.pop_back();
        }
        out += "X-" + random_text(random, name_chars, 1, 12) + ":" + std::string(below(random, 3), ' ') + value;
        out += eol;
    }
    constexpr std::array connections{"close", "keep-alive", "Keep-Alive", "CLOSE", "upgrade", "te, close"};
    if (below(random, 3) == 0) {
        out += "Connection: " + pick(random, connections);
        out += eol;
    }
    const std::size_t body_kind = below(random, 3);
    std::string body;
    if (body_kind == 1) {
        body = random_text(random, value_chars, 0, 100);
        out += "Content-Length: " + std::to_string(body.size());
        out += eol;
    } else if (body_kind == 2 && !http10) {
        out += "Transfer-Encoding: chunked";
        out += eol;
        for (std::size_t chunks = below(random, 4); chunks > 0; --chunks) {
            const std::string chunk = random_text(random, value_chars, 1, 40);
            body +=
                fmt::format("{:x}", chunk.size()) + (below(random, 4) == 0 ? ";ext=1" : "") + "\r\n" + chunk + "\r\n";
        }
        body += "0\r\n";
        if (below(random, 4) == 0) {
            body += "X-Trailer: t\r\n";
        }
        body += "\r\n";
    }
    out += eol;
    return out + body;
}

}  // namespace

TEST_CASE("random well-formed requests, pipelined and sliced, parse as libhttp-parser parses them") {
    std::mt19937 random{20261127};  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible on purpose
    constexpr int rounds = 2000;
    std::size_t compared = 0;
    for (int round = 0; round < rounds; ++round) {
        std::string input;
        for (std::size_t count = 1 + below(random, 4); count > 0; --count) {
            input += random_request(random);
        }
        CAPTURE(input);
        const Reference reference = Reference::parse(input);
        REQUIRE_FALSE(reference.failed);
        std::vector<std::size_t> cuts;
        for (std::size_t count = below(random, 6); count > 0 && input.size() > 1; --count) {
            cuts.push_back(1 + below(random, input.size() - 1));
        }
        std::sort(cuts.begin(), cuts.end());
        RequestParser parser;
        const Parsed parsed = parse_pieces(parser, input, cuts);
        REQUIRE_FALSE(parsed.error.has_value());
        REQUIRE(parsed.requests.size() == reference.requests.size());
        for (std::size_t i = 0; i < parsed.requests.size(); ++i) {
            const Request& ours = parsed.requests[i];
            const Request& theirs = reference.requests[i];
            CHECK(ours.method == theirs.method);
            CHECK(ours.target == theirs.target);
            CHECK(ours.version_major == theirs.version_major);
            CHECK(ours.version_minor == theirs.version_minor);
            CHECK(ours.headers == theirs.headers);
            CHECK(ours.keep_alive == theirs.keep_alive);
            CHECK(ours.upgrade == theirs.upgrade);
            ++compared;
        }
    }
    CHECK(compared > static_cast<std::size_t>(rounds));
}
