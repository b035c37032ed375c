// What the transport and server tests share: a protocol that records its
// events, and bounded loops over the reactor.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "muxio/transport.hpp"
#include "support/support.hpp"

namespace muxio::test {

/// Records what a transport tells it; each hook may be given behaviour.
struct Recorder : Protocol {
    Transport* transport = nullptr;
    std::string received;
    int made = 0;
    int lost = 0;
    int eofs = 0;
    int pauses = 0;
    int resumes = 0;
    int timeouts = 0;
    std::optional<TimeoutKind> last_timeout;
    std::optional<std::error_code> reason;
    bool keep_open_on_eof = false;
    bool echo = false;
    std::function<void(Recorder&)> on_made;
    std::function<void(Recorder&, std::span<const std::byte>)> on_data;
    std::function<void(Recorder&)> on_pause;
    std::function<void(Recorder&)> on_resume;
    std::function<bool(Recorder&, TimeoutKind)> on_timeout;
    std::function<void(Recorder&)> on_lost;

    void connection_made(Transport& made_on) override {
        transport = &made_on;
        ++made;
        if (on_made) {
            on_made(*this);
        }
    }
    void data_received(std::span<const std::byte> data) override {
        received.append(reinterpret_cast<const char*>(data.data()), data.size());
        if (echo) {
            transport->write(data);
        }
        if (on_data) {
            on_data(*this, data);
        }
    }
    bool eof_received() override {
        ++eofs;
        return keep_open_on_eof;
    }
    void pause_writing() override {
        ++pauses;
        if (on_pause) {
            on_pause(*this);
        }
    }
    void resume_writing() override {
        ++resumes;
        if (on_resume) {
            on_resume(*this);
        }
    }
    bool timed_out(TimeoutKind kind) override {
        ++timeouts;
        last_timeout = kind;
        return on_timeout ? on_timeout(*this, kind) : false;
    }
    void connection_lost(std::error_code why) override {
        ++lost;
        reason = why;
        if (on_lost) {
            on_lost(*this);
        }
    }
};

/// Runs iterations until `done()` holds, at most `limit` of them and 10 s;
/// returns whether it held.
inline bool run_until(Reactor& reactor, const std::function<bool()>& done, int limit = 10000) {
    const Stopwatch watch;
    for (int i = 0; i < limit && !done(); ++i) {
        if (watch.elapsed() > std::chrono::seconds{10}) {
            return done();
        }
        reactor.run_once(std::chrono::milliseconds{50});
    }
    return done();
}

/// Reads whatever is readable on non-blocking `fd` into `into`; returns
/// false at the end of the stream or an error.
inline bool read_available(int fd, std::string& into) {
    char chunk[65536];
    for (;;) {
        const ssize_t got = ::recv(fd, chunk, sizeof chunk, 0);
        if (got > 0) {
            into.append(chunk, static_cast<std::size_t>(got));
            continue;
        }
        return got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
}

inline std::span<const std::byte> bytes_of(std::string_view text) {
    return std::as_bytes(std::span{text.data(), text.size()});
}

}  // namespace muxio::test
