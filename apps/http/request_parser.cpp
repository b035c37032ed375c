#include "request_parser.hpp"

#include <algorithm>
#include <array>
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
// these specials). The Debian build of libhttp-parser is the lenient one and
// lets spaces through ("Host : a"), which a server must refuse (RFC 9112 5.1).
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

bool is_token(std::string_view name) noexcept {
    return !name.empty() &&
           std::all_of(name.begin(), name.end(), [](char c) { return token_chars[static_cast<unsigned char>(c)]; });
}

http_parser_settings make_settings(http_cb message_begin, http_data_cb url, http_data_cb field, http_data_cb value,
                                   http_cb headers_complete, http_data_cb body, http_cb message_complete) {
    http_parser_settings settings{};
    http_parser_settings_init(&settings);
    settings.on_message_begin = message_begin;
    settings.on_url = url;
    settings.on_header_field = field;
    settings.on_header_value = value;
    settings.on_headers_complete = headers_complete;
    settings.on_body = body;
    settings.on_message_complete = message_complete;
    return settings;
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

RequestParser::RequestParser(ParserLimits limits) : limits_{limits} {
    http_parser_init(&parser_, HTTP_REQUEST);
    parser_.data = this;
}

RequestParser& RequestParser::self(http_parser* parser) noexcept {
    return *static_cast<RequestParser*>(parser->data);
}

const http_parser_settings& RequestParser::settings() noexcept {
    static const http_parser_settings callbacks =
        make_settings(&on_message_begin, &on_url, &on_header_field, &on_header_value, &on_headers_complete, &on_body,
                      &on_message_complete);
    return callbacks;
}

int RequestParser::fail(int status, std::string reason) {
    if (!error_) {
        error_ = ParseError{status, std::move(reason)};
    }
    return 1;
}

bool RequestParser::head_too_large(std::size_t adding) const noexcept {
    return head_text_ + adding > limits_.max_header_bytes;
}

std::size_t RequestParser::feed(std::string_view data) {
    if (ready_ || error_) {
        return 0;
    }
    std::size_t total = 0;
    // At most two rounds per request: the parser pauses itself at the end of
    // the head (so a round that starts before it consumes head bytes only,
    // counted exactly, with the blank lines tolerated before a request) and
    // at the end of the message, where feed() returns.
    while (total < data.size()) {
        const bool counting_head = phase_ != Phase::body;
        const std::string_view rest = data.substr(total);
        const std::size_t consumed = http_parser_execute(&parser_, &settings(), rest.data(), rest.size());
        total += consumed;
        const auto status = static_cast<http_errno>(parser_.http_errno);
        const bool paused = status == HPE_PAUSED;
        if (paused) {
            http_parser_pause(&parser_, 0);
        } else if (status != HPE_OK) {
            // A callback that refused has recorded why; anything else is the
            // parser's own complaint about the syntax.
            fail(400, fmt::format("{}: {}", http_errno_name(status), http_errno_description(status)));
            return total;
        }
        if (counting_head) {
            head_bytes_ += consumed;
            if (head_bytes_ > limits_.max_header_bytes) {
                fail(431, fmt::format("request head over {} bytes", limits_.max_header_bytes));
                return total;
            }
        }
        if (ready_ || !paused) {
            break;  // a request to take, or every byte consumed
        }
    }
    return total;
}

Request RequestParser::take_request() {
    Request taken = std::exchange(request_, Request{});
    finish_request();
    return taken;
}

void RequestParser::finish_request() noexcept {
    ready_ = false;
    phase_ = Phase::idle;
    head_bytes_ = 0;
    head_text_ = 0;
    body_bytes_ = 0;
    last_was_value_ = true;
    // Emptied, capacities kept; the fields a parse sets are set again.
    request_.method.clear();
    request_.target.clear();
    request_.headers.clear();
    request_.version_major = 1;
    request_.version_minor = 1;
    request_.keep_alive = true;
    request_.upgrade = false;
}

int RequestParser::on_message_begin(http_parser* parser) {
    RequestParser& me = self(parser);
    me.phase_ = Phase::head;
    return 0;
}

int RequestParser::on_url(http_parser* parser, const char* at, std::size_t length) {
    RequestParser& me = self(parser);
    if (me.request_.target.size() + length > me.limits_.max_target_bytes) {
        return me.fail(414, fmt::format("request target over {} bytes", me.limits_.max_target_bytes));
    }
    if (me.head_too_large(length)) {
        return me.fail(431, fmt::format("request head over {} bytes", me.limits_.max_header_bytes));
    }
    me.head_text_ += length;
    me.request_.target.append(at, length);
    return 0;
}

int RequestParser::on_header_field(http_parser* parser, const char* at, std::size_t length) {
    RequestParser& me = self(parser);
    if (me.head_too_large(length)) {
        return me.fail(431, fmt::format("request head over {} bytes", me.limits_.max_header_bytes));
    }
    me.head_text_ += length;
    if (me.last_was_value_) {
        if (me.request_.headers.size() >= me.limits_.max_header_count) {
            return me.fail(431, fmt::format("more than {} header fields", me.limits_.max_header_count));
        }
        me.request_.headers.emplace_back();
        me.last_was_value_ = false;
    }
    me.request_.headers.back().first.append(at, length);
    return 0;
}

int RequestParser::on_header_value(http_parser* parser, const char* at, std::size_t length) {
    RequestParser& me = self(parser);
    if (me.head_too_large(length)) {
        return me.fail(431, fmt::format("request head over {} bytes", me.limits_.max_header_bytes));
    }
    me.head_text_ += length;
    me.last_was_value_ = true;
    me.request_.headers.back().second.append(at, length);
    return 0;
}

int RequestParser::on_headers_complete(http_parser* parser) {
    RequestParser& me = self(parser);
    Request& request = me.request_;
    for (const auto& header : request.headers) {
        if (!is_token(header.first)) {
            me.fail(400, fmt::format("invalid header name '{}'", header.first));
            return -1;  // 1 and 2 would mean "no body" and "upgrade" here, not an error
        }
    }
    request.method = http_method_str(static_cast<http_method>(parser->method));
    request.version_major = parser->http_major;
    request.version_minor = parser->http_minor;
    request.keep_alive = http_should_keep_alive(parser) != 0;
    request.upgrade = parser->upgrade != 0;
    me.phase_ = Phase::body;
    // Stop here so feed() can count the head's bytes exactly.
    http_parser_pause(parser, 1);
    return 0;
}

int RequestParser::on_body(http_parser* parser, const char* /*at*/, std::size_t length) {
    RequestParser& me = self(parser);
    me.body_bytes_ += length;
    if (me.body_bytes_ > me.limits_.max_body_bytes) {
        return me.fail(413, fmt::format("request body over {} bytes", me.limits_.max_body_bytes));
    }
    return 0;
}

int RequestParser::on_message_complete(http_parser* parser) {
    RequestParser& me = self(parser);
    me.ready_ = true;
    // One request per feed(): the caller answers it before parsing the next.
    http_parser_pause(parser, 1);
    return 0;
}

}  // namespace muxio::http
