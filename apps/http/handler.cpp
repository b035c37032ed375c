#include "handler.hpp"

#include <fcntl.h>
#include <http_parser.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <stdexcept>

#include <fmt/format.h>

#include "muxio/error.hpp"
#include "muxio/log.hpp"

namespace muxio::http {
namespace {

constexpr std::string_view text_plain = "text/plain; charset=utf-8";
constexpr std::string_view allowed_methods = "GET, HEAD";

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

// realpath(3) into a std::string; nullopt with errno set on failure.
std::optional<std::string> real_path(const std::string& path) {
    const std::unique_ptr<char, decltype(&std::free)> resolved{::realpath(path.c_str(), nullptr), &std::free};
    if (!resolved) {
        return std::nullopt;
    }
    return std::string{resolved.get()};
}

// The path the kernel has for an open descriptor; nullopt without /proc.
std::optional<std::string> path_of_fd(int fd) {
    std::array<char, PATH_MAX> buffer{};
    const std::string link = fmt::format("/proc/self/fd/{}", fd);
    const ssize_t length = ::readlink(link.c_str(), buffer.data(), buffer.size());
    if (length <= 0 || static_cast<std::size_t>(length) >= buffer.size()) {
        return std::nullopt;
    }
    return std::string{buffer.data(), static_cast<std::size_t>(length)};
}

// The path part of an origin-form or absolute-form request target, still
// percent-encoded; nullopt for any other form ("*", authority-form) or a
// target libhttp-parser's URL parser rejects.
std::optional<std::string_view> target_path(std::string_view target) {
    if (target.empty()) {
        return std::nullopt;
    }
    if (target.front() == '/') {
        return target.substr(0, target.find_first_of("?#"));
    }
    http_parser_url url{};
    http_parser_url_init(&url);
    if (http_parser_parse_url(target.data(), target.size(), 0, &url) != 0) {
        return std::nullopt;
    }
    if ((url.field_set & (1U << UF_PATH)) == 0) {
        return "/";
    }
    return target.substr(url.field_data[UF_PATH].off, url.field_data[UF_PATH].len);
}

// The decoded path split into segments: "." and empty segments dropped,
// ".." refused (nullopt), never resolved against the previous segment.
// `directory`: the path ends in "/" or "/." (a trailing slash once dot
// segments and doubled slashes are removed), so it names a directory.
struct PathSegments {
    std::vector<std::string_view> names;
    bool directory = false;
};

std::optional<PathSegments> safe_segments(std::string_view decoded) {
    PathSegments segments;
    while (!decoded.empty()) {
        const std::size_t slash = decoded.find('/');
        const std::string_view segment = decoded.substr(0, slash);
        decoded.remove_prefix(slash == std::string_view::npos ? decoded.size() : slash + 1);
        if (segment == "..") {
            return std::nullopt;
        }
        const bool dot_or_empty = segment.empty() || segment == ".";
        if (!dot_or_empty) {
            segments.names.push_back(segment);
        }
        // The last segment decides; one ending with '/' has an empty one after it.
        segments.directory = dot_or_empty || slash != std::string_view::npos;
    }
    return segments;
}

int status_for_errno(int error) noexcept {
    switch (error) {
        case ENOENT:
        case ENOTDIR:
        case ELOOP:
        case ENAMETOOLONG:
            return 404;
        case EACCES:
        case EPERM:
        case ENXIO:  // a socket or a FIFO without a writer
            return 403;
        default:
            return 500;
    }
}

}  // namespace

void OwnedFd::reset(int fd) noexcept {
    if (fd_ >= 0) {
        ::close(fd_);
    }
    fd_ = fd;
}

std::string_view reason_phrase(int status) noexcept {
    switch (status) {
        case 200:
            return "OK";
        case 400:
            return "Bad Request";
        case 403:
            return "Forbidden";
        case 404:
            return "Not Found";
        case 405:
            return "Method Not Allowed";
        case 408:
            return "Request Timeout";
        case 413:
            return "Content Too Large";
        case 414:
            return "URI Too Long";
        case 431:
            return "Request Header Fields Too Large";
        case 500:
            return "Internal Server Error";
        case 503:
            return "Service Unavailable";
        case 505:
            return "HTTP Version Not Supported";
        default:
            return "Unknown";
    }
}

std::string_view content_type_for(std::string_view name) noexcept {
    struct Mapping {
        std::string_view extension;
        std::string_view type;
    };
    static constexpr std::array<Mapping, 16> types{{
        {"html", "text/html; charset=utf-8"},
        {"htm", "text/html; charset=utf-8"},
        {"txt", "text/plain; charset=utf-8"},
        {"css", "text/css; charset=utf-8"},
        {"js", "text/javascript; charset=utf-8"},
        {"json", "application/json"},
        {"xml", "application/xml"},
        {"svg", "image/svg+xml"},
        {"png", "image/png"},
        {"jpg", "image/jpeg"},
        {"jpeg", "image/jpeg"},
        {"gif", "image/gif"},
        {"webp", "image/webp"},
        {"ico", "image/x-icon"},
        {"wasm", "application/wasm"},
        {"pdf", "application/pdf"},
    }};
    const std::size_t slash = name.rfind('/');
    const std::string_view base = slash == std::string_view::npos ? name : name.substr(slash + 1);
    const std::size_t dot = base.rfind('.');
    if (dot == std::string_view::npos || dot == 0) {
        return "application/octet-stream";
    }
    const std::string_view extension = base.substr(dot + 1);
    for (const Mapping& mapping : types) {
        if (extension.size() == mapping.extension.size() &&
            std::equal(extension.begin(), extension.end(), mapping.extension.begin(),
                       [](char a, char b) { return std::tolower(static_cast<unsigned char>(a)) == b; })) {
            return mapping.type;
        }
    }
    return "application/octet-stream";
}

std::optional<std::string> percent_decode(std::string_view text) {
    std::string decoded;
    decoded.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '%') {
            decoded.push_back(text[i]);
            continue;
        }
        if (i + 2 >= text.size()) {
            return std::nullopt;
        }
        const int high = hex_value(text[i + 1]);
        const int low = hex_value(text[i + 2]);
        if (high < 0 || low < 0 || (high == 0 && low == 0)) {
            return std::nullopt;
        }
        decoded.push_back(static_cast<char>(high * 16 + low));
        i += 2;
    }
    return decoded;
}

std::string http_date(std::time_t when) {
    static constexpr std::array<std::string_view, 7> days{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static constexpr std::array<std::string_view, 12> months{"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                             "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    std::tm utc{};
    if (::gmtime_r(&when, &utc) == nullptr) {
        return "Thu, 01 Jan 1970 00:00:00 GMT";
    }
    return fmt::format("{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT", days.at(static_cast<std::size_t>(utc.tm_wday)),
                       utc.tm_mday, months.at(static_cast<std::size_t>(utc.tm_mon)), utc.tm_year + 1900, utc.tm_hour,
                       utc.tm_min, utc.tm_sec);
}

std::string_view DateCache::get(std::time_t now) {
    if (now != formatted_for_) {
        text_ = http_date(now);
        formatted_for_ = now;
    }
    return text_;
}

namespace {

// Copies pieces one after another into memory known to be large enough.
class HeadWriter {
public:
    explicit HeadWriter(char* start) noexcept : next_{start} {}
    HeadWriter& operator<<(std::string_view piece) noexcept {
        std::memcpy(next_, piece.data(), piece.size());
        next_ += piece.size();
        return *this;
    }
    [[nodiscard]] char* end() const noexcept { return next_; }

private:
    char* next_;
};

}  // namespace

void append_head(std::string& out, const Response& response, const HeadOptions& options) {
    // Written into a buffer on the stack with plain copies, then appended
    // once: appending piece by piece to the string cost a capacity check
    // and a call per piece, a fifth of the hello server's own instructions.
    using namespace std::string_view_literals;
    const fmt::format_int status{response.status};
    const fmt::format_int length{response.content_length};
    const std::string_view reason = reason_phrase(response.status);
    // An upper bound: the fixed text, the variable pieces, every field.
    std::size_t size = 160 + reason.size() + server_name.size() + options.date.size();
    for (const auto& [name, value] : response.headers) {
        size += name.size() + value.size() + 4;
    }
    std::array<char, 1024> on_stack;  // NOLINT(cppcoreguidelines-pro-type-member-init): written before read
    std::unique_ptr<char[]> on_heap;
    char* start = on_stack.data();
    if (size > on_stack.size()) {
        on_heap = std::make_unique_for_overwrite<char[]>(size);
        start = on_heap.get();
    }
    HeadWriter head{start};
    if (response.status == 200) {
        // Nearly every answer: its status line and Server field in one piece.
        static constexpr std::string_view ok_start = "HTTP/1.1 200 OK\r\nServer: muxio-http\r\nDate: ";
        static_assert(ok_start.find(server_name) != std::string_view::npos);
        head << ok_start;
    } else {
        head << "HTTP/1.1 "sv << std::string_view{status.data(), status.size()} << " "sv << reason << "\r\nServer: "sv
             << server_name << "\r\nDate: "sv;
    }
    head << options.date << "\r\n"sv;
    for (const auto& [name, value] : response.headers) {
        head << name << ": "sv << value << "\r\n"sv;
    }
    head << "Content-Length: "sv << std::string_view{length.data(), length.size()} << "\r\n"sv;
    if (!options.keep_alive) {
        head << "Connection: close\r\n"sv;
    } else if (options.http10) {
        head << "Connection: keep-alive\r\n"sv;
    }
    head << "\r\n"sv;
    out.append(start, static_cast<std::size_t>(head.end() - start));
}

Handler::Handler(std::optional<std::string> root) {
    if (!root) {
        return;
    }
    std::optional<std::string> resolved = real_path(*root);
    if (!resolved) {
        muxio::throw_system_error(errno, fmt::format("realpath({})", *root));
    }
    struct stat info {};
    if (::stat(resolved->c_str(), &info) != 0) {
        muxio::throw_system_error(errno, fmt::format("stat({})", *resolved));
    }
    if (!S_ISDIR(info.st_mode)) {
        throw std::invalid_argument(fmt::format("root '{}' is not a directory", *root));
    }
    root_ = std::move(*resolved);
}

Response Handler::error(int status, bool close) {
    Response response;
    response.status = status;
    response.headers.add("Content-Type", text_plain);
    if (status == 405) {
        response.headers.add("Allow", allowed_methods);
    }
    response.body = fmt::format("{} {}\n", status, reason_phrase(status));
    response.content_length = response.body.size();
    response.close = close;
    return response;
}

Response Handler::handle(const Request& request) const {
    if (request.version_major != 1) {
        return error(505, true);
    }
    // RFC 9112 3.2: a 1.1 request without exactly one Host is answered 400;
    // more than one is as bad in 1.0.
    const std::size_t hosts = request.header_count("Host");
    if (hosts > 1 || (hosts == 0 && request.version_minor >= 1)) {
        return error(400);
    }
    const bool head = request.method == "HEAD";
    if (request.method != "GET" && !head) {
        // After CONNECT or an upgrade the client may already be sending
        // another protocol: stop reading this stream.
        return error(405, request.upgrade && request.method == "CONNECT");
    }
    Response response;
    // "/" itself, the greeting, needs no decoding.
    std::optional<std::string> decoded;
    if (request.target != "/") {
        const std::optional<std::string_view> path = target_path(request.target);
        if (!path) {
            return error(400);
        }
        decoded = percent_decode(*path);
        if (!decoded || decoded->empty() || decoded->front() != '/') {
            return error(400);
        }
    }
    if (!decoded || *decoded == "/") {
        response.headers.add("Content-Type", text_plain);
        response.body = hello_body;
        response.content_length = response.body.size();
    } else if (root_.empty()) {
        response = error(404);
    } else {
        response = serve_file(*decoded, head);
    }
    if (head) {
        response.send_body = false;
        response.body.clear();
        response.file.reset();
    }
    return response;
}

bool Handler::contains(std::string_view real_path) const noexcept {
    if (root_ == "/") {
        return real_path.starts_with('/');
    }
    return real_path.size() > root_.size() && real_path.starts_with(root_) && real_path[root_.size()] == '/';
}

Response Handler::serve_file(std::string_view path, bool head) const {
    const std::optional<PathSegments> segments = safe_segments(path);
    if (!segments) {
        muxio::logger().debug("muxio-http: refused '..' in {}", path);
        return error(400);
    }
    if (segments->names.empty()) {
        return error(403);  // the root directory itself, spelt "/./" or "//"
    }
    std::string joined = root_;
    for (const std::string_view segment : segments->names) {
        if (joined.empty() || joined.back() != '/') {
            joined += '/';
        }
        joined += segment;
    }
    const std::optional<std::string> resolved = real_path(joined);
    if (!resolved) {
        return error(status_for_errno(errno));
    }
    // Outside the root answers as missing: whether something exists out
    // there is none of the client's business.
    if (!contains(*resolved)) {
        muxio::logger().debug("muxio-http: {} resolves outside the root, to {}", path, *resolved);
        return error(404);
    }
    OwnedFd file{::open(resolved->c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)};
    if (!file) {
        return error(status_for_errno(errno));
    }
    struct stat info {};
    if (::fstat(file.get(), &info) != 0) {
        return error(500);
    }
    if (!S_ISREG(info.st_mode)) {
        return error(403);
    }
    if (segments->directory) {
        return error(404);  // a file named as a directory, "/index.html/"
    }
    if (const std::optional<std::string> opened = path_of_fd(file.get()); opened && !contains(*opened)) {
        muxio::logger().warn("muxio-http: {} was swapped for a link outside the root ({})", path, *opened);
        return error(404);
    }
    Response response;
    response.headers.add("Content-Type", content_type_for(segments->names.back()));
    response.content_length = static_cast<std::uint64_t>(info.st_size);
    if (!head) {
        response.file = std::move(file);
    }
    return response;
}

}  // namespace muxio::http
