// libFuzzer harness for muxio-http's request parser (apps/http/
// request_parser.*) and, for each request it produces, the handler's path
// resolution against a small directory tree.
//
// The input is a byte stream as a client would send it. It is parsed the
// way the server does (take each request, feed the rest, carry what is left
// to the next read), checking each step: feed() consumes no more than it is
// given; it consumes everything unless a request completed or parsing
// failed; after an error it consumes nothing; a request's fields keep the
// parser's promises (tokens, visible targets, limits, no smuggling pair of
// Content-Length and Transfer-Encoding). Then the same bytes are parsed
// again in other slicings: one byte at a time, cut around every CR and LF,
// and at places drawn from the input's hash. The requests, the error and
// whether a request is under way at the end must be the same every time:
// RequestParser promises that what comes out never depends on how the
// bytes are split, with no exception (a head over the limit with a bad line
// in it fails the same whole or in pieces).
//
// Small limits, so that inputs of a few hundred bytes reach every one.

#include <unistd.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "fuzz_check.hpp"
#include "handler.hpp"
#include "request_parser.hpp"

namespace {

using muxio::http::Handler;
using muxio::http::ParseError;
using muxio::http::ParserLimits;
using muxio::http::Request;
using muxio::http::RequestParser;
using muxio::http::Response;

constexpr ParserLimits limits() {
    ParserLimits small;
    small.max_header_bytes = 512;
    small.max_target_bytes = 128;
    small.max_header_count = 12;
    small.max_body_bytes = 2048;
    return small;
}

// Byte-at-a-time parsing is quadratic in nothing, but slow per byte: only
// for inputs up to this size.
constexpr std::size_t byte_split_limit = 4096;
// Requests per input handed to the handler (each costs a few system calls).
constexpr std::size_t handled_limit = 8;

bool is_token_char(char c) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z')) {
        return true;
    }
    return std::string_view{"!#$%&'*+-.^_`|~"}.find(c) != std::string_view::npos;
}

bool is_token(std::string_view text) {
    if (text.empty()) {
        return false;
    }
    for (const char c : text) {
        if (!is_token_char(c)) {
            return false;
        }
    }
    return true;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) {
        return false;
    }
    for (std::size_t i = 0; i < a.size(); ++i) {
        const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
        if (lower(a[i]) != lower(b[i])) {
            return false;
        }
    }
    return true;
}

void check_request(const Request& request, const ParserLimits& limits) {
    MUXIO_FUZZ_CHECK(is_token(request.method));
    MUXIO_FUZZ_CHECK(!request.target.empty());
    MUXIO_FUZZ_CHECK(request.target.size() <= limits.max_target_bytes);
    for (const char c : request.target) {
        MUXIO_FUZZ_CHECK(c > ' ' && c < '\x7f');
    }
    MUXIO_FUZZ_CHECK(request.version_major >= 0 && request.version_major <= 9);
    MUXIO_FUZZ_CHECK(request.version_minor >= 0 && request.version_minor <= 9);
    MUXIO_FUZZ_CHECK(request.headers.size() <= limits.max_header_count);
    // The shortest head these fields fit in: "M T HTTP/x.y\n", a
    // "name:value\n" per field and the final "\n".
    std::size_t head_bytes = request.method.size() + request.target.size() + 11 + 1;
    // A CONNECT has no content (RFC 9110 9.3.6): its framing fields are not
    // read, and the server closes the connection after answering it.
    const bool connect = request.method == "CONNECT";
    std::optional<std::string_view> content_length;
    for (const auto& [name, value] : request.headers) {
        MUXIO_FUZZ_CHECK(is_token(name));
        MUXIO_FUZZ_CHECK(value.empty() || (value.front() != ' ' && value.front() != '\t'));
        MUXIO_FUZZ_CHECK(value.empty() || (value.back() != ' ' && value.back() != '\t'));
        for (const char c : value) {
            const auto u = static_cast<unsigned char>(c);
            MUXIO_FUZZ_CHECK(u == '\t' || (u >= 0x20 && u != 0x7f));
        }
        head_bytes += name.size() + 1 + value.size() + 1;  // at least "name:value\n"
        if (iequals(name, "Content-Length")) {
            // Repeated, they all say the same, in digits.
            MUXIO_FUZZ_CHECK(!content_length || *content_length == value);
            content_length = value;
            MUXIO_FUZZ_CHECK(connect || (!value.empty() && value.find_first_not_of("0123456789") == std::string::npos));
        }
    }
    MUXIO_FUZZ_CHECK(head_bytes <= limits.max_header_bytes);
    // No request that could be framed two ways gets through.
    MUXIO_FUZZ_CHECK(connect || !content_length || request.header_count("Transfer-Encoding") == 0);
    if (connect) {
        MUXIO_FUZZ_CHECK(request.upgrade);
    }
    if (request.header_count("Connection") == 1 && iequals(*request.header("Connection"), "close")) {
        MUXIO_FUZZ_CHECK(!request.keep_alive);
    }
    if (request.version_major == 0 || (request.version_major == 1 && request.version_minor == 0)) {
        MUXIO_FUZZ_CHECK(!request.keep_alive || request.header_count("Connection") > 0);
    }
}

// What a parser made of a stream, for comparing slicings.
struct Outcome {
    std::vector<Request> requests;
    std::optional<ParseError> error;
    bool in_request = false;  // at the end, when no error
};

bool same_request(const Request& a, const Request& b) {
    return a.method == b.method && a.target == b.target && a.version_major == b.version_major &&
           a.version_minor == b.version_minor && a.headers == b.headers && a.keep_alive == b.keep_alive &&
           a.upgrade == b.upgrade;
}

bool same_outcome(const Outcome& a, const Outcome& b) {
    if (a.requests.size() != b.requests.size() || a.error.has_value() != b.error.has_value() ||
        a.in_request != b.in_request) {
        return false;
    }
    for (std::size_t i = 0; i < a.requests.size(); ++i) {
        if (!same_request(a.requests[i], b.requests[i])) {
            return false;
        }
    }
    return !a.error || (a.error->status == b.error->status && a.error->reason == b.error->reason);
}

// Feeds `input` in the pieces that `cuts` (increasing offsets) delimits, as
// the server does, checking every step.
Outcome parse(std::string_view input, const std::vector<std::size_t>& cuts) {
    const ParserLimits limits = ::limits();
    RequestParser parser{limits};
    Outcome outcome;
    std::string pending;
    std::size_t start = 0;
    std::size_t fed = 0;  // bytes of `input` appended to `pending` so far
    std::size_t consumed_total = 0;
    for (std::size_t piece = 0; piece <= cuts.size(); ++piece) {
        const std::size_t end = piece < cuts.size() ? cuts[piece] : input.size();
        MUXIO_FUZZ_CHECK(end >= start && end <= input.size());
        pending.append(input.substr(start, end - start));
        fed += end - start;
        start = end;
        std::size_t used = 0;
        while (used < pending.size()) {
            const std::string_view rest = std::string_view{pending}.substr(used);
            const std::size_t consumed = parser.feed(rest);
            MUXIO_FUZZ_CHECK(consumed <= rest.size());
            used += consumed;
            consumed_total += consumed;
            if (parser.has_request()) {
                MUXIO_FUZZ_CHECK(!parser.failed());
                // Nothing more is taken until the request is.
                MUXIO_FUZZ_CHECK(parser.feed(std::string_view{pending}.substr(used)) == 0);
                Request request = parser.take_request();
                check_request(request, limits);
                outcome.requests.push_back(std::move(request));
                continue;
            }
            if (parser.failed()) {
                const ParseError& error = *parser.error();
                MUXIO_FUZZ_CHECK(error.status == 400 || error.status == 413 || error.status == 414 ||
                                 error.status == 431);
                MUXIO_FUZZ_CHECK(!error.reason.empty());
                MUXIO_FUZZ_CHECK(parser.feed(std::string_view{pending}.substr(used)) == 0);
                MUXIO_FUZZ_CHECK(parser.feed("GET / HTTP/1.1\r\n\r\n") == 0);
                MUXIO_FUZZ_CHECK(!parser.has_request());
                outcome.error = error;
                MUXIO_FUZZ_CHECK(consumed_total <= fed);
                return outcome;
            }
            // Neither: the parser needs more, and kept all it was given.
            MUXIO_FUZZ_CHECK(consumed == rest.size());
            MUXIO_FUZZ_CHECK(!parser.expects_continue() || parser.in_request());
        }
        pending.erase(0, used);
    }
    MUXIO_FUZZ_CHECK(consumed_total == fed && fed == input.size());
    outcome.in_request = parser.in_request();
    return outcome;
}

std::uint64_t fnv1a(std::string_view bytes) {
    std::uint64_t hash = 14695981039346656037ULL;
    for (const char c : bytes) {
        hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
    }
    return hash;
}

// The slicings besides the whole input: cut positions in increasing order.
std::vector<std::vector<std::size_t>> slicings(std::string_view input) {
    std::vector<std::vector<std::size_t>> all;
    if (input.size() < 2) {
        return all;
    }
    if (input.size() <= byte_split_limit) {
        std::vector<std::size_t> bytes;
        for (std::size_t at = 1; at < input.size(); ++at) {
            bytes.push_back(at);
        }
        all.push_back(std::move(bytes));
    }
    // Just before and just after each CR and LF: where a line, a head or a
    // chunk ends.
    std::vector<std::size_t> before;
    std::vector<std::size_t> after;
    for (std::size_t at = 0; at < input.size(); ++at) {
        if (input[at] == '\r' || input[at] == '\n') {
            if (at > 0 && (before.empty() || before.back() != at)) {
                before.push_back(at);
            }
            if (at + 1 < input.size()) {
                after.push_back(at + 1);
            }
        }
    }
    all.push_back(std::move(before));
    all.push_back(std::move(after));
    // A few cuts at places drawn from the input itself (xorshift on its hash).
    std::uint64_t state = fnv1a(input) | 1U;
    for (int round = 0; round < 2; ++round) {
        std::vector<std::size_t> cuts;
        std::size_t at = 0;
        for (;;) {
            state ^= state << 13U;
            state ^= state >> 7U;
            state ^= state << 17U;
            at += 1 + static_cast<std::size_t>(state % (round == 0 ? 7 : 97));
            if (at >= input.size()) {
                break;
            }
            cuts.push_back(at);
        }
        all.push_back(std::move(cuts));
    }
    return all;
}

// The directory tree the handler serves, made once per process.
class Site {
public:
    Site() {
        std::string pattern = (std::filesystem::temp_directory_path() / "muxio-http-fuzz-XXXXXX").string();
        MUXIO_FUZZ_CHECK(::mkdtemp(pattern.data()) != nullptr);
        path_ = pattern;
        write("root/index.html", index_content);
        write("root/dir/inner.txt", inner_content);
        write("outside.txt", "secret\n");
        std::error_code ignored;
        std::filesystem::create_symlink(path_ / "outside.txt", path_ / "root" / "link", ignored);
        std::filesystem::create_symlink("index.html", path_ / "root" / "alias.html", ignored);
        handler_.emplace((path_ / "root").string());
    }
    ~Site() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    Site(const Site&) = delete;
    Site& operator=(const Site&) = delete;

    [[nodiscard]] const Handler& handler() const { return *handler_; }

    static constexpr std::string_view index_content = "<p>index</p>\n";
    static constexpr std::string_view inner_content = "inner\n";

private:
    void write(const std::string& relative, std::string_view content) const {
        const std::filesystem::path file = path_ / relative;
        std::filesystem::create_directories(file.parent_path());
        std::ofstream out{file, std::ios::binary};
        out.write(content.data(), static_cast<std::streamsize>(content.size()));
    }

    std::filesystem::path path_;
    std::optional<Handler> handler_;
};

std::string read_all(int fd) {
    std::string content;
    std::array<char, 256> buffer{};
    off_t offset = 0;
    for (;;) {
        const ssize_t got = ::pread(fd, buffer.data(), buffer.size(), offset);
        if (got <= 0) {
            return content;
        }
        content.append(buffer.data(), static_cast<std::size_t>(got));
        offset += got;
    }
}

// The path of an origin-form target, percent-decoded; nullopt if it is not
// one or does not decode.
std::optional<std::string> decoded_origin_path(std::string_view target) {
    if (target.empty() || target.front() != '/') {
        return std::nullopt;
    }
    return muxio::http::percent_decode(target.substr(0, target.find_first_of("?#")));
}

void check_response(const Request& request, const Response& response) {
    const int status = response.status;
    MUXIO_FUZZ_CHECK(status == 200 || status == 400 || status == 403 || status == 404 || status == 405 ||
                     status == 505);
    if (response.file) {
        MUXIO_FUZZ_CHECK(status == 200 && response.send_body && request.method == "GET");
        // Only the two files inside the root can ever be opened.
        const std::string content = read_all(response.file.get());
        MUXIO_FUZZ_CHECK(content == Site::index_content || content == Site::inner_content);
        MUXIO_FUZZ_CHECK(response.content_length == content.size());
        // And never through a path that names a directory.
        if (const std::optional<std::string> path = decoded_origin_path(request.target)) {
            MUXIO_FUZZ_CHECK(!path->ends_with('/') && !path->ends_with("/."));
        }
    } else if (response.send_body) {
        MUXIO_FUZZ_CHECK(response.content_length == response.body.size());
    } else {
        MUXIO_FUZZ_CHECK(request.method == "HEAD" && response.body.empty());
    }
    std::string head;
    muxio::http::append_head(head, response, {"Thu, 01 Jan 1970 00:00:00 GMT", request.keep_alive, false});
    MUXIO_FUZZ_CHECK(head.starts_with("HTTP/1.1 ") && head.ends_with("\r\n\r\n"));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const Site site;
    const std::string_view input =
        size == 0 ? std::string_view{} : std::string_view{reinterpret_cast<const char*>(data), size};
    const Outcome whole = parse(input, {});
    for (const std::vector<std::size_t>& cuts : slicings(input)) {
        const Outcome sliced = parse(input, cuts);
        MUXIO_FUZZ_CHECK(same_outcome(whole, sliced));
    }
    for (std::size_t i = 0; i < whole.requests.size() && i < handled_limit; ++i) {
        check_response(whole.requests[i], site.handler().handle(whole.requests[i]));
    }
    return 0;
}
