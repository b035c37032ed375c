// What the minimal HTTP hello servers of bench/http share: the response bytes
// (the very bytes muxio-http answers `GET /` with), the request framing, and
// the per-connection steps of the two servers that drive raw descriptors
// (epoll and libevent).
//
// The request "parser" is deliberately minimal: a request is everything up to
// and including the next "\r\n\r\n". No method, target, version or header is
// looked at, and a request body (Content-Length, chunked) is not supported.
// That is enough for wrk's keep-alive, possibly pipelined `GET /` and is the
// least work a server can do per request; muxio-http runs a full HTTP/1.1
// parser (libhttp-parser) and its handler, so this favours the peers.
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <string>
#include <string_view>

namespace hello {

/// Size of every read (muxio-http reads up to 64 KiB at a time too).
inline constexpr std::size_t read_size = 64 * 1024;
/// Most unframed input one connection may hold before it is closed.
inline constexpr std::size_t max_carry = 64 * 1024;

/// The response to every request, with the current second's Date header,
/// rebuilt when the second changes. Header set and order as muxio-http's
/// answer to a keep-alive HTTP/1.1 `GET /` (apps/http/handler.cpp).
class Response {
public:
    std::string_view get() {
        const std::time_t now = std::time(nullptr);
        if (now != built_for_) {
            build(now);
        }
        return text_;
    }

private:
    void build(std::time_t now) {
        static constexpr std::array<const char*, 7> days{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
        static constexpr std::array<const char*, 12> months{"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        std::tm utc{};
        ::gmtime_r(&now, &utc);
        std::array<char, 64> date{};
        std::snprintf(date.data(), date.size(), "%s, %02d %s %04d %02d:%02d:%02d GMT",
                      days[static_cast<std::size_t>(utc.tm_wday) % days.size()], utc.tm_mday,
                      months[static_cast<std::size_t>(utc.tm_mon) % months.size()], utc.tm_year + 1900, utc.tm_hour,
                      utc.tm_min, utc.tm_sec);
        text_ = "HTTP/1.1 200 OK\r\nServer: muxio-http\r\nDate: ";
        text_ += date.data();
        text_ +=
            "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 13\r\n\r\n"
            "Hello, World!";
        built_for_ = now;
    }

    std::string text_;
    std::time_t built_for_ = -1;
};

/// Counts the complete requests in `carry` + `data` and keeps the incomplete
/// tail in `carry`. Returns the count, or -1 when the tail grows past
/// max_carry (the connection should be closed).
inline long frame_requests(std::string& carry, std::string_view data) {
    long count = 0;
    const auto scan = [&count](std::string_view bytes) {
        std::size_t position = 0;
        for (;;) {
            const std::size_t end = bytes.find("\r\n\r\n", position);
            if (end == std::string_view::npos) {
                return position;
            }
            ++count;
            position = end + 4;
        }
    };
    if (carry.empty()) {
        // The common case: whole requests in one read, no copy.
        const std::size_t used = scan(data);
        carry.assign(data.substr(used));
    } else {
        carry.append(data);
        const std::size_t used = scan(carry);
        carry.erase(0, used);
    }
    return carry.size() > max_carry ? -1 : count;
}

/// Appends `count` responses to `out`.
inline void append_responses(std::string& out, Response& response, long count) {
    for (long i = 0; i < count; ++i) {
        out += response.get();
    }
}

// ----- Raw-descriptor servers (epoll, libevent) ------------------------------

struct Connection {
    int fd = -1;
    std::string carry;    // an incomplete request
    std::string pending;  // responses the socket did not take yet
    std::size_t written = 0;
};

enum class Next { nothing, watch_writable, watch_readable, close };

/// Shared by every connection of one server: the read buffer, the response
/// and the buffer responses are assembled in. One thread only.
struct Scratch {
    std::array<char, read_size> input{};
    std::string output;
    Response response;
};

/// Reads once, answers every complete request with one write; what the
/// socket does not take is kept and the connection stops reading.
inline Next on_readable(Connection& connection, Scratch& scratch) {
    const ssize_t got = ::read(connection.fd, scratch.input.data(), scratch.input.size());
    if (got <= 0) {
        return got == 0 || (errno != EAGAIN && errno != EINTR) ? Next::close : Next::nothing;
    }
    const long count =
        frame_requests(connection.carry, std::string_view{scratch.input.data(), static_cast<std::size_t>(got)});
    if (count <= 0) {
        return count < 0 ? Next::close : Next::nothing;
    }
    scratch.output.clear();
    append_responses(scratch.output, scratch.response, count);
    const ssize_t sent = ::send(connection.fd, scratch.output.data(), scratch.output.size(), MSG_NOSIGNAL);
    if (sent == static_cast<ssize_t>(scratch.output.size())) {
        return Next::nothing;
    }
    if (sent < 0 && errno != EAGAIN) {
        return Next::close;
    }
    const auto taken = static_cast<std::size_t>(sent < 0 ? 0 : sent);
    connection.pending.assign(scratch.output, taken);
    connection.written = 0;
    return Next::watch_writable;
}

/// Writes more of what is pending; back to reading once it is all out.
inline Next on_writable(Connection& connection) {
    const std::size_t left = connection.pending.size() - connection.written;
    const ssize_t sent = ::send(connection.fd, connection.pending.data() + connection.written, left, MSG_NOSIGNAL);
    if (sent < 0) {
        return errno != EAGAIN ? Next::close : Next::nothing;
    }
    connection.written += static_cast<std::size_t>(sent);
    if (connection.written == connection.pending.size()) {
        connection.pending.clear();
        return Next::watch_readable;
    }
    return Next::nothing;
}

// ----- The servers (one .cpp each); they run until the process is killed. ----

[[noreturn]] void serve_epoll(std::uint16_t port);
[[noreturn]] void serve_libuv(std::uint16_t port);
[[noreturn]] void serve_libevent(std::uint16_t port);
[[noreturn]] void serve_asio(std::uint16_t port);
[[noreturn]] void serve_muxio(std::uint16_t port);

}  // namespace hello
