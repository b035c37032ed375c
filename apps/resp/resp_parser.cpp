#include "resp_parser.hpp"

#include <algorithm>
#include <limits>

#include <fmt/format.h>

namespace resp {

namespace {

constexpr std::size_t npos = std::string_view::npos;

bool is_blank(char c) noexcept {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

// The byte named in "expected '$', got ..." is shown as itself when
// printable, escaped otherwise, so the error line stays readable.
std::string show_byte(char c) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f) {
        return std::string{std::string_view{&c, 1}};
    }
    return fmt::format("\\x{:02x}", byte);
}

// Empties `words`, and gives its memory back if one large request grew it,
// so that a connection does not keep that much for good.
template <class Vector>
void release_if_large(Vector& words) noexcept {
    constexpr std::size_t keep_words = 1024;
    if (words.capacity() > keep_words) {
        Vector{}.swap(words);
    } else {
        words.clear();
    }
}

}  // namespace

bool parse_int64(std::string_view text, std::int64_t& value) noexcept {
    if (text.empty() || text.size() > 20) {
        return false;
    }
    std::size_t i = 0;
    const bool negative = text[0] == '-';
    if (negative) {
        i = 1;
        if (text.size() == 1) {
            return false;
        }
    }
    if (text[i] == '0') {
        // Only a lone "0": no "-0", no leading zeros.
        if (text.size() == 1) {
            value = 0;
            return true;
        }
        return false;
    }
    // Accumulated as a negative number, whose range is one larger, so
    // INT64_MIN parses without overflow.
    std::int64_t result = 0;
    constexpr std::int64_t min = std::numeric_limits<std::int64_t>::min();
    for (; i < text.size(); ++i) {
        const char c = text[i];
        if (c < '0' || c > '9') {
            return false;
        }
        const int digit = c - '0';
        if (result < min / 10 || result * 10 < min + digit) {
            return false;
        }
        result = result * 10 - digit;
    }
    if (!negative) {
        if (result == min) {
            return false;
        }
        result = -result;
    }
    value = result;
    return true;
}

namespace {

// Decodes the escape at line[i] ('\\') inside double quotes, appending the
// byte it stands for; returns the escape's length.
std::size_t decode_escape(std::string_view line, std::size_t i, std::string& storage) {
    if (i + 3 < line.size() && line[i + 1] == 'x' && hex_value(line[i + 2]) >= 0 && hex_value(line[i + 3]) >= 0) {
        storage.push_back(static_cast<char>(hex_value(line[i + 2]) * 16 + hex_value(line[i + 3])));
        return 4;
    }
    switch (const char c = line[i + 1]) {
        case 'n':
            storage.push_back('\n');
            break;
        case 'r':
            storage.push_back('\r');
            break;
        case 't':
            storage.push_back('\t');
            break;
        case 'b':
            storage.push_back('\b');
            break;
        case 'a':
            storage.push_back('\a');
            break;
        default:
            storage.push_back(c);  // any other character stands for itself
            break;
    }
    return 2;
}

// Reads one word starting at line[i] (not a blank) into `storage`; returns
// the index after it, or npos on unbalanced quotes.
std::size_t read_word(std::string_view line, std::size_t i, std::string& storage) {
    const std::size_t n = line.size();
    char quote = 0;  // '"', '\'' or none
    while (i < n) {
        const char c = line[i];
        if (quote == 0) {
            if (is_blank(c)) {
                return i;
            }
            if (c == '"' || c == '\'') {
                quote = c;
            } else {
                storage.push_back(c);
            }
            ++i;
        } else if (c == quote) {
            // A closing quote ends the word, and must end it.
            return i + 1 < n && !is_blank(line[i + 1]) ? npos : i + 1;
        } else if (c == '\\' && i + 1 < n && quote == '"') {
            i += decode_escape(line, i, storage);
        } else if (c == '\\' && i + 1 < n && line[i + 1] == '\'') {
            storage.push_back('\'');  // the one escape of single quotes
            i += 2;
        } else {
            storage.push_back(c);
            ++i;
        }
    }
    return quote == 0 ? n : npos;  // the line ended inside quotes
}

}  // namespace

bool split_inline(std::string_view line, std::string& storage,
                  std::vector<std::pair<std::size_t, std::size_t>>& spans) {
    std::size_t i = 0;
    for (;;) {
        while (i < line.size() && is_blank(line[i])) {
            ++i;
        }
        if (i == line.size()) {
            return true;
        }
        const std::size_t start = storage.size();
        i = read_word(line, i, storage);
        if (i == npos) {
            return false;
        }
        spans.emplace_back(start, storage.size() - start);
    }
}

void Parser::reset() noexcept {
    kind_ = Kind::none;
    pos_ = 0;
    frame_start_ = 0;
    scanned_ = 0;
    header_done_ = false;
    remaining_ = 0;
    bulk_len_ = -1;
    spans_.clear();
    inline_storage_.clear();
    args_.clear();
    request_size_ = 0;
    error_.clear();
}

std::size_t Parser::bytes_wanted() const noexcept {
    if (kind_ == Kind::multibulk && bulk_len_ >= 0) {
        return pos_ + static_cast<std::size_t>(bulk_len_) + 2;
    }
    return 0;
}

Parser::Result Parser::parse(std::string_view input) {
    release_if_large(args_);
    if (!error_.empty()) {
        return {Status::error, 0};
    }
    for (;;) {
        if (kind_ == Kind::none) {
            if (pos_ >= input.size()) {
                return need_more();
            }
            frame_start_ = pos_;
            scanned_ = pos_;
            kind_ = input[pos_] == '*' ? Kind::multibulk : Kind::inline_text;
        }
        const Step step = kind_ == Kind::multibulk ? parse_multibulk(input) : parse_inline(input);
        switch (step) {
            case Step::skipped:
                frame_start_ = pos_;  // an empty request, done with
                continue;
            case Step::need_more:
                return need_more();
            case Step::error:
                return {Status::error, 0};
            case Step::command:
            case Step::ok:
                return complete(input);
        }
    }
}

std::size_t Parser::find_cr(std::string_view input, std::size_t from) const noexcept {
    return input.find('\r', std::max(from, scanned_));
}

Parser::Step Parser::read_header(std::string_view input, std::string_view too_long, std::string_view invalid,
                                 std::int64_t& value) {
    // The header's first byte (* or $) is at pos_ and already checked.
    const std::size_t cr = find_cr(input, pos_ + 1);
    if (cr == npos) {
        // The line is at least as long as what has arrived of it.
        if (input.size() - pos_ > limits_.max_inline) {
            return fail(too_long);
        }
        scanned_ = input.size();
        return Step::need_more;
    }
    // Judged by the same length whether or not the line end came in the
    // same read, so that the outcome does not depend on the pieces.
    if (cr - pos_ > limits_.max_inline) {
        return fail(too_long);
    }
    if (cr + 1 == input.size()) {
        scanned_ = cr;
        return Step::need_more;
    }
    if (input[cr + 1] != '\n' || !parse_int64(input.substr(pos_ + 1, cr - pos_ - 1), value)) {
        return fail(invalid);
    }
    pos_ = cr + 2;
    scanned_ = pos_;
    return Step::ok;
}

Parser::Step Parser::parse_multibulk(std::string_view input) {
    if (!header_done_) {
        std::int64_t count = 0;
        if (const Step step = read_header(input, "too big mbulk count string", "invalid multibulk length", count);
            step != Step::ok) {
            return step;
        }
        if (count > 0 && static_cast<std::uint64_t>(count) > limits_.max_args) {
            return fail("invalid multibulk length");
        }
        if (count <= 0) {
            kind_ = Kind::none;
            return Step::skipped;
        }
        header_done_ = true;
        remaining_ = count;
        // A small start; beyond it the spans grow with the words that arrive,
        // not with the count a few bytes can claim.
        spans_.reserve(static_cast<std::size_t>(std::min<std::int64_t>(count, 16)));
    }
    while (remaining_ > 0) {
        if (bulk_len_ < 0) {
            if (pos_ >= input.size()) {
                return Step::need_more;
            }
            if (input[pos_] != '$') {
                return fail(fmt::format("expected '$', got '{}'", show_byte(input[pos_])));
            }
            std::int64_t length = 0;
            if (const Step step = read_header(input, "too big bulk count string", "invalid bulk length", length);
                step != Step::ok) {
                return step;
            }
            if (length < 0 || static_cast<std::uint64_t>(length) > limits_.max_bulk) {
                return fail("invalid bulk length");
            }
            bulk_len_ = length;
        }
        const auto length = static_cast<std::size_t>(bulk_len_);
        if (input.size() - pos_ < length + 2) {
            return Step::need_more;
        }
        if (input[pos_ + length] != '\r' || input[pos_ + length + 1] != '\n') {
            return fail("bulk string not terminated by CRLF");
        }
        spans_.emplace_back(pos_, length);
        pos_ += length + 2;
        scanned_ = pos_;
        bulk_len_ = -1;
        --remaining_;
    }
    return Step::command;
}

Parser::Step Parser::parse_inline(std::string_view input) {
    const std::size_t newline = input.find('\n', scanned_);
    // A line over the limit is refused whether its end has arrived or not
    // (Redis refuses it only while the end is missing, so there the outcome
    // depends on how the line is split into reads). Its length does not
    // count the line end, nor a CR that may turn out to be part of it.
    const std::size_t end = newline == npos ? input.size() : newline;
    const std::size_t length = end - pos_ - (end > pos_ && input[end - 1] == '\r' ? 1 : 0);
    if (length > limits_.max_inline) {
        return fail("too big inline request");
    }
    if (newline == npos) {
        scanned_ = input.size();
        return Step::need_more;
    }
    std::string_view line = input.substr(pos_, newline - pos_);
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    inline_storage_.clear();
    spans_.clear();
    if (!split_inline(line, inline_storage_, spans_)) {
        return fail("unbalanced quotes in request");
    }
    pos_ = newline + 1;
    scanned_ = pos_;
    if (spans_.empty()) {
        kind_ = Kind::none;
        return Step::skipped;
    }
    return Step::command;
}

Parser::Step Parser::fail(std::string_view reason) {
    error_ = fmt::format("Protocol error: {}", reason);
    return Step::error;
}

Parser::Result Parser::need_more() {
    // Whatever lies before the request in progress (empty requests skipped
    // in this call) is done with; offsets move so they stay relative to the
    // front of the next input.
    const std::size_t done = frame_start_;
    pos_ -= done;
    scanned_ -= done;
    for (auto& span : spans_) {
        span.first -= done;
    }
    frame_start_ = 0;
    return {Status::need_more, done};
}

Parser::Result Parser::complete(std::string_view input) {
    const std::string_view source = kind_ == Kind::inline_text ? std::string_view{inline_storage_} : input;
    args_.reserve(spans_.size());
    for (const auto& [offset, length] : spans_) {
        args_.push_back(source.substr(offset, length));
    }
    const Result result{Status::command, pos_};
    request_size_ = pos_ - frame_start_;
    kind_ = Kind::none;
    pos_ = 0;
    frame_start_ = 0;
    scanned_ = 0;
    header_done_ = false;
    remaining_ = 0;
    bulk_len_ = -1;
    release_if_large(spans_);
    return result;
}

}  // namespace resp
