#include "control.hpp"

#include <fmt/format.h>

namespace muxio::apps::daemon {

namespace {

constexpr std::string_view blanks = " \t\r";

// A word from the client, made safe to put in a one-line answer.
std::string printable(std::string_view word) {
    constexpr std::size_t limit = 64;
    std::string out;
    for (const char c : word.substr(0, limit)) {
        const auto byte = static_cast<unsigned char>(c);
        out += (byte < 0x20 || byte >= 0x7f) ? '?' : c;
    }
    if (word.size() > limit) {
        out += "...";
    }
    return out;
}

// A message made to fit on the reply's one line.
std::string one_line(std::string_view message) {
    std::string out{message};
    for (char& c : out) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
            c = '?';
        }
    }
    return out;
}

}  // namespace

std::optional<std::string> LineBuffer::next_line() {
    if (overflowed_) {
        return std::nullopt;
    }
    const std::size_t newline = buffer_.find('\n', start_);
    if (newline == std::string::npos) {
        if (pending() > max_line_) {
            overflowed_ = true;
        }
        return std::nullopt;
    }
    std::size_t end = newline;
    if (end > start_ && buffer_[end - 1] == '\r') {
        --end;
    }
    if (end - start_ > max_line_) {
        overflowed_ = true;
        return std::nullopt;
    }
    std::string line = buffer_.substr(start_, end - start_);
    start_ = newline + 1;
    // Drop what was handed out once it is most of the buffer, so the copy
    // is paid rarely and the buffer stays small.
    if (start_ == buffer_.size()) {
        buffer_.clear();
        start_ = 0;
    } else if (start_ > buffer_.size() / 2) {
        buffer_.erase(0, start_);
        start_ = 0;
    }
    return line;
}

std::string format_status(const StatusReport& report) {
    return fmt::format(
        "pid={} uptime={:.3f} ticks={} connections={} served={} errors={} control_clients={} generation={} state={}",
        report.pid, report.uptime, report.ticks, report.connections, report.served, report.errors,
        report.control_clients, report.generation, report.state);
}

std::optional<std::string> handle_control_line(std::string_view line, ControlTarget& target) {
    const std::size_t first = line.find_first_not_of(blanks);
    if (first == std::string_view::npos) {
        return std::nullopt;
    }
    line.remove_prefix(first);
    line = line.substr(0, line.find_last_not_of(blanks) + 1);
    const std::size_t space = line.find_first_of(blanks);
    const std::string_view command = line.substr(0, space);
    const bool has_arguments = space != std::string_view::npos;

    const bool known = command == "status" || command == "stop" || command == "reload" || command == "help";
    if (!known) {
        return fmt::format("error: unknown command '{}'", printable(command));
    }
    if (has_arguments) {
        return fmt::format("error: '{}' takes no arguments", command);
    }
    if (command == "status") {
        return format_status(target.status());
    }
    if (command == "stop") {
        return target.stop() ? "ok: stopping" : "ok: already stopping";
    }
    if (command == "reload") {
        const ReloadResult result = target.reload();
        if (!result.ok) {
            return fmt::format("error: reload failed, generation={} kept: {}", result.generation,
                               one_line(result.error));
        }
        return fmt::format("ok: reloaded, generation={}", result.generation);
    }
    return std::string{"ok: commands: status, reload, stop, help"};
}

}  // namespace muxio::apps::daemon
