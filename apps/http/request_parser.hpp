// RequestParser: an incremental HTTP/1.1 request parser (RFC 9112),
// producing one Request at a time with limits on its size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace muxio::http {

/// One parsed request: what the handler needs, the body dropped.
struct Request {
    std::string method;  // "GET", "HEAD", ... as sent (methods are case-sensitive)
    std::string target;  // the request target exactly as sent
    int version_major = 1;
    int version_minor = 1;
    /// Header fields in arrival order, names as sent, values without the
    /// whitespace around them.
    std::vector<std::pair<std::string, std::string>> headers;
    /// HTTP/1.1 and later unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive` and no Transfer-Encoding.
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

/// Parses bytes in any slicing and stops at the end of each request, so
/// pipelined requests come out one at a time, in order, and the caller
/// decides when to parse the next (back-pressure). Bodies, with a
/// Content-Length or chunked, are read and dropped.
///
/// A head that arrives whole is parsed where it lies; one that arrives in
/// pieces is gathered in the parser (up to max_header_bytes), its lines
/// parsed as they complete. Each line of a head is judged as soon as its LF
/// arrives, if that LF lies within max_header_bytes of the head's first
/// byte; a head that has not ended there fails with 431. So a malformed line
/// fails at once, without waiting for the end of the head, and what comes
/// out (requests, then the error) never depends on how the bytes are split
/// into feed() calls: a bad line past the limit is a 431, before it a 400,
/// whether the head arrives whole or a byte at a time. Strict
/// where leniency lets requests be smuggled past a proxy: a bare CR, a space
/// before a colon, folded lines, Content-Length with Transfer-Encoding,
/// differing Content-Lengths, a final coding other than chunked all fail
/// with 400. A lone LF ends a line (RFC 9112 2.2), and blank lines before a
/// request are skipped.
///
/// Usage: call feed() with the unparsed bytes; it returns how many it
/// consumed. Then, if has_request(), take_request() (or read
/// current_request() and finish_request()) and call feed() again with the
/// rest; if failed(), answer error() and close the connection (the stream
/// can no longer be trusted); otherwise wait for more bytes.
class RequestParser {
public:
    explicit RequestParser(ParserLimits limits = {});

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

    /// True from the end of a head carrying `Expect: 100-continue` (HTTP/1.1
    /// or later, a body announced) until its body is complete or
    /// continue_sent() is called: the client may be waiting for
    /// `100 Continue` before it sends the body, and an origin server must
    /// send it, or a final answer, now (RFC 9110 10.1.1).
    [[nodiscard]] bool expects_continue() const noexcept { return continue_expected_ && !error_; }
    void continue_sent() noexcept { continue_expected_ = false; }

    /// True between the first byte of a request and its completion: a
    /// connection closed now cuts a request short.
    [[nodiscard]] bool in_request() const noexcept { return phase_ != Phase::head || !pending_head_.empty(); }
    /// True while the body of a request whose head is complete is read:
    /// in_request() and not in its head.
    [[nodiscard]] bool in_body() const noexcept { return phase_ != Phase::head; }

private:
    // Where the next byte belongs. The chunk phases follow RFC 9112 7.1.
    enum class Phase : unsigned char { head, body, chunk_size, chunk_data, chunk_data_end, trailers };

    static constexpr std::size_t no_field = static_cast<std::size_t>(-1);

    // What the header fields parsed so far say about the framing and the
    // connection; fields named by their index in request_.headers.
    struct HeadFacts {
        std::size_t content_length_field = no_field;     // the first Content-Length
        std::size_t transfer_encoding_field = no_field;  // the last Transfer-Encoding
        bool connection_close = false;
        bool connection_keep_alive = false;
        bool connection_upgrade = false;
        bool has_upgrade = false;
    };

    std::size_t feed_head(std::string_view data);
    std::size_t feed_body(std::string_view data);
    // Goes on parsing the head that starts at the start of `head` (blank
    // lines before it included) from the first line not parsed yet, into
    // request_, and sets up the body; returns the head's length, or what was
    // consumed when it failed, or npos if `head` holds only part of it (the
    // lines parsed so far are remembered: the next call must pass the same
    // bytes again, followed by more).
    std::size_t parse_head(std::string_view head);
    bool parse_request_line(std::string_view line);
    bool parse_field(std::string_view line);
    bool frame_body(const HeadFacts& facts, bool connect);
    // A complete chunk-size, chunk-end or trailer line, without CR LF.
    void end_of_framing_line(std::string_view line);
    void complete() noexcept;
    // Records the first error only; returns false for the caller to pass on.
    bool fail(int status, std::string reason);

    ParserLimits limits_;
    Phase phase_ = Phase::head;
    bool ready_ = false;
    bool continue_expected_ = false;
    std::string pending_head_;  // a head gathered from pieces
    // Where parse_head() stopped in the head under way: the start of the
    // first line not parsed, how far no LF was found, and what was parsed.
    std::size_t head_checked_ = 0;
    std::size_t head_scanned_ = 0;
    bool head_started_ = false;  // the request line is parsed
    HeadFacts facts_;
    std::string line_;             // a framing line of a chunked body, in pieces
    std::uint64_t body_left_ = 0;  // of the Content-Length body or of the current chunk
    std::uint64_t body_bytes_ = 0;
    std::size_t trailer_bytes_ = 0;
    Request request_;
    std::optional<ParseError> error_;
};

}  // namespace muxio::http
