// muxio-daemon's control protocol without a socket: line splitting and the
// answer to each command, against a fake daemon.
#include <optional>
#include <string>
#include <string_view>

#include <doctest/doctest.h>

#include "control.hpp"

using muxio::apps::daemon::ControlTarget;
using muxio::apps::daemon::format_status;
using muxio::apps::daemon::handle_control_line;
using muxio::apps::daemon::LineBuffer;
using muxio::apps::daemon::ReloadResult;
using muxio::apps::daemon::StatusReport;

namespace {

class FakeDaemon final : public ControlTarget {
public:
    [[nodiscard]] StatusReport status() const override {
        ++status_calls;
        return report;
    }
    bool stop() override {
        ++stop_calls;
        const bool first = !stopping;
        stopping = true;
        return first;
    }
    ReloadResult reload() override {
        ++reload_calls;
        return next_reload;
    }

    StatusReport report;
    ReloadResult next_reload;
    bool stopping = false;
    mutable int status_calls = 0;
    int stop_calls = 0;
    int reload_calls = 0;
};

std::string answer(std::string_view line, ControlTarget& target) {
    const std::optional<std::string> reply = handle_control_line(line, target);
    REQUIRE(reply.has_value());
    return *reply;
}

}  // namespace

TEST_CASE("LineBuffer hands out lines split across reads") {
    LineBuffer lines{100};
    lines.append(std::string_view{"sta"});
    CHECK_FALSE(lines.next_line().has_value());
    lines.append(std::string_view{"tus\r\nhelp\n\nre"});
    CHECK(lines.next_line() == "status");
    CHECK(lines.next_line() == "help");
    CHECK(lines.next_line() == "");
    CHECK_FALSE(lines.next_line().has_value());
    CHECK(lines.pending() == 2);
    lines.append(std::string_view{"load\n"});
    CHECK(lines.next_line() == "reload");
    CHECK(lines.pending() == 0);
    CHECK_FALSE(lines.overflowed());
}

TEST_CASE("LineBuffer keeps a lone \\r inside a line") {
    LineBuffer lines{100};
    lines.append(std::string_view{"a\rb\n\r\n"});
    CHECK(lines.next_line() == "a\rb");
    CHECK(lines.next_line() == "");
}

TEST_CASE("LineBuffer accepts a line of the limit and refuses a longer one") {
    LineBuffer exact{4};
    exact.append(std::string_view{"abcd\r\n"});
    CHECK(exact.next_line() == "abcd");
    CHECK_FALSE(exact.overflowed());

    LineBuffer complete{4};
    complete.append(std::string_view{"ok\nabcde\nlater\n"});
    CHECK(complete.next_line() == "ok");
    CHECK_FALSE(complete.next_line().has_value());
    CHECK(complete.overflowed());
    CHECK_FALSE(complete.next_line().has_value());  // stays overflowed

    LineBuffer unfinished{4};
    unfinished.append(std::string_view{"abcd"});
    CHECK_FALSE(unfinished.next_line().has_value());
    CHECK_FALSE(unfinished.overflowed());
    unfinished.append(std::string_view{"e"});
    CHECK_FALSE(unfinished.next_line().has_value());
    CHECK(unfinished.overflowed());
}

TEST_CASE("LineBuffer over many lines keeps only what is pending") {
    LineBuffer lines{16};
    for (int i = 0; i < 1000; ++i) {
        lines.append(std::string_view{"line\nli"});
        REQUIRE(lines.next_line() == (i == 0 ? "line" : "liline"));
        CHECK(lines.pending() == 2);
    }
}

TEST_CASE("status is one line of key=value pairs") {
    StatusReport report;
    report.pid = 4242;
    report.uptime = 12.3456;
    report.ticks = 7;
    report.connections = 2;
    report.served = 9;
    report.errors = 4;
    report.control_clients = 1;
    report.generation = 3;
    report.state = "draining";
    CHECK(format_status(report) ==
          "pid=4242 uptime=12.346 ticks=7 connections=2 served=9 errors=4 control_clients=1 generation=3 "
          "state=draining");

    FakeDaemon daemon;
    daemon.report = report;
    CHECK(answer("status", daemon) == format_status(report));
    CHECK(answer("  status \r", daemon) == format_status(report));
    CHECK(daemon.status_calls == 2);
}

TEST_CASE("an unknown command is named in the error and changes nothing") {
    FakeDaemon daemon;
    CHECK(answer("frobnicate", daemon) == "error: unknown command 'frobnicate'");
    CHECK(answer("STATUS", daemon) == "error: unknown command 'STATUS'");
    CHECK(answer("restart now please", daemon) == "error: unknown command 'restart'");
    CHECK(answer(std::string_view{"st\x01tus\xff", 7}, daemon) == "error: unknown command 'st?tus?'");
    CHECK(answer(std::string(100, 'x'), daemon) == "error: unknown command '" + std::string(64, 'x') + "...'");
    CHECK(daemon.status_calls + daemon.stop_calls + daemon.reload_calls == 0);
}

TEST_CASE("a blank line gets no answer") {
    FakeDaemon daemon;
    CHECK_FALSE(handle_control_line("", daemon).has_value());
    CHECK_FALSE(handle_control_line(" \t\r", daemon).has_value());
}

TEST_CASE("commands take no arguments") {
    FakeDaemon daemon;
    CHECK(answer("stop now", daemon) == "error: 'stop' takes no arguments");
    CHECK(answer("reload\tfile", daemon) == "error: 'reload' takes no arguments");
    CHECK(daemon.stop_calls + daemon.reload_calls == 0);
}

TEST_CASE("stop starts a stop once") {
    FakeDaemon daemon;
    CHECK(answer("stop", daemon) == "ok: stopping");
    CHECK(answer("stop", daemon) == "ok: already stopping");
    CHECK(daemon.stop_calls == 2);
}

TEST_CASE("reload reports the new generation or the error") {
    FakeDaemon daemon;
    daemon.next_reload = ReloadResult{true, 5, {}};
    CHECK(answer("reload", daemon) == "ok: reloaded, generation=5");
    daemon.next_reload = ReloadResult{false, 5, "daemon.conf:2: unknown key 'x'"};
    CHECK(answer("reload", daemon) == "error: reload failed, generation=5 kept: daemon.conf:2: unknown key 'x'");
    // The reply stays one line whatever the error says.
    daemon.next_reload = ReloadResult{false, 5, "two\nlines\r"};
    CHECK(answer("reload", daemon) == "error: reload failed, generation=5 kept: two?lines?");
    CHECK(daemon.reload_calls == 3);
}

TEST_CASE("help lists the commands") {
    FakeDaemon daemon;
    CHECK(answer("help", daemon) == "ok: commands: status, reload, stop, help");
}
