#include "config.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <system_error>
#include <utility>

#include <fmt/format.h>

namespace muxio::apps::daemon {

namespace {

constexpr std::string_view blanks = " \t\r";

std::string_view trim(std::string_view text) noexcept {
    const std::size_t first = text.find_first_not_of(blanks);
    if (first == std::string_view::npos) {
        return {};
    }
    const std::size_t last = text.find_last_not_of(blanks);
    return text.substr(first, last - first + 1);
}

// Where an unquoted comment starts: a `#` at the start or after a blank.
std::size_t comment_start(std::string_view text) noexcept {
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '#' && (i == 0 || text[i - 1] == ' ' || text[i - 1] == '\t')) {
            return i;
        }
    }
    return std::string_view::npos;
}

// Error messages quote what the file said, one line, bounded.
std::string quoted(std::string_view text) {
    constexpr std::size_t limit = 60;
    std::string out = "'";
    for (const char c : text.substr(0, limit)) {
        out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
    }
    out += text.size() > limit ? "...'" : "'";
    return out;
}

class Parser {
public:
    explicit Parser(std::string_view origin) : origin_{origin} {}

    Config parse(std::string_view text) {
        for (std::size_t number = 1;; ++number) {
            const std::size_t end = text.find('\n');
            parse_line(text.substr(0, end), number);
            if (end == std::string_view::npos) {
                return config_;
            }
            text.remove_prefix(end + 1);
        }
    }

private:
    enum Key : std::size_t { interval, greeting, log_level, drain_timeout, key_count };
    static constexpr std::array<std::string_view, key_count> key_names{"interval", "greeting", "log_level",
                                                                       "drain_timeout"};

    [[noreturn]] void fail(std::size_t line, std::string_view message) const {
        throw ConfigError{fmt::format("{}:{}: {}", origin_, line, message), line};
    }

    void parse_line(std::string_view line, std::size_t number) {
        const std::size_t equals = line.find('=');
        // A comment may hold a `=`: look for the key only before one.
        const std::size_t comment = comment_start(line);
        if (equals == std::string_view::npos || (comment != std::string_view::npos && comment < equals)) {
            if (!trim(line.substr(0, comment)).empty()) {
                fail(number, fmt::format("expected 'key = value', got {}", quoted(trim(line))));
            }
            return;  // blank or comment
        }
        const std::string_view name = trim(line.substr(0, equals));
        if (name.empty()) {
            fail(number, "missing key before '='");
        }
        std::size_t key = 0;
        while (key < key_count && key_names[key] != name) {
            ++key;
        }
        if (key == key_count) {
            fail(number,
                 fmt::format("unknown key {} (known: interval, greeting, log_level, drain_timeout)", quoted(name)));
        }
        if (seen_[key] != 0) {
            fail(number, fmt::format("{} is already set on line {}", name, seen_[key]));
        }
        seen_[key] = number;
        const std::string_view value = value_of(line.substr(equals + 1), number);
        switch (static_cast<Key>(key)) {
            case interval:
                config_.interval = Seconds{seconds(name, value, number, interval_range)};
                break;
            case drain_timeout:
                config_.drain_timeout = Seconds{seconds(name, value, number, drain_timeout_range)};
                break;
            case greeting:
                for (const char c : value) {
                    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
                        fail(number, "greeting: control characters are not allowed");
                    }
                }
                config_.greeting = std::string{value};
                break;
            case log_level:
                config_.log_level = parse_log_level(value);
                if (!config_.log_level) {
                    fail(number,
                         fmt::format("log_level: {} is not one of trace, debug, info, warn, error, critical, off",
                                     quoted(value)));
                }
                break;
            case key_count:
                break;
        }
    }

    // The value after '=': quoted (taken as written) or bare (comment and
    // surrounding blanks removed).
    std::string_view value_of(std::string_view raw, std::size_t number) const {
        const std::string_view text = trim(raw);
        if (!text.empty() && text.front() == '"') {
            const std::size_t close = text.find('"', 1);
            if (close == std::string_view::npos) {
                fail(number, "unterminated quoted value");
            }
            const std::string_view rest = trim(text.substr(close + 1));
            if (!rest.empty() && rest.front() != '#') {
                fail(number, fmt::format("unexpected {} after the quoted value", quoted(rest)));
            }
            return text.substr(1, close - 1);
        }
        return trim(text.substr(0, comment_start(text)));
    }

    // A plain decimal within `range`. from_chars takes no '+', no space and
    // no hexadecimal, and reports a value too large or too small for a
    // double as out of range; NaN and the infinities parse, and are refused
    // here.
    double seconds(std::string_view name, std::string_view value, std::size_t number, SecondsRange range) const {
        double parsed = 0.0;
        const char* const end = value.data() + value.size();
        const auto [stop, error] = std::from_chars(value.data(), end, parsed, std::chars_format::general);
        const bool out_of_range = error == std::errc::result_out_of_range && stop == end;
        if (!out_of_range && (value.empty() || error != std::errc{} || stop != end || std::isnan(parsed))) {
            fail(number, fmt::format("{}: {} is not a number of seconds (range {} to {})", name, quoted(value),
                                     range.min, range.max));
        }
        if (out_of_range || !(parsed >= range.min && parsed <= range.max)) {
            fail(number,
                 fmt::format("{}: {} is out of range ({} to {} seconds)", name, quoted(value), range.min, range.max));
        }
        return parsed;
    }

    std::string_view origin_;
    Config config_;
    std::array<std::size_t, key_count> seen_{};  // line of each key, 0 if not yet
};

}  // namespace

std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name) noexcept {
    using spdlog::level::level_enum;
    static constexpr std::array<std::pair<std::string_view, level_enum>, 8> levels{{
        {"trace", level_enum::trace},
        {"debug", level_enum::debug},
        {"info", level_enum::info},
        {"warn", level_enum::warn},
        {"warning", level_enum::warn},
        {"error", level_enum::err},
        {"critical", level_enum::critical},
        {"off", level_enum::off},
    }};
    for (const auto& [text, level] : levels) {
        if (text == name) {
            return level;
        }
    }
    return std::nullopt;
}

Config parse_config(std::string_view text, std::string_view origin) {
    return Parser{origin}.parse(text);
}

namespace {

// Closes a descriptor when the scope ends, however it ends.
class FileCloser {
public:
    explicit FileCloser(int fd) noexcept : fd_{fd} {}
    ~FileCloser() { ::close(fd_); }
    FileCloser(const FileCloser&) = delete;
    FileCloser& operator=(const FileCloser&) = delete;

private:
    int fd_;
};

// What is wrong with a file of this kind and size as a configuration file;
// empty if nothing is.
std::string refusal(const struct stat& info) {
    if (S_ISREG(info.st_mode)) {
        if (info.st_size > static_cast<off_t>(max_config_file_size)) {
            return fmt::format("too big: {} bytes, at most {} are read", info.st_size, max_config_file_size);
        }
        return {};
    }
    const char* kind = "a special file";
    if (S_ISDIR(info.st_mode)) {
        kind = "a directory";
    } else if (S_ISFIFO(info.st_mode)) {
        kind = "a FIFO";
    } else if (S_ISCHR(info.st_mode)) {
        kind = "a character device";
    } else if (S_ISBLK(info.st_mode)) {
        kind = "a block device";
    } else if (S_ISSOCK(info.st_mode)) {
        kind = "a socket";
    }
    return fmt::format("not a regular file but {}", kind);
}

}  // namespace

Config load_config(const std::string& path) {
    // The path goes into one-line messages (the control channel's replies).
    std::string name;
    for (const char c : path) {
        name += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
    }
    const auto failure = [&name](std::string_view why) { return ConfigError{fmt::format("{}: {}", name, why), 0}; };
    const auto system_failure = [&failure](std::string_view operation, int error) {
        return failure(fmt::format("cannot {}: {}", operation, std::system_category().message(error)));
    };

    // Checked before opening: opening a FIFO for reading waits for a writer,
    // and opening a device may do something. Checked again on the open
    // descriptor, which O_NONBLOCK keeps from waiting, in case the path
    // changed in between. POSIX rather than a stream: its errno is reliable.
    struct stat info {};
    if (::stat(path.c_str(), &info) != 0) {
        throw system_failure("open", errno);
    }
    if (const std::string why = refusal(info); !why.empty()) {
        throw failure(why);
    }
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        throw system_failure("open", errno);
    }
    const FileCloser closer{fd};
    if (::fstat(fd, &info) != 0) {
        throw system_failure("stat", errno);
    }
    if (const std::string why = refusal(info); !why.empty()) {
        throw failure(why);
    }
    // The file may still grow while it is read: the bound holds for the
    // bytes read, not only for the size stat reported.
    std::string contents;
    contents.reserve(static_cast<std::size_t>(info.st_size));
    std::array<char, 4096> chunk{};
    for (;;) {
        const ssize_t got = ::read(fd, chunk.data(), chunk.size());
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got < 0) {
            throw system_failure("read", errno);
        }
        if (got == 0) {
            break;
        }
        contents.append(chunk.data(), static_cast<std::size_t>(got));
        if (contents.size() > max_config_file_size) {
            throw failure(fmt::format("too big: more than {} bytes", max_config_file_size));
        }
    }
    return parse_config(contents, name);
}

}  // namespace muxio::apps::daemon
