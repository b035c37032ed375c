// muxio-daemon's configuration file: `key = value` lines, read at start and
// again on every reload (SIGHUP or the `reload` control command).
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <spdlog/common.h>

namespace muxio::apps::daemon {

using Seconds = std::chrono::duration<double>;

/// The range of a number of seconds the file may set, bounds included.
struct SecondsRange {
    double min;
    double max;
};

/// `interval`: 0.01 to 86400 seconds. Below, the heartbeat would keep the
/// loop busy (1e-300 rounds to a nanosecond); above a day is a mistake.
inline constexpr SecondsRange interval_range{0.01, 86400.0};
/// `drain_timeout`: 0 (close open connections at once) to 86400 seconds.
inline constexpr SecondsRange drain_timeout_range{0.0, 86400.0};

/// The largest configuration file read, in bytes (1 MiB): a few lines are
/// expected, so anything bigger is a mistake and is refused unread.
inline constexpr std::size_t max_config_file_size = std::size_t{1024} * 1024;

/// What the file may set; a key the file leaves out keeps its default.
struct Config {
    /// `interval`: seconds between heartbeats, in interval_range.
    Seconds interval{10.0};
    /// `greeting`: the line sent to each new TCP client (empty: none).
    std::string greeting = "hello from muxio-daemon";
    /// `log_level`: the daemon logger's level; unset keeps the default (warn)
    /// or what --log-level says.
    std::optional<spdlog::level::level_enum> log_level;
    /// `drain_timeout`: seconds a stop waits for open TCP connections before
    /// closing them, in drain_timeout_range.
    Seconds drain_timeout{5.0};

    friend bool operator==(const Config&, const Config&) = default;
};

/// A file that cannot be read or does not parse. The message names the
/// origin and, for a parse error, the line: "daemon.conf:3: interval: ...".
class ConfigError : public std::runtime_error {
public:
    ConfigError(const std::string& message, std::size_t line) : std::runtime_error{message}, line_{line} {}
    /// The 1-based line at fault; 0 when the file could not be read.
    [[nodiscard]] std::size_t line() const noexcept { return line_; }

private:
    std::size_t line_;
};

/// Parses the text of a configuration file. `origin` (usually the path)
/// starts every error message.
///
/// Syntax, one setting per line: `key = value`. Blank lines are skipped; `#`
/// starts a comment at the beginning of a line or after whitespace. A value
/// may be written in double quotes to keep leading or trailing spaces or a
/// `#` (the quotes are removed; there are no escapes). Each key at most once.
///
/// A number of seconds is a plain decimal (`2.5`, `1e-2`, no sign, no unit)
/// within the key's range (interval_range, drain_timeout_range).
///
/// Throws ConfigError naming the line for a line without `=`, an unknown or
/// repeated key, or a bad value; for a number, the message names the key,
/// the value and the range: "daemon.conf:3: interval: '1e-300' is out of
/// range (0.01 to 86400 seconds)". NaN, infinities, negative numbers,
/// numbers too large or too small for a double and trailing characters are
/// refused likewise.
[[nodiscard]] Config parse_config(std::string_view text, std::string_view origin = "config");

/// Reads and parses the file at `path`, which must be a regular file (a
/// symbolic link to one is followed) of at most max_config_file_size bytes.
/// Never blocks on what the path names: it is checked before it is opened,
/// opened with O_NONBLOCK and checked again, so a FIFO, a directory, a
/// device or a socket is refused without being read. ConfigError (line() is
/// 0) if it cannot be opened or read, is not a regular file or is too big,
/// saying which; ConfigError naming the line if it does not parse. The
/// message is one line.
[[nodiscard]] Config load_config(const std::string& path);

/// A level name as the file and --log-level write it: trace, debug, info,
/// warn (or warning), error, critical, off. nullopt for anything else.
[[nodiscard]] std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name) noexcept;

}  // namespace muxio::apps::daemon
