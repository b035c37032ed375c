// TlsStream: a TlsEngine driven over a coroutine stream socket. Each
// operation runs the engine, sends what it produced, and waits on the
// socket's readiness only when a try_read/try_write would block, as the
// plain streams do.
#include <cstddef>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "muxio/awaitables.hpp"
#include "muxio/error.hpp"
#include "muxio/tls.hpp"

namespace muxio {

namespace {

// Marks one side of a stream busy for the life of an operation's frame.
class SideGuard {
public:
    SideGuard(bool& busy, std::string_view operation, std::string_view side) : busy_{&busy} {
        if (busy) {
            throw std::logic_error(fmt::format("{}: another task is {} this TLS stream", operation, side));
        }
        busy = true;
    }
    SideGuard(const SideGuard&) = delete;
    SideGuard& operator=(const SideGuard&) = delete;
    SideGuard(SideGuard&&) = delete;
    SideGuard& operator=(SideGuard&&) = delete;
    ~SideGuard() { *busy_ = false; }

private:
    bool* busy_;
};

}  // namespace

TlsStream::TlsStream() noexcept = default;

TlsStream::TlsStream(OwnedSocket socket, TlsEngine engine) : socket_{std::move(socket)}, engine_{std::move(engine)} {}

TlsStream::TlsStream(TlsStream&& other) noexcept
    : socket_{std::move(other.socket_)},
      engine_{std::move(other.engine_)},
      reading_{std::exchange(other.reading_, false)},
      writing_{std::exchange(other.writing_, false)} {}

TlsStream& TlsStream::operator=(TlsStream&& other) noexcept {
    if (this != &other) {
        close();
        socket_ = std::move(other.socket_);
        engine_ = std::move(other.engine_);
        reading_ = std::exchange(other.reading_, false);
        writing_ = std::exchange(other.writing_, false);
    }
    return *this;
}

TlsStream::~TlsStream() {
    close();
}

const TlsContext& TlsStream::require_server(const TlsContext& context) {
    if (context.role() != TlsRole::server) {
        throw std::invalid_argument("TlsStream::server: the context is a client context (use TlsContext::server)");
    }
    return context;
}

void TlsStream::close() noexcept {
    if (socket_) {
        socket_->close();
    }
}

bool TlsStream::is_open() const noexcept {
    return socket_ && socket_->is_open();
}

void TlsStream::require_open(std::string_view operation) const {
    if (!is_open()) {
        throw std::logic_error(fmt::format("{}: TLS stream is closed", operation));
    }
}

void TlsStream::require_ready(std::string_view operation) const {
    require_open(operation);
    if (!engine_.handshake_done()) {
        throw std::logic_error(fmt::format("{}: the handshake is not done (co_await handshake() first)", operation));
    }
}

std::string TlsStream::describe_peer() const {
    std::string text = socket_->peer_address().to_string();
    if (engine_.role() == TlsRole::client && !engine_.server_name().empty()) {
        text += fmt::format(" (server name {})", engine_.server_name());
    }
    return text;
}

void TlsStream::fail(std::string_view operation) const {
    const std::error_code code = engine_.error();
    const std::string reason = engine_.error_message().empty() ? code.message() : engine_.error_message();
    throw TlsError{static_cast<TlsErrc>(code.value()),
                   fmt::format("{} with {}: {}", operation, describe_peer(), reason), engine_.verify_result()};
}

void TlsStream::fail_socket(std::error_code error, std::string_view operation) const {
    throw make_system_error(error.value(), fmt::format("{} with {}", operation, describe_peer()), socket_->fileno());
}

bool TlsStream::receive_now(std::string_view operation) {
    const std::span<std::byte> space = engine_.input_space();
    if (space.empty()) {
        return true;  // the engine holds input it has not taken yet, or the end
    }
    std::error_code error;
    const std::optional<std::size_t> received = socket_->try_read(space, error);
    if (received) {
        if (*received == 0) {
            engine_.input_ended();
        } else {
            engine_.commit_input(*received);
        }
        return true;
    }
    if (error) {
        fail_socket(error, operation);
    }
    return false;
}

bool TlsStream::send_now(std::string_view operation) {
    for (;;) {
        const std::span<const std::byte> output = engine_.output();
        if (output.empty()) {
            return true;
        }
        std::error_code error;
        const std::optional<std::size_t> sent = socket_->try_write(output, error);
        if (!sent) {
            if (error) {
                fail_socket(error, operation);
            }
            return false;
        }
        engine_.consume_output(*sent);
    }
}

void TlsStream::flush_now() noexcept {
    try {
        (void)send_now("tls");
    } catch (...) {
        // Best effort (an alert on its way out): the failure that made it is
        // what the caller reports.
    }
}

Task<void> TlsStream::handshake(std::stop_token token) {
    constexpr std::string_view operation = "tls handshake";
    require_open(operation);
    if (engine_.handshake_done()) {
        throw std::logic_error("tls handshake: done already");
    }
    const SideGuard reading{reading_, operation, "reading"};
    const SideGuard writing{writing_, operation, "writing"};
    for (;;) {
        const TlsStatus status = engine_.handshake();
        if (status == TlsStatus::failed) {
            flush_now();  // the alert telling the peer why
            fail(operation);
        }
        while (!send_now(operation)) {
            co_await socket_->writable(token);
        }
        if (status == TlsStatus::ok) {
            co_return;
        }
        if (status == TlsStatus::want_input) {
            while (!receive_now(operation)) {
                co_await socket_->readable(token);
            }
        }
    }
}

Task<std::size_t> TlsStream::read_some(std::span<std::byte> buffer, std::stop_token token) {
    constexpr std::string_view operation = "tls read";
    require_ready(operation);
    const SideGuard reading{reading_, operation, "reading"};
    for (;;) {
        const TlsResult result = engine_.read(buffer);
        // A read may produce output (a key update's answer, an alert); it
        // goes now if the socket takes it, else with the next write.
        flush_now();
        switch (result.status) {
            case TlsStatus::ok:
                co_return result.bytes;
            case TlsStatus::closed:
                co_return 0;
            case TlsStatus::failed:
                fail(operation);
            case TlsStatus::want_input:
                while (!receive_now(operation)) {
                    co_await socket_->readable(token);
                }
                break;
            case TlsStatus::want_output:
                // The output is full and the read must add to it. Without a
                // writer this read waits for room itself. With one, the room
                // TlsEngine::write() leaves for reads (half a record) is
                // used up: only a peer that sends messages demanding answers
                // faster than it reads them gets here, and it is refused
                // rather than buffered without bound.
                if (writing_) {
                    throw TlsError{TlsErrc::protocol_error,
                                   fmt::format("{} with {}: the peer demands answers faster than it reads them",
                                               operation, describe_peer())};
                }
                while (!send_now(operation)) {
                    co_await socket_->writable(token);
                }
                break;
        }
    }
}

Task<void> TlsStream::read_exact(std::span<std::byte> buffer, std::stop_token token) {
    std::size_t done = 0;
    while (done < buffer.size()) {
        const std::size_t got = co_await read_some(buffer.subspan(done), token);
        if (got == 0) {
            throw IncompleteRead{fmt::format("tls read_exact from {}: the stream ended after {} of {} bytes",
                                             describe_peer(), done, buffer.size()),
                                 done, buffer.size()};
        }
        done += got;
    }
}

Task<void> TlsStream::write_all(std::span<const std::byte> buffer, std::stop_token token) {
    constexpr std::string_view operation = "tls write";
    require_ready(operation);
    const SideGuard writing{writing_, operation, "writing"};
    while (!buffer.empty()) {
        const TlsResult result = engine_.write(buffer);
        if (result.status == TlsStatus::failed) {
            flush_now();
            fail(operation);
        }
        buffer = buffer.subspan(result.bytes);
        while (!send_now(operation)) {
            co_await socket_->writable(token);
        }
    }
    // What a read left behind goes out with this write.
    while (!send_now(operation)) {
        co_await socket_->writable(token);
    }
}

Task<void> TlsStream::write_all(std::string_view text, std::stop_token token) {
    return write_all(std::as_bytes(std::span{text.data(), text.size()}), std::move(token));
}

Task<void> TlsStream::shutdown(std::stop_token token) {
    constexpr std::string_view operation = "tls shutdown";
    require_ready(operation);
    const SideGuard writing{writing_, operation, "writing"};
    for (;;) {
        const TlsStatus status = engine_.shutdown();
        if (status == TlsStatus::failed) {
            fail(operation);
        }
        while (!send_now(operation)) {
            co_await socket_->writable(token);
        }
        if (status == TlsStatus::ok) {
            co_return;
        }
    }
}

Task<TlsStream> TlsStream::connect(Reactor& reactor, std::string host, std::uint16_t port, TlsContext context,
                                   std::stop_token token) {
    TcpStream tcp = co_await TcpStream::connect(reactor, host, port, token);
    TlsStream stream = client(std::move(tcp), context, host);
    co_await stream.handshake(token);
    co_return stream;
}

}  // namespace muxio
