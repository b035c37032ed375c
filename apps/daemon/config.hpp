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

/// What the file may set; a key the file leaves out keeps its default.
struct Config {
    /// `interval`: seconds between heartbeats, > 0 and at most a day.
    Seconds interval{10.0};
    /// `greeting`: the line sent to each new TCP client (empty: none).
    std::string greeting = "hello from muxio-daemon";
    /// `log_level`: the daemon logger's level; unset keeps the default (warn)
    /// or what --log-level says.
    std::optional<spdlog::level::level_enum> log_level;
    /// `drain_timeout`: seconds a stop waits for open TCP connections before
    /// closing them, >= 0 and at most a day.
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
/// Throws ConfigError naming the line for a line without `=`, an unknown or
/// repeated key, or a value out of range.
[[nodiscard]] Config parse_config(std::string_view text, std::string_view origin = "config");

/// Reads and parses the file at `path`. ConfigError if it cannot be read
/// (line() is 0) or does not parse.
[[nodiscard]] Config load_config(const std::string& path);

/// A level name as the file and --log-level write it: trace, debug, info,
/// warn (or warning), error, critical, off. nullopt for anything else.
[[nodiscard]] std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name) noexcept;

}  // namespace muxio::apps::daemon
