// RequestParser: an incremental HTTP/1.1 request parser over Debian's
// libhttp-parser, producing one Request at a time with limits on its size.
#pragma once

#include <http_parser.h>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace muxio::http {

/// One parsed request: what the handler needs, the body dropped.
struct Request {
    std::string method;  // "GET", "HEAD", ... as libhttp-parser names it
    std::string target;  // the request target exactly as sent
    int version_major = 1;
    int version_minor = 1;
    /// Header fields in arrival order, names and values as sent (values
    /// without the surrounding whitespace libhttp-parser strips).
    std::vector<std::pair<std::string, std::string>> headers;
    /// libhttp-parser's verdict: HTTP/1.1 unless `Connection: close`,
    /// HTTP/1.0 only with `Connection: keep-alive`.
    bool keep_alive = true;
    /// CONNECT, or `Upgrade` with `Connection: upgrade`.
    bool upgrade = false;

    /// The value of the first header named `name` (case-insensitively).
    [[nodiscard]] std::optional<std::string_view> header(std::string_view name) const;
    /// How many headers are named `name` (case-insensitively).
    [[nodiscard]] std::size_t header_count(std::string_view name) const;
};

/// Limits on what one request may take; exceeding one is an error whose
/// status says which.
struct ParserLimits {
    /// Request line plus header fields, delimiters included: 431.
    std::size_t max_header_bytes = std::size_t{8} << 10U;
    /// The request target alone: 414.
    std::size_t max_target_bytes = std::size_t{4} << 10U;
    /// Number of header fields: 431.
    std::size_t max_header_count = 100;
    /// Body bytes (read and discarded): 413.
    std::size_t max_body_bytes = std::size_t{1} << 20U;
};

/// Why parsing stopped for good: the status to answer with (400, 413, 414,
/// 431) and a short description for logs.
struct ParseError {
    int status = 400;
    std::string reason;
};

/// Feeds bytes in any slicing to libhttp-parser and stops at the end of
/// each request, so pipelined requests come out one at a time, in order,
/// and the caller decides when to parse the next (back-pressure).
///
/// Usage: call feed() with the unparsed bytes; it returns how many it
/// consumed. Then, if has_request(), take_request() and call feed() again
/// with the rest; if failed(), answer error() and close the connection
/// (the stream can no longer be trusted); otherwise wait for more bytes.
class RequestParser {
public:
    explicit RequestParser(ParserLimits limits = {});
    // libhttp-parser keeps a pointer back to this object.
    RequestParser(const RequestParser&) = delete;
    RequestParser& operator=(const RequestParser&) = delete;
    RequestParser(RequestParser&&) = delete;
    RequestParser& operator=(RequestParser&&) = delete;
    ~RequestParser() = default;

    /// Parses from the start of `data` up to the end of the next request at
    /// most; returns the bytes consumed: all of them unless a request
    /// completed or parsing failed. Consumes nothing while a request waits
    /// to be taken or after an error.
    std::size_t feed(std::string_view data);

    [[nodiscard]] bool has_request() const noexcept { return ready_; }
    /// Moves the completed request out; the parser goes on with the next.
    /// Precondition: has_request().
    Request take_request();
    /// The completed request, read in place; finish_request() then lets the
    /// parser go on with the next, reusing the request's storage (a server
    /// that does not keep requests allocates nothing for them per request).
    /// Precondition: has_request().
    [[nodiscard]] const Request& current_request() const noexcept { return request_; }
    void finish_request() noexcept;

    [[nodiscard]] bool failed() const noexcept { return error_.has_value(); }
    [[nodiscard]] const std::optional<ParseError>& error() const noexcept { return error_; }

    /// True between the first byte of a request and its completion: a
    /// connection closed now cuts a request short.
    [[nodiscard]] bool in_request() const noexcept { return phase_ != Phase::idle || head_bytes_ > 0; }

private:
    enum class Phase : unsigned char { idle, head, body };

    static int on_message_begin(http_parser* parser);
    static int on_url(http_parser* parser, const char* at, std::size_t length);
    static int on_header_field(http_parser* parser, const char* at, std::size_t length);
    static int on_header_value(http_parser* parser, const char* at, std::size_t length);
    static int on_headers_complete(http_parser* parser);
    static int on_body(http_parser* parser, const char* at, std::size_t length);
    static int on_message_complete(http_parser* parser);
    static RequestParser& self(http_parser* parser) noexcept;
    static const http_parser_settings& settings() noexcept;

    // Records the first error only; returns the callback's "stop" value.
    int fail(int status, std::string reason);
    [[nodiscard]] bool head_too_large(std::size_t adding) const noexcept;

    ParserLimits limits_;
    http_parser parser_{};
    Phase phase_ = Phase::idle;
    bool ready_ = false;
    bool last_was_value_ = true;  // the next field callback starts a new header
    std::size_t head_bytes_ = 0;  // bytes fed while parsing the current head
    std::size_t head_text_ = 0;   // target, names and values collected so far
    std::size_t body_bytes_ = 0;
    Request request_;
    std::optional<ParseError> error_;
};

}  // namespace muxio::http
