// Random and mutated requests through the parser and the handler, with a
// fixed seed: nothing may crash, hang or answer with an unexpected status.

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "handler.hpp"
#include "http_test_support.hpp"
#include "request_parser.hpp"
#include "support/support.hpp"

using muxio::http::Handler;
using muxio::http::ParserLimits;
using muxio::http::RequestParser;
using muxio::http::Response;
using muxio::http::test::parse_pieces;
using muxio::http::test::Parsed;
using muxio::http::test::TempDir;

namespace {

constexpr std::uint32_t seed = 20240611;
constexpr int rounds = 3000;

const std::array<std::string_view, 10> seeds{
    "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "HEAD /file.txt HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "GET /dir/../file.txt HTTP/1.0\r\n\r\n",
    "GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody",
    "PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "GET http://a/file.txt?x=%41 HTTP/1.1\r\nHost: a\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /link HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "GET /dir HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
};

// Bytes that matter to HTTP syntax, more often than chance would pick them.
constexpr std::string_view interesting = "\r\n :/%.?#\0\t\x7f\xff";

std::string mutate(std::string input, std::mt19937& random) {
    std::uniform_int_distribution<int> operations{0, 6};
    const int count = std::uniform_int_distribution<int>{1, 4}(random);
    for (int i = 0; i < count; ++i) {
        const std::size_t size = input.size();
        const std::size_t at = size == 0 ? 0 : std::uniform_int_distribution<std::size_t>{0, size - 1}(random);
        const auto any_byte = static_cast<char>(std::uniform_int_distribution<int>{0, 255}(random));
        const char special = interesting[std::uniform_int_distribution<std::size_t>{0, interesting.size() - 1}(random)];
        switch (operations(random)) {
            case 0:  // flip a byte
                if (size > 0) {
                    input[at] = any_byte;
                }
                break;
            case 1:  // insert a syntax byte
                input.insert(input.begin() + static_cast<std::ptrdiff_t>(at), special);
                break;
            case 2:  // delete a run
                if (size > 0) {
                    input.erase(at, std::uniform_int_distribution<std::size_t>{1, 8}(random));
                }
                break;
            case 3:  // duplicate a run
                if (size > 0) {
                    input.insert(at, input.substr(at, std::uniform_int_distribution<std::size_t>{1, 32}(random)));
                }
                break;
            case 4:  // truncate
                input.resize(at);
                break;
            case 5:  // a long run of one byte (pushes at the limits)
                input.insert(at, std::uniform_int_distribution<std::size_t>{1, 3000}(random), special);
                break;
            default:  // splice in another seed
                input.insert(at, seeds[std::uniform_int_distribution<std::size_t>{0, seeds.size() - 1}(random)]);
                break;
        }
    }
    return input;
}

std::string random_bytes(std::mt19937& random) {
    std::string bytes(std::uniform_int_distribution<std::size_t>{0, 200}(random), '\0');
    for (char& c : bytes) {
        c = static_cast<char>(std::uniform_int_distribution<int>{0, 255}(random));
    }
    return bytes;
}

std::vector<std::size_t> random_cuts(std::size_t size, std::mt19937& random) {
    std::vector<std::size_t> cuts;
    if (size < 2) {
        return cuts;
    }
    const std::size_t count = std::uniform_int_distribution<std::size_t>{0, 6}(random);
    for (std::size_t i = 0; i < count; ++i) {
        cuts.push_back(std::uniform_int_distribution<std::size_t>{1, size - 1}(random));
    }
    std::sort(cuts.begin(), cuts.end());
    return cuts;
}

}  // namespace

TEST_CASE("random and mutated requests never crash and get a sane status") {
    muxio::test::FdLeakCheck leak_check;
    TempDir dir;
    dir.write("root/file.txt", "content\n");
    dir.write("root/dir/inner.txt", "inner\n");
    dir.write("outside.txt", "secret\n");
    std::filesystem::create_symlink(dir.path() / "outside.txt", dir.path() / "root" / "link");
    const Handler handler{(dir.path() / "root").string()};

    const std::set<int> request_statuses{200, 400, 403, 404, 405, 505};
    const std::set<int> parse_statuses{400, 413, 414, 431};
    ParserLimits limits;
    limits.max_header_bytes = 2048;
    limits.max_target_bytes = 1024;
    limits.max_body_bytes = 4096;

    std::mt19937 random{seed};  // NOLINT(cert-msc32-c,cert-msc51-cpp): reproducible on purpose
    std::size_t requests = 0;
    std::size_t errors = 0;
    std::size_t files = 0;
    for (int round = 0; round < rounds; ++round) {
        const std::string input =
            round % 10 == 0 ? random_bytes(random)
                            : mutate(std::string{seeds[static_cast<std::size_t>(round) % seeds.size()]}, random);
        RequestParser parser{limits};
        const Parsed parsed = parse_pieces(parser, input, random_cuts(input.size(), random));
        for (const auto& request : parsed.requests) {
            ++requests;
            const Response response = handler.handle(request);
            CAPTURE(input);
            CAPTURE(request.target);
            REQUIRE(request_statuses.count(response.status) == 1);
            if (response.file) {
                ++files;
                // Only the two files inside the root can ever be opened.
                const std::string content = muxio::http::test::read_fd(response.file.get());
                REQUIRE((content == "content\n" || content == "inner\n"));
                REQUIRE(response.content_length == content.size());
            } else if (response.send_body) {
                REQUIRE(response.content_length == response.body.size());
            }
            std::string head;
            muxio::http::append_head(head, response, {"D", request.keep_alive, false});
            REQUIRE(head.ends_with("\r\n\r\n"));
        }
        if (parsed.error) {
            ++errors;
            CAPTURE(input);
            REQUIRE(parse_statuses.count(parsed.error->status) == 1);
        }
    }
    MESSAGE("fuzz: " << rounds << " inputs, " << requests << " requests, " << files << " files served, " << errors
                     << " parse errors");
    CHECK(requests > 0);
    CHECK(errors > 0);
}
