// Handler: routing, static files under a root with containment checks, and
// response serialization. No sockets here: it maps a Request to a Response.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "request_parser.hpp"

namespace muxio::http {

/// An owned descriptor, closed on destruction.
class OwnedFd {
public:
    OwnedFd() = default;
    explicit OwnedFd(int fd) noexcept : fd_{fd} {}
    OwnedFd(OwnedFd&& other) noexcept : fd_{std::exchange(other.fd_, -1)} {}
    OwnedFd& operator=(OwnedFd&& other) noexcept {
        if (this != &other) {
            reset(std::exchange(other.fd_, -1));
        }
        return *this;
    }
    OwnedFd(const OwnedFd&) = delete;
    OwnedFd& operator=(const OwnedFd&) = delete;
    ~OwnedFd() {
        if (fd_ >= 0) {  // most responses hold no file: no call for them
            reset();
        }
    }

    [[nodiscard]] int get() const noexcept { return fd_; }
    [[nodiscard]] explicit operator bool() const noexcept { return fd_ >= 0; }
    void reset(int fd = -1) noexcept;
    /// Gives up ownership: returns the descriptor, which the caller closes.
    [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }

private:
    int fd_ = -1;
};

/// Header fields of a Response besides the ones append_head() writes: their
/// names and values are static text (Content-Type from a table, Allow), so
/// they are kept as views in place, without allocating per request.
class ResponseHeaders {
public:
    using Field = std::pair<std::string_view, std::string_view>;
    static constexpr std::size_t capacity = 4;

    /// Appends a field; std::length_error beyond `capacity`. Both views must
    /// outlive the response (string literals and static tables do).
    void add(std::string_view name, std::string_view value) {
        if (size_ == capacity) {
            throw std::length_error("Response: too many header fields");
        }
        fields_[size_++] = {name, value};
    }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] const Field* begin() const noexcept { return fields_.data(); }
    [[nodiscard]] const Field* end() const noexcept { return fields_.data() + size_; }

private:
    std::array<Field, capacity> fields_{};
    std::size_t size_ = 0;
};

/// What to send back for one request. Date, Server, Content-Length and
/// Connection are added by append_head(), not kept here.
struct Response {
    int status = 200;
    /// Other header fields, e.g. Content-Type, Allow.
    ResponseHeaders headers;
    /// The body when it is in memory; empty when `file` is set.
    std::string body;
    /// A regular file to send after the head, from offset 0, `content_length` bytes.
    OwnedFd file;
    /// Content-Length: body.size(), or the file's size.
    std::uint64_t content_length = 0;
    /// False for HEAD: the head announces the length, no body follows.
    bool send_body = true;
    /// The connection must close after this response, whatever the request asked.
    bool close = false;
};

/// The reason phrase of a status this server sends ("Not Found"), or "Unknown".
[[nodiscard]] std::string_view reason_phrase(int status) noexcept;

/// Content-Type for a file name, by extension (case-insensitive), with
/// application/octet-stream for anything unknown.
[[nodiscard]] std::string_view content_type_for(std::string_view name) noexcept;

/// Decodes %XX escapes; nullopt for a malformed escape or an encoded NUL.
/// '+' stays '+' (it means a space only in query strings).
[[nodiscard]] std::optional<std::string> percent_decode(std::string_view text);

/// An IMF-fixdate (RFC 9110), e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
[[nodiscard]] std::string http_date(std::time_t when);

/// Formats the Date header's value once per second.
class DateCache {
public:
    /// The date for `now`, reformatted only when the second changed.
    std::string_view get(std::time_t now);

private:
    std::time_t formatted_for_ = -1;
    std::string text_;
};

struct HeadOptions {
    std::string_view date;
    /// Whether the connection stays open after this response.
    bool keep_alive = true;
    /// The request was HTTP/1.0: keep-alive must then be said explicitly.
    bool http10 = false;
};

/// Appends the status line and header block of `response`, blank line
/// included, to `out`.
void append_head(std::string& out, const Response& response, const HeadOptions& options);

/// The name the Server header carries.
inline constexpr std::string_view server_name = "muxio-http";
/// The body of GET /.
inline constexpr std::string_view hello_body = "Hello, World!";

/// Maps requests to responses. Serves GET and HEAD of "/" with a greeting
/// and, when a root directory is given, of other paths with the regular
/// file at that path under the root.
///
/// Containment: the decoded path may not contain ".." segments; the file is
/// located with realpath(3), which must stay under the root's own real path
/// (so a symbolic link may point elsewhere inside the root, never outside),
/// opened with O_NOFOLLOW, and the descriptor's path is checked again through
/// /proc/self/fd so a link swapped in between cannot lead out either.
///
/// Paths: "." segments and doubled slashes are ignored ("/a/./b", "//a//b"
/// name "/a/b"). A path ending in "/" or "/." names a directory: a regular
/// file named so ("/index.html/", "/index.html/.", "/index.html//") is 404,
/// as for nginx. A directory is 403 with or without the trailing slash (no
/// listing, no index file, no redirect to the slashed form); anything that
/// is not a regular file (FIFO, socket, device) is 403 too.
class Handler {
public:
    /// `root`: the directory to serve files from, or nullopt to serve only
    /// "/". Throws std::system_error if it cannot be resolved,
    /// std::invalid_argument if it is not a directory.
    explicit Handler(std::optional<std::string> root = std::nullopt);

    /// The response to a request that parsed.
    [[nodiscard]] Response handle(const Request& request) const;

    /// A small text/plain error response for `status` (e.g. from a
    /// ParseError), closing the connection when `close`.
    [[nodiscard]] static Response error(int status, bool close = false);

    /// The root's real path; empty when none.
    [[nodiscard]] const std::string& root() const noexcept { return root_; }

private:
    [[nodiscard]] Response serve_file(std::string_view path, bool head) const;
    [[nodiscard]] bool contains(std::string_view real_path) const noexcept;

    std::string root_;  // realpath of the root, without a trailing '/' (except "/")
};

}  // namespace muxio::http
