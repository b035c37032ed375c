// An incremental parser for RESP2 requests: arrays of bulk strings, and the
// inline form (one text line of words) that telnet and hand-typed clients use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace resp {

/// Bounds on what one request may claim, checked when its header is read,
/// before any of its data. The defaults are Redis's.
struct ParserLimits {
    /// Longest bulk string ($<len>): Redis's proto-max-bulk-len.
    std::size_t max_bulk = std::size_t{512} << 20U;
    /// Longest inline request line, and longest header line (*<n> or $<len>),
    /// not counting its line end.
    std::size_t max_inline = std::size_t{64} << 10U;
    /// Most elements in one array (*<n>).
    std::size_t max_args = std::size_t{1} << 20U;
};

/// Parses one request at a time from the front of a connection's buffer.
///
/// Contract with the caller, who owns the buffer:
///  - parse() is given the unconsumed bytes, starting where the previous
///    result's `consumed` ended. Between calls the caller may append to the
///    buffer, or move it (reallocation, compaction), but not change bytes it
///    already passed: the parser keeps offsets into them, not pointers, so
///    a large request arriving in pieces is scanned only once.
///  - After every result the caller drops `consumed` bytes from the front.
///    For Status::command, args() views those bytes (or the parser's own
///    storage, for inline requests with quotes), so use them first.
///  - After Status::error the connection is done: reply with error() and
///    close, as Redis does; the parser must be reset() before any reuse.
///
/// Empty requests (`*0`, `*-1`, a blank line) are skipped, as Redis skips them.
///
/// The outcome does not depend on how the bytes are split into reads: the
/// same bytes give the same commands, the same error and the same leftover
/// whether they are passed whole or in pieces (tests/fuzz/resp_request.cpp
/// checks this). One consequence departs from Redis: a line longer than
/// max_inline is refused even when its line end arrives with it, where
/// Redis refuses it only while the line end is missing.
///
/// Memory: the parser holds offsets, not data. What it keeps per request
/// grows with the words read, not with the counts and lengths announced.
class Parser {
public:
    enum class Status : std::uint8_t {
        command,    ///< args() holds a complete request of at least one word
        need_more,  ///< no complete request yet
        error,      ///< malformed or over a limit; see error()
    };
    struct Result {
        Status status;
        /// Bytes at the front of the input that are done with.
        std::size_t consumed;
    };

    explicit Parser(ParserLimits limits = {}) : limits_{limits} {}

    [[nodiscard]] Result parse(std::string_view input);

    /// The words of the last command; valid until the next parse() or until
    /// the consumed bytes are dropped, whichever comes first.
    [[nodiscard]] std::span<const std::string_view> args() const noexcept { return args_; }
    /// The reason of the last error, e.g. "Protocol error: invalid bulk length".
    [[nodiscard]] const std::string& error() const noexcept { return error_; }
    /// A lower bound on the input size (counted from the front of the next
    /// parse()'s input) that the request in progress needs, 0 when unknown:
    /// lets the caller refuse a request that is bound to exceed its limits
    /// before its data arrives. Announced, not received: never a reason to
    /// reserve that much memory.
    [[nodiscard]] std::size_t bytes_wanted() const noexcept;
    /// The size of the last command's request, from its first byte to its
    /// end, without the empty requests skipped before it.
    [[nodiscard]] std::size_t request_size() const noexcept { return request_size_; }
    [[nodiscard]] const ParserLimits& limits() const noexcept { return limits_; }

    /// Forgets any request in progress and any error.
    void reset() noexcept;

private:
    enum class Kind : std::uint8_t { none, multibulk, inline_text };
    // What one step of parsing found.
    enum class Step : std::uint8_t { ok, command, skipped, need_more, error };

    Step parse_multibulk(std::string_view input);
    Step parse_inline(std::string_view input);
    // Reads a "*<n>\r\n" or "$<n>\r\n" line at pos_; Step::ok once read.
    Step read_header(std::string_view input, std::string_view too_long, std::string_view invalid, std::int64_t& value);
    [[nodiscard]] std::size_t find_cr(std::string_view input, std::size_t from) const noexcept;
    Step fail(std::string_view reason);
    Result need_more();
    Result complete(std::string_view input);

    ParserLimits limits_;
    Kind kind_ = Kind::none;
    // All offsets below are relative to the front of the current input.
    std::size_t pos_ = 0;          // next byte to look at
    std::size_t frame_start_ = 0;  // where the request in progress starts
    std::size_t scanned_ = 0;      // bytes already searched for a line end
    bool header_done_ = false;     // the array's *<n> line is read
    std::int64_t remaining_ = 0;   // array elements still to come
    std::int64_t bulk_len_ = -1;   // length of the bulk whose data is next; -1: its header is next
    std::vector<std::pair<std::size_t, std::size_t>> spans_;  // (offset, length) of each word read
    std::string inline_storage_;                              // the unescaped words of an inline request
    std::vector<std::string_view> args_;
    std::size_t request_size_ = 0;
    std::string error_;
};

/// Splits an inline request line into words the way Redis's inline protocol
/// does: blanks separate words; "double quotes" allow \n \r \t \b \a \\ \"
/// and \xHH escapes; 'single quotes' allow \'. A closing quote must be
/// followed by a blank or the end. Appends the words' bytes to `storage` and
/// their (offset, length) to `spans`; false on unbalanced quotes.
bool split_inline(std::string_view line, std::string& storage, std::vector<std::pair<std::size_t, std::size_t>>& spans);

/// Parses a decimal int64 the strict way Redis does for integers it is sent:
/// an optional '-', no '+', no blanks, no leading zeros ("0" alone is fine).
bool parse_int64(std::string_view text, std::int64_t& value) noexcept;

}  // namespace resp
