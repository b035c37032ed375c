#include "request_parser.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <system_error>
#include <utility>

#include <fmt/format.h>

namespace muxio::http {
namespace {

// Field names compare case-insensitively in ASCII (RFC 9110 5.1), whatever
// the C locale says; and without a library call per character.
constexpr char ascii_lower(char c) noexcept {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) noexcept {
    return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                      [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

// RFC 9110 5.6.2: a field name is a token (tchar: ASCII letters, digits and
// these specials); no space before the colon either ("Host : a"), which a
// server must refuse (RFC 9112 5.1).
constexpr std::array<bool, 256> token_chars = [] {
    std::array<bool, 256> table{};
    for (char c = '0'; c <= '9'; ++c) {
        table[static_cast<unsigned char>(c)] = true;
    }
    for (char c = 'a'; c <= 'z'; ++c) {
        table[static_cast<unsigned char>(c)] = true;
        table[static_cast<unsigned char>(c - 'a' + 'A')] = true;
    }
    for (const char c : std::string_view{"!#$%&'*+-.^_`|~"}) {
        table[static_cast<unsigned char>(c)] = true;
    }
    return table;
}();

// RFC 9110 5.5: a field value is visible ASCII, obs-text (bytes from 0x80),
// spaces and tabs; no other control byte, NUL and DEL included.
constexpr std::array<bool, 256> value_chars = [] {
    std::array<bool, 256> table{};
    for (std::size_t c = 0x20; c < 0x7f; ++c) {
        table[c] = true;
    }
    for (std::size_t c = 0x80; c < 0x100; ++c) {
        table[c] = true;
    }
    table['\t'] = true;
    return table;
}();

bool is_whitespace(char c) noexcept {
    return c == ' ' || c == '\t';
}

bool is_digit(char c) noexcept {
    return c >= '0' && c <= '9';
}

std::string_view trim(std::string_view text) noexcept {
    while (!text.empty() && is_whitespace(text.front())) {
        text.remove_prefix(1);
    }
    while (!text.empty() && is_whitespace(text.back())) {
        text.remove_suffix(1);
    }
    return text;
}

// Calls `each` with every element of a comma-separated list, trimmed, empty
// elements skipped (RFC 9110 5.6.1).
template <class Each>
void for_each_list_element(std::string_view list, Each each) {
    while (!list.empty()) {
        const std::size_t comma = list.find(',');
        const std::string_view element = trim(list.substr(0, comma));
        if (!element.empty()) {
            each(element);
        }
        if (comma == std::string_view::npos) {
            break;
        }
        list.remove_prefix(comma + 1);
    }
}

}  // namespace

std::optional<std::string_view> Request::header(std::string_view name) const {
    for (const auto& [field, value] : headers) {
        if (iequals(field, name)) {
            return value;
        }
    }
    return std::nullopt;
}

std::size_t Request::header_count(std::string_view name) const {
    return static_cast<std::size_t>(std::count_if(headers.begin(), headers.end(),
                                                  [name](const auto& header) { return iequals(header.first, name); }));
}

RequestParser::RequestParser(ParserLimits limits) : limits_{limits} {}

bool RequestParser::fail(int status, std::string reason) {
    if (!error_) {
        error_ = ParseError{status, std::move(reason)};
    }
    return false;
}

std::size_t RequestParser::feed(std::string_view data) {
    std::size_t total = 0;
    // Every step consumes a byte at least, or completes or fails a request.
    while (total < data.size() && !ready_ && !error_) {
        const std::string_view rest = data.substr(total);
        total += phase_ == Phase::head ? feed_head(rest) : feed_body(rest);
    }
    return total;
}

std::size_t RequestParser::feed_head(std::string_view data) {
    if (pending_head_.empty()) {
        // The usual case: the whole head in one read, parsed where it lies,
        // in one pass.
        const std::size_t end = parse_head(data);
        if (end != std::string_view::npos) {
            return end;
        }
        // Not all there, and within the limit (parse_head failed otherwise):
        // kept, its complete lines already parsed.
        pending_head_.assign(data);
        return data.size();
    }
    // Gathering: bytes past the limit cannot belong to a valid head, and
    // parse_head resumes where it stopped, so a head sent a byte at a time
    // costs linear time.
    const std::size_t limit = limits_.max_header_bytes;
    const std::size_t before = pending_head_.size();
    const std::size_t taken = std::min(data.size(), limit + 1 - std::min(limit, before));
    pending_head_.append(data.substr(0, taken));
    const std::size_t end = parse_head(pending_head_);
    if (end == std::string_view::npos) {
        return taken;
    }
    pending_head_.clear();
    return end - before;
}

std::size_t RequestParser::parse_head(std::string_view head) {
    // Line by line from where the last call stopped. A line is judged as
    // soon as its LF is seen, and only if that LF lies within the limit: the
    // outcome is a function of the head's first max_header_bytes bytes and
    // whether more follow, the same however the head is sliced.
    const std::size_t limit = limits_.max_header_bytes;
    const char* const begin = head.data();
    // No LF is looked for past the limit: a line ending there fails anyway.
    const char* const end = begin + std::min(head.size(), limit);
    const char* at = begin + head_checked_;
    const char* scan = begin + std::max(head_checked_, head_scanned_);
    // The next line from `at`: [at, line_end) without CR LF or LF, `next`
    // past its LF; false when no LF closes it within the limit.
    const char* line_end = nullptr;
    const char* next = nullptr;
    const auto next_line = [&]() {
        const void* lf = std::memchr(scan, '\n', static_cast<std::size_t>(end - scan));
        if (lf == nullptr) {
            return false;
        }
        next = static_cast<const char*>(lf) + 1;
        scan = next;
        line_end = next - 1;
        if (line_end > at && line_end[-1] == '\r') {
            --line_end;
        }
        return true;
    };
    // Out of complete lines: more to come, unless the limit is passed.
    const auto incomplete = [&]() {
        if (head.size() > limit) {
            fail(431, fmt::format("request head over {} bytes", limit));
            return head.size();
        }
        head_checked_ = static_cast<std::size_t>(at - begin);
        head_scanned_ = head.size();
        return std::string_view::npos;
    };
    if (!head_started_) {
        // Blank lines before the request line are skipped (RFC 9112 2.2).
        do {
            if (!next_line()) {
                return incomplete();
            }
            if (line_end != at) {
                break;
            }
            at = next;
        } while (true);
        head_started_ = true;
        const std::string_view request_line{at, static_cast<std::size_t>(line_end - at)};
        at = next;
        if (!parse_request_line(request_line)) {
            return static_cast<std::size_t>(at - begin);
        }
    }
    for (;;) {
        if (!next_line()) {
            return incomplete();
        }
        const std::string_view line{at, static_cast<std::size_t>(line_end - at)};
        at = next;
        if (line.empty()) {
            break;
        }
        if (!parse_field(line)) {
            return static_cast<std::size_t>(at - begin);
        }
    }
    const auto consumed = static_cast<std::size_t>(at - begin);
    const HeadFacts facts = facts_;
    head_checked_ = 0;
    head_scanned_ = 0;
    head_started_ = false;
    facts_ = HeadFacts{};
    const bool modern = request_.version_major > 1 || (request_.version_major == 1 && request_.version_minor >= 1);
    const bool connect = request_.method == "CONNECT";
    // An HTTP/1.0 message with Transfer-Encoding has suspect framing: it is
    // processed, then the connection closes (RFC 9112 6.1).
    const bool has_transfer_encoding = facts.transfer_encoding_field != no_field;
    request_.keep_alive =
        !facts.connection_close && (modern || (facts.connection_keep_alive && !has_transfer_encoding));
    request_.upgrade = connect || (facts.has_upgrade && facts.connection_upgrade);
    if (frame_body(facts, connect) && !ready_ && modern) {
        // A body follows, which the client may hold back until told to go
        // on (RFC 9110 10.1.1); HTTP/1.0 clients never wait for it.
        const std::optional<std::string_view> expect = request_.header("Expect");
        continue_expected_ = expect.has_value() && iequals(*expect, "100-continue");
    }
    return consumed;
}

bool RequestParser::parse_request_line(std::string_view line) {
    // method SP request-target SP HTTP-version (RFC 9112 3), single spaces.
    std::size_t method_end = 0;
    while (method_end < line.size() && token_chars[static_cast<unsigned char>(line[method_end])]) {
        ++method_end;
    }
    if (method_end == 0 || method_end == line.size() || line[method_end] != ' ') {
        return fail(400, "invalid request line");
    }
    // Visible ASCII only: what RFC 3986 allows, and a little more.
    std::size_t target_end = method_end + 1;
    while (target_end < line.size() && line[target_end] > ' ' && line[target_end] < '\x7f') {
        ++target_end;
    }
    const std::string_view target = line.substr(method_end + 1, target_end - method_end - 1);
    if (target.size() > limits_.max_target_bytes) {
        return fail(414, fmt::format("request target over {} bytes", limits_.max_target_bytes));
    }
    if (target.empty() || target_end == line.size() || line[target_end] != ' ') {
        return fail(400, "invalid request target");
    }
    const std::string_view version = line.substr(target_end + 1);
    if (version.size() != 8 || !version.starts_with("HTTP/") || !is_digit(version[5]) || version[6] != '.' ||
        !is_digit(version[7])) {
        return fail(400, "invalid HTTP version");
    }
    request_.method.assign(line.substr(0, method_end));
    request_.target.assign(target);
    request_.version_major = version[5] - '0';
    request_.version_minor = version[7] - '0';
    return true;
}

bool RequestParser::parse_field(std::string_view line) {
    HeadFacts& facts = facts_;
    // field-name ":" OWS field-value OWS (RFC 9112 5), the name a token.
    std::size_t colon = 0;
    while (colon < line.size() && token_chars[static_cast<unsigned char>(line[colon])]) {
        ++colon;
    }
    if (colon == line.size() || line[colon] != ':' || colon == 0) {
        if (is_whitespace(line.front())) {
            return fail(400, "obsolete line folding in the header section");
        }
        if (line.find(':') == std::string_view::npos) {
            return fail(400, "header line without a colon");
        }
        return fail(400, fmt::format("invalid header name '{}'", line.substr(0, line.find(':'))));
    }
    const std::string_view name = line.substr(0, colon);
    const std::string_view value = trim(line.substr(colon + 1));
    for (const char c : value) {
        if (!value_chars[static_cast<unsigned char>(c)]) {
            return fail(400, fmt::format("invalid byte in the value of {}", name));
        }
    }
    if (request_.headers.size() >= limits_.max_header_count) {
        return fail(431, fmt::format("more than {} header fields", limits_.max_header_count));
    }
    request_.headers.emplace_back(name, value);
    // Only the few fields that frame the message or the connection matter
    // here; their names differ in length, so most fields compare nothing.
    switch (name.size()) {
        case 14:  // Content-Length
            if (iequals(name, "content-length")) {
                // Repeated, they must say the same (RFC 9110 8.6).
                if (facts.content_length_field == no_field) {
                    facts.content_length_field = request_.headers.size() - 1;
                } else if (value != request_.headers[facts.content_length_field].second) {
                    return fail(400, "differing Content-Length fields");
                }
            }
            break;
        case 17:  // Transfer-Encoding
            if (iequals(name, "transfer-encoding")) {
                // Judged once the head is whole; the last field holds the final coding.
                facts.transfer_encoding_field = request_.headers.size() - 1;
            }
            break;
        case 10:  // Connection
            if (iequals(name, "connection")) {
                for_each_list_element(value, [&facts](std::string_view option) {
                    facts.connection_close = facts.connection_close || iequals(option, "close");
                    facts.connection_keep_alive = facts.connection_keep_alive || iequals(option, "keep-alive");
                    facts.connection_upgrade = facts.connection_upgrade || iequals(option, "upgrade");
                });
            }
            break;
        case 7:  // Upgrade
            facts.has_upgrade = facts.has_upgrade || iequals(name, "upgrade");
            break;
        default:
            break;
    }
    return true;
}

bool RequestParser::frame_body(const HeadFacts& facts, bool connect) {
    if (connect) {
        complete();  // what follows belongs to the tunnel, not to HTTP
        return true;
    }
    if (facts.transfer_encoding_field != no_field) {
        // RFC 9112 6.1 and 6.3: with both, the message could be framed two
        // ways (the stuff of request smuggling); and unless the final coding
        // is chunked, the body's end is unknown.
        if (facts.content_length_field != no_field) {
            return fail(400, "both Content-Length and Transfer-Encoding");
        }
        std::string_view final_coding;
        for_each_list_element(request_.headers[facts.transfer_encoding_field].second,
                              [&final_coding](std::string_view coding) { final_coding = coding; });
        if (!iequals(final_coding, "chunked")) {
            return fail(400, fmt::format("final transfer coding '{}' is not chunked", final_coding));
        }
        phase_ = Phase::chunk_size;
        return true;
    }
    if (facts.content_length_field != no_field) {
        const std::string_view digits = request_.headers[facts.content_length_field].second;
        if (digits.empty() || !std::all_of(digits.begin(), digits.end(), is_digit)) {
            return fail(400, fmt::format("invalid Content-Length '{}'", digits));
        }
        std::uint64_t length = 0;
        const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), length);
        if (error != std::errc{} || length > limits_.max_body_bytes) {  // too long for 64 bits is too large too
            return fail(413, fmt::format("request body over {} bytes", limits_.max_body_bytes));
        }
        if (length > 0) {
            body_left_ = length;
            phase_ = Phase::body;
            return true;
        }
    }
    complete();
    return true;
}

std::size_t RequestParser::feed_body(std::string_view data) {
    if (phase_ == Phase::body || phase_ == Phase::chunk_data) {
        const auto skipped = static_cast<std::size_t>(std::min<std::uint64_t>(body_left_, data.size()));
        body_left_ -= skipped;
        if (body_left_ == 0) {
            if (phase_ == Phase::body) {
                complete();
            } else {
                phase_ = Phase::chunk_data_end;
            }
        }
        return skipped;
    }
    // Chunk-size lines (with extensions) and trailer fields are short; a
    // line without end is refused once it passes the head limit.
    const std::size_t lf = data.find('\n');
    const std::size_t used = lf == std::string_view::npos ? data.size() : lf + 1;
    if (line_.size() + used > limits_.max_header_bytes) {
        fail(phase_ == Phase::trailers ? 431 : 400, "chunked framing line too long");
        return used;
    }
    line_.append(data.substr(0, lf == std::string_view::npos ? used : lf));
    if (lf != std::string_view::npos) {
        std::string_view line = line_;
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        end_of_framing_line(line);
        line_.clear();
    }
    return used;
}

void RequestParser::end_of_framing_line(std::string_view line) {
    if (line.find('\r') != std::string_view::npos) {
        fail(400, "bare CR in the chunked framing");
        return;
    }
    switch (phase_) {
        case Phase::chunk_size: {
            // chunk-size [ chunk-ext ]: hex digits, then extensions, ignored.
            const std::size_t digits_end = std::min(line.size(), line.find_first_not_of("0123456789abcdefABCDEF"));
            const std::string_view extension = trim(line.substr(digits_end));
            if (digits_end == 0 || (!extension.empty() && extension.front() != ';')) {
                fail(400, "invalid chunk size line");
                return;
            }
            std::uint64_t size = 0;
            const auto [end, error] = std::from_chars(line.data(), line.data() + digits_end, size, 16);
            if (error != std::errc{} ||
                size > limits_.max_body_bytes - std::min<std::uint64_t>(body_bytes_, limits_.max_body_bytes)) {
                fail(413, fmt::format("request body over {} bytes", limits_.max_body_bytes));
                return;
            }
            body_bytes_ += size;
            body_left_ = size;
            phase_ = size == 0 ? Phase::trailers : Phase::chunk_data;
            return;
        }
        case Phase::chunk_data_end:
            if (!line.empty()) {
                fail(400, "chunk data longer than its size");
                return;
            }
            phase_ = Phase::chunk_size;
            return;
        case Phase::trailers:
            if (line.empty()) {
                complete();
                return;
            }
            trailer_bytes_ += line.size() + 2;
            if (trailer_bytes_ > limits_.max_header_bytes) {
                fail(431, fmt::format("trailer section over {} bytes", limits_.max_header_bytes));
            }
            return;
        case Phase::head:
        case Phase::body:
        case Phase::chunk_data:
            return;  // not framing lines
    }
}

void RequestParser::complete() noexcept {
    ready_ = true;
    phase_ = Phase::head;
    continue_expected_ = false;  // the body is here: nothing to invite
}

Request RequestParser::take_request() {
    Request taken = std::exchange(request_, Request{});
    finish_request();
    return taken;
}

void RequestParser::finish_request() noexcept {
    ready_ = false;
    phase_ = Phase::head;
    body_left_ = 0;
    body_bytes_ = 0;
    trailer_bytes_ = 0;
    line_.clear();
    // Emptied, capacities kept; the fields a parse sets are set again.
    request_.method.clear();
    request_.target.clear();
    request_.headers.clear();
    request_.version_major = 1;
    request_.version_minor = 1;
    request_.keep_alive = true;
    request_.upgrade = false;
}

}  // namespace muxio::http
