// muxio-daemon's control protocol, apart from any socket: splitting a byte
// stream into lines, and answering one command line.
//
// The protocol: the client sends one command per line (`\n`, an optional
// `\r` before it is dropped); the daemon answers each non-blank line with
// exactly one line. Blank lines get no answer. Answers start with `ok:` or
// `error:`, except `status`, whose answer is the key=value line itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace muxio::apps::daemon {

/// Collects bytes from a stream and hands out complete lines.
class LineBuffer {
public:
    /// `max_line`: the longest line accepted, without its `\n`.
    explicit LineBuffer(std::size_t max_line) : max_line_{max_line} {}

    void append(std::string_view bytes) { buffer_.append(bytes); }
    void append(std::span<const std::byte> bytes) {
        append(std::string_view{reinterpret_cast<const char*>(bytes.data()), bytes.size()});
    }

    /// The next complete line, without `\n` or a `\r` before it; nullopt
    /// when none is complete yet, or once overflowed().
    [[nodiscard]] std::optional<std::string> next_line();
    /// True once a line longer than `max_line` came (complete or not): the
    /// stream is no longer in step and should be closed.
    [[nodiscard]] bool overflowed() const noexcept { return overflowed_; }
    /// Bytes received and not yet handed out.
    [[nodiscard]] std::size_t pending() const noexcept { return buffer_.size() - start_; }

private:
    std::string buffer_;
    std::size_t start_ = 0;  // where the next line begins in buffer_
    std::size_t max_line_;
    bool overflowed_ = false;
};

/// What `status` reports.
struct StatusReport {
    std::int64_t pid = 0;
    /// Seconds since the daemon started.
    double uptime = 0.0;
    std::uint64_t ticks = 0;
    /// TCP connections open now.
    std::size_t connections = 0;
    /// TCP connections accepted since the start.
    std::uint64_t served = 0;
    /// TCP and control connections ended by an error since the start: a
    /// failed read or write, or one the daemon could not serve at all (the
    /// reactor refused to watch its descriptor); each was closed at once.
    std::uint64_t errors = 0;
    /// Control clients connected now, the one asking included.
    std::size_t control_clients = 0;
    /// 1 for the configuration read at start, plus one per successful reload.
    std::uint64_t generation = 0;
    /// running, draining or stopping.
    std::string_view state = "running";
};

/// The status line: `pid=… uptime=… ticks=… connections=… served=…
/// errors=… control_clients=… generation=… state=…`, uptime in seconds with
/// three decimals.
[[nodiscard]] std::string format_status(const StatusReport& report);

/// The outcome of a reload.
struct ReloadResult {
    bool ok = false;
    /// The generation now in force (unchanged when the reload failed).
    std::uint64_t generation = 0;
    /// Why it failed; empty on success.
    std::string error;
};

/// What the control commands act on: the daemon, or a fake in the tests.
class ControlTarget {
public:
    virtual ~ControlTarget() = default;
    [[nodiscard]] virtual StatusReport status() const = 0;
    /// Begins a graceful stop, as SIGTERM does. Returns false if one was
    /// already under way (which is left as it is).
    virtual bool stop() = 0;
    /// Reads the configuration file again, as SIGHUP does; a failure keeps
    /// the configuration in force.
    virtual ReloadResult reload() = 0;

protected:
    ControlTarget() = default;
    ControlTarget(const ControlTarget&) = default;
    ControlTarget& operator=(const ControlTarget&) = default;
    ControlTarget(ControlTarget&&) = default;
    ControlTarget& operator=(ControlTarget&&) = default;
};

/// Answers one line of the control protocol (without its `\n`): the reply
/// line without `\n`, or nullopt for a blank line. Commands are `status`,
/// `stop`, `reload` and `help`, lower case, without arguments; anything
/// else is answered `error: unknown command 'x'` (x the first word,
/// non-printable bytes shown as `?`), and the connection stays usable.
[[nodiscard]] std::optional<std::string> handle_control_line(std::string_view line, ControlTarget& target);

}  // namespace muxio::apps::daemon
