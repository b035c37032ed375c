// BufferedReader of include/muxio/net.hpp: the buffered bytes first, then
// the asyncio sock_* pattern as in stream.cpp, the search for the delimiter
// resuming where the last one stopped.
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "muxio/net.hpp"
#include "net/socket_ops.hpp"

namespace muxio {

BufferedReader::BufferedReader(StreamSocket& stream, std::size_t capacity)
    : stream_{&stream}, buffer_(std::max<std::size_t>(capacity, 1)) {}

void BufferedReader::consume(std::size_t count) noexcept {
    begin_ += std::min(count, end_ - begin_);
}

void BufferedReader::make_room() {
    if (begin_ == end_) {
        begin_ = 0;
        end_ = 0;
    }
    if (end_ < buffer_.size()) {
        return;
    }
    if (begin_ > 0) {
        std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
        end_ -= begin_;
        begin_ = 0;
        return;
    }
    buffer_.resize(buffer_.size() * 2);
}

namespace detail {

namespace {

std::string_view operation_name(BufferedIo::Op op) noexcept {
    switch (op) {
        case BufferedIo::Op::read_until:
            return "read_until";
        case BufferedIo::Op::read_line:
            return "read_line";
        case BufferedIo::Op::read_some:
            return "read_some";
        case BufferedIo::Op::read_exact:
            return "read_exact";
    }
    return "buffered read";
}

// The delimiter as a C string literal would show it, for messages.
std::string quoted(std::string_view text) {
    std::string out = "\"";
    for (const char c : text) {
        switch (c) {
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            case '"':
            case '\\':
                out += '\\';
                out += c;
                break;
            default:
                if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
                    out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
                } else {
                    out += c;
                }
        }
    }
    out += '"';
    return out;
}

}  // namespace

bool BufferedIo::await_ready() {
    if (awaited_) [[unlikely]] {
        throw std::logic_error(fmt::format("{}: a buffered read can be awaited once", operation_name(op_)));
    }
    awaited_ = true;
    reader_->stream_->require_open(operation_name(op_));
    if (reader_->stream_->receiving_on_ring()) [[unlikely]] {
        // The reader reads the socket itself: bytes the ring's receive
        // queued would be skipped, and later ones raced for.
        throw std::logic_error(
            fmt::format("{}: the stream's reads run on the completion ring already (a read_some() or read_exact() on "
                        "the stream itself): read it through one of them only",
                        operation_name(op_)));
    }
    if (op_ == Op::read_until || op_ == Op::read_line) {
        if (delimiter_.empty()) {
            throw std::invalid_argument(fmt::format("{}: the delimiter is empty", operation_name(op_)));
        }
        if (max_ < delimiter_.size()) {
            throw std::invalid_argument(fmt::format("{}: max {} is shorter than the delimiter {}", operation_name(op_),
                                                    max_, quoted(delimiter_)));
        }
    }
    return attempt();
}

ReactorWait& BufferedIo::arm() {
    ReactorWait& wait =
        wait_.construct(ReactorWait::Kind::read, reader_->stream_->watch_, std::move(token_), &attempt_on_ready, this);
    armed_ = true;
    return wait;
}

bool BufferedIo::attempt() noexcept {
    return op_ == Op::read_until || op_ == Op::read_line ? attempt_line() : attempt_read();
}

bool BufferedIo::attempt_line() noexcept {
    BufferedReader& reader = *reader_;
    const int fd = reader.stream_->fileno();
    const std::size_t size = delimiter_.size();
    for (;;) {
        const std::size_t buffered = reader.end_ - reader.begin_;
        const std::size_t window = std::min(buffered, max_);
        if (window >= size) {
            const std::string_view seen{reinterpret_cast<const char*>(reader.buffer_.data() + reader.begin_), window};
            const std::size_t found = seen.find(delimiter_, scanned_);
            if (found != std::string_view::npos) {
                done_ = found + size;
                line_start_ = reader.begin_;
                reader.begin_ += done_;
                outcome_ = Outcome::done;
                return true;
            }
            // A delimiter split over two reads starts in the last size-1 bytes.
            scanned_ = window - (size - 1);
        }
        if (buffered >= max_) {
            outcome_ = Outcome::overrun;
            return true;
        }
        try {
            reader.make_room();
        } catch (...) {
            error_ = ENOMEM;
            outcome_ = Outcome::error;
            return true;
        }
        const std::size_t room = reader.buffer_.size() - reader.end_;
        std::byte* const into = reader.buffer_.data() + reader.end_;
        const ssize_t got = transfer_errno(error_, [&] { return ::recv(fd, into, room, 0); });
        if (got < 0) {
            if (error_ != 0) {
                outcome_ = Outcome::error;
                return true;
            }
            return false;
        }
        if (got == 0) {
            done_ = reader.end_ - reader.begin_;
            outcome_ = done_ == 0 ? Outcome::clean_end : Outcome::end_of_stream;
            return true;
        }
        reader.end_ += static_cast<std::size_t>(got);
        if (static_cast<std::size_t>(got) < room) {
            // The socket is most likely empty: look at what came, then wait
            // rather than make a read that fails.
            const std::size_t now = std::min(reader.end_ - reader.begin_, max_);
            const std::string_view seen{reinterpret_cast<const char*>(reader.buffer_.data() + reader.begin_), now};
            const std::size_t found = now >= size ? seen.find(delimiter_, scanned_) : std::string_view::npos;
            if (found == std::string_view::npos && reader.end_ - reader.begin_ < max_) {
                if (now >= size) {
                    scanned_ = now - (size - 1);
                }
                return false;
            }
        }
    }
}

bool BufferedIo::attempt_read() noexcept {
    BufferedReader& reader = *reader_;
    if (done_ == 0 && reader.end_ > reader.begin_) {
        const std::size_t taken = std::min(reader.end_ - reader.begin_, out_.size());
        std::memcpy(out_.data(), reader.buffer_.data() + reader.begin_, taken);
        reader.begin_ += taken;
        done_ = taken;
        if (op_ == Op::read_some || done_ == out_.size()) {
            outcome_ = Outcome::done;
            return true;
        }
    }
    const int fd = reader.stream_->fileno();
    if (op_ == Op::read_some) {
        const ssize_t got = transfer_errno(error_, [&] { return ::recv(fd, out_.data(), out_.size(), 0); });
        if (got >= 0) {
            done_ = static_cast<std::size_t>(got);
            outcome_ = Outcome::done;
            return true;
        }
    } else {
        while (done_ < out_.size()) {
            const std::span<std::byte> rest = out_.subspan(done_);
            const ssize_t got = transfer_errno(error_, [&] { return ::recv(fd, rest.data(), rest.size(), 0); });
            if (got < 0) {
                break;
            }
            if (got == 0) {
                outcome_ = Outcome::end_of_stream;
                return true;
            }
            done_ += static_cast<std::size_t>(got);
            if (done_ < out_.size()) {
                return false;  // the socket is empty: wait rather than fail a read
            }
        }
        if (done_ == out_.size()) {
            outcome_ = Outcome::done;
            return true;
        }
    }
    if (error_ != 0) {
        outcome_ = Outcome::error;
        return true;
    }
    return false;
}

std::optional<std::string_view> BufferedIo::line() const noexcept {
    if (outcome_ != Outcome::done) {
        return std::nullopt;
    }
    std::string_view text{reinterpret_cast<const char*>(reader_->buffer_.data() + line_start_), done_};
    if (op_ == Op::read_line) {
        text.remove_suffix(1);
        if (!text.empty() && text.back() == '\r') {
            text.remove_suffix(1);
        }
    }
    return text;
}

void BufferedIo::fail() const {
    const StreamSocket& stream = *reader_->stream_;
    if (outcome_ == Outcome::error) {
        stream.fail(error_, "read from");
    }
    const SocketAddress& peer = stream.peer_address();
    const std::string from = peer.family() == AF_UNSPEC ? std::string{} : " from " + peer.to_string();
    const std::string_view name = operation_name(op_);
    if (outcome_ == Outcome::overrun) {
        const std::size_t buffered = reader_->end_ - reader_->begin_;
        throw LimitOverrun{fmt::format("{}{} on fd {}: no {} within {} bytes (the limit)", name, from, stream.fileno(),
                                       quoted(delimiter_), max_),
                           max_, buffered};
    }
    if (op_ == Op::read_exact) {
        throw IncompleteRead{fmt::format("read_exact{} on fd {}: end of stream after {} of {} bytes", from,
                                         stream.fileno(), done_, out_.size()),
                             done_, out_.size()};
    }
    throw IncompleteRead{fmt::format("{}{} on fd {}: end of stream after {} bytes without {}", name, from,
                                     stream.fileno(), done_, quoted(delimiter_)),
                         done_, max_};
}

}  // namespace detail

}  // namespace muxio
