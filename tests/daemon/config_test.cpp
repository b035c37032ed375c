// muxio-daemon's configuration file: what parses, what is refused, and that
// every refusal names its line.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "config.hpp"
#include "fifo_guard.hpp"
#include "muxio/net.hpp"
#include "support/support.hpp"

using muxio::apps::daemon::Config;
using muxio::apps::daemon::ConfigError;
using muxio::apps::daemon::load_config;
using muxio::apps::daemon::parse_config;
using muxio::apps::daemon::parse_log_level;
using muxio::apps::daemon::Seconds;

namespace {

// The error parse_config throws for `text`, which must be refused.
ConfigError refusal(std::string_view text) {
    try {
        (void)parse_config(text, "test.conf");
    } catch (const ConfigError& error) {
        return error;
    }
    FAIL("accepted: ", text);
    return ConfigError{"", 0};
}

void check_refused(std::string_view text, std::size_t line, std::string_view words) {
    const ConfigError error = refusal(text);
    CAPTURE(text);
    CHECK(error.line() == line);
    const std::string message = error.what();
    CHECK_MESSAGE(message.starts_with("test.conf:" + std::to_string(line) + ": "), message);
    CHECK_MESSAGE(message.find(words) != std::string::npos, message);
}

// A temporary directory, removed with what the test put in it.
struct TempDir {
    std::string path;
    TempDir() {
        std::string pattern = "/tmp/muxio-daemon-config-XXXXXX";
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path = pattern;
    }
    ~TempDir() {
        const std::string command = "rm -rf '" + path + "'";
        (void)std::system(command.c_str());
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

}  // namespace

TEST_CASE("an empty file gives the defaults") {
    const Config defaults;
    CHECK(parse_config("") == defaults);
    CHECK(parse_config("\n\n   \n# only a comment\n") == defaults);
    CHECK(defaults.interval == Seconds{10.0});
    CHECK(defaults.drain_timeout == Seconds{5.0});
    CHECK(defaults.greeting == "hello from muxio-daemon");
    CHECK_FALSE(defaults.log_level.has_value());
}

TEST_CASE("every key is read, around comments and blank lines") {
    const Config config = parse_config(
        "# muxio-daemon\n"
        "\n"
        "interval = 2.5\n"
        "  greeting=Welcome, friend   \n"
        "log_level = debug   # while testing\n"
        "\t# indented comment = not a key\n"
        "drain_timeout = 0\n");
    CHECK(config.interval == Seconds{2.5});
    CHECK(config.greeting == "Welcome, friend");
    CHECK(config.log_level == spdlog::level::debug);
    CHECK(config.drain_timeout == Seconds{0.0});
}

TEST_CASE("CRLF line ends and a missing final newline are accepted") {
    const Config config = parse_config("interval = 1\r\ngreeting = hi\r\nlog_level = warn");
    CHECK(config.interval == Seconds{1.0});
    CHECK(config.greeting == "hi");
    CHECK(config.log_level == spdlog::level::warn);
}

TEST_CASE("a quoted value keeps its spaces and a #") {
    CHECK(parse_config("greeting = \"  we're #1  \"  # comment\n").greeting == "  we're #1  ");
    CHECK(parse_config("greeting = \"\"\n").greeting.empty());
    CHECK(parse_config("greeting = a#b\n").greeting == "a#b");  // not after a blank: not a comment
    CHECK(parse_config("greeting =\n").greeting.empty());
}

TEST_CASE("bad numbers are refused, naming the key and the line") {
    check_refused("interval = fast\n", 1, "interval: 'fast' is not a number of seconds (range 0.01 to 86400)");
    check_refused("\n\ninterval = 1.5s\n", 3, "'1.5s' is not a number");
    check_refused("interval =\n", 1, "'' is not a number");
    check_refused("interval = nan\n", 1, "not a number");
    check_refused("interval = inf\n", 1, "out of range");
    check_refused("interval = 0\n", 1, "out of range");
    check_refused("interval = -1\n", 1, "out of range");
    check_refused("interval = 1e9\n", 1, "out of range");
    check_refused("drain_timeout = -0.5\n", 1, "drain_timeout: '-0.5' is out of range (0 to 86400 seconds)");
    check_refused("drain_timeout = 5 seconds\n", 1, "not a number");
}

namespace {

// Every way a number of seconds can be wrong, for the key `name` whose
// range is `range`; and the bounds themselves accepted.
void check_seconds_key(std::string_view name, muxio::apps::daemon::SecondsRange range, Seconds Config::*field) {
    const std::string key{name};
    const std::string in_range = fmt::format("({} to {} seconds)", range.min, range.max);
    const std::string not_number = fmt::format("is not a number of seconds (range {} to {})", range.min, range.max);
    for (const double accepted : {range.min, range.max, (range.min + range.max) / 2}) {
        const std::string text = fmt::format("{} = {}\n", key, accepted);
        CAPTURE(text);
        CHECK(parse_config(text).*field == Seconds{accepted});
    }
    CHECK(parse_config(key + " = 1e1\n").*field == Seconds{10.0});
    CHECK(parse_config(key + " = \"2.5\"\n").*field == Seconds{2.5});
    CHECK(parse_config(key + " = .5   # half a second\n").*field == Seconds{0.5});

    const std::string below = range.min > 0 ? fmt::format("{}", range.min * 0.999) : "-0.001";
    const std::string above = fmt::format("{}", range.max + 0.001);
    for (const std::string& value :
         {below, above, std::string{"-1"}, std::string{"1e-300"}, std::string{"1e400"}, std::string{"1e-400"},
          std::string{"inf"}, std::string{"-inf"}, std::string{"infinity"}, std::string{"99999999999999999999999"}}) {
        if (value == "1e-400" && range.min == 0) {
            continue;  // too small for a double, yet in [0, max]: tested below
        }
        if (value == "1e-300" && range.min == 0) {
            continue;  // a tiny positive drain: no harm, in range
        }
        check_refused(key + " = " + value + "\n", 1, fmt::format("{}: '{}' is out of range {}", key, value, in_range));
    }
    for (const std::string& value :
         {std::string{"nan"}, std::string{"-nan"}, std::string{"NaN(1)"}, std::string{"5s"}, std::string{"5 s"},
          std::string{"1.5.2"}, std::string{"1,5"}, std::string{"+1"}, std::string{"0x10"}, std::string{"1e"},
          std::string{"ten"}, std::string{"5\t5"}, std::string{}}) {
        const std::string text = key + " = " + value + "\n";
        CAPTURE(text);
        const ConfigError error = refusal(text);
        CHECK(error.line() == 1);
        CHECK_MESSAGE(std::string_view{error.what()}.find(key + ": ") != std::string_view::npos, error.what());
        CHECK_MESSAGE(std::string_view{error.what()}.find(not_number) != std::string_view::npos, error.what());
    }
}

}  // namespace

TEST_CASE("interval: a number of seconds from 0.01 to 86400, anything else refused naming key, value and range") {
    CHECK(muxio::apps::daemon::interval_range.min == 0.01);
    CHECK(muxio::apps::daemon::interval_range.max == 86400.0);
    check_seconds_key("interval", muxio::apps::daemon::interval_range, &Config::interval);
    // What made the heartbeat spin: a positive value that rounds to a nanosecond.
    check_refused("interval = 1e-300\n", 1, "interval: '1e-300' is out of range (0.01 to 86400 seconds)");
    check_refused("interval = 0.001\n", 1, "out of range");
}

TEST_CASE("drain_timeout: a number of seconds from 0 to 86400, anything else refused naming key, value and range") {
    CHECK(muxio::apps::daemon::drain_timeout_range.min == 0.0);
    CHECK(muxio::apps::daemon::drain_timeout_range.max == 86400.0);
    check_seconds_key("drain_timeout", muxio::apps::daemon::drain_timeout_range, &Config::drain_timeout);
    CHECK(parse_config("drain_timeout = 0\n").drain_timeout == Seconds{0.0});
    CHECK(parse_config("drain_timeout = -0\n").drain_timeout == Seconds{0.0});
    CHECK(parse_config("drain_timeout = 1e-300\n").drain_timeout == Seconds{1e-300});
    // Too small for a double is refused rather than taken as 0.
    check_refused("drain_timeout = 1e-400\n", 1, "drain_timeout: '1e-400' is out of range (0 to 86400 seconds)");
}

TEST_CASE("a bad log level is refused") {
    check_refused("log_level = loud\n", 1, "log_level: 'loud' is not one of");
    check_refused("log_level = INFO\n", 1, "is not one of");
}

TEST_CASE("unknown keys are refused, naming the line") {
    check_refused("interval = 1\n# fine\ncolour = blue\n", 3, "unknown key 'colour'");
    check_refused("Interval = 1\n", 1, "unknown key 'Interval'");
}

TEST_CASE("malformed lines are refused, naming the line") {
    check_refused("interval = 1\njust some words\n", 2, "expected 'key = value', got 'just some words'");
    check_refused("# comment\n= 5\n", 2, "missing key");
    check_refused("greeting = \"open\n", 1, "unterminated quoted value");
    check_refused("greeting = \"a\" b\n", 1, "unexpected 'b' after the quoted value");
    check_refused("greeting = bell\x07 here\n", 1, "control characters");
    check_refused("words # then = sign\n", 1, "expected 'key = value'");
}

TEST_CASE("a key set twice is refused") {
    check_refused("interval = 1\ngreeting = a\ninterval = 2\n", 3, "interval is already set on line 1");
}

TEST_CASE("log level names") {
    CHECK(parse_log_level("trace") == spdlog::level::trace);
    CHECK(parse_log_level("info") == spdlog::level::info);
    CHECK(parse_log_level("warning") == spdlog::level::warn);
    CHECK(parse_log_level("error") == spdlog::level::err);
    CHECK(parse_log_level("off") == spdlog::level::off);
    CHECK_FALSE(parse_log_level("").has_value());
    CHECK_FALSE(parse_log_level("err").has_value());
}

TEST_CASE("load_config reads a file and names it in errors") {
    muxio::test::FdLeakCheck leak_check;
    const TempDir dir;
    const std::string path = dir.path + "/daemon.conf";
    muxio::test::UniqueFd file{::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600)};
    REQUIRE(file.get() >= 0);
    muxio::test::write_all(file.get(), "interval = 3\ngreeting = from a file\n");
    file.reset();
    const Config config = load_config(path);
    CHECK(config.interval == Seconds{3.0});
    CHECK(config.greeting == "from a file");

    file.reset(::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
    muxio::test::write_all(file.get(), "interval = 3\nbogus = 1\n");
    file.reset();
    try {
        (void)load_config(path);
        FAIL("accepted a bad file");
    } catch (const ConfigError& error) {
        CHECK(error.line() == 2);
        CHECK(std::string{error.what()}.starts_with(path + ":2: unknown key 'bogus'"));
    }

    for (const std::string& unreadable : {dir.path + "/missing.conf", dir.path}) {
        CAPTURE(unreadable);
        try {
            (void)load_config(unreadable);
            FAIL("read ", unreadable);
        } catch (const ConfigError& error) {
            CHECK(error.line() == 0);
            CHECK(std::string{error.what()}.starts_with(unreadable + ": "));
        }
    }
}

namespace {

// The message of the ConfigError load_config(path) throws, which must have
// line() 0; bounded even if the file is a FIFO that the loader would wait on.
std::string load_refusal(const std::string& path, const std::string& fifo = {}) {
    std::optional<muxio::test::FifoUnblocker> unblocker;
    if (!fifo.empty()) {
        unblocker.emplace(fifo, std::chrono::seconds{5});
    }
    std::string message;
    try {
        (void)load_config(path);
        message = "(accepted)";
    } catch (const ConfigError& error) {
        CHECK(error.line() == 0);
        message = error.what();
    }
    if (unblocker) {
        CHECK_MESSAGE(!unblocker->disarm(), "load_config waited for a writer on the FIFO");
    }
    return message;
}

}  // namespace

TEST_CASE("load_config refuses a FIFO without waiting for a writer") {
    muxio::test::FdLeakCheck leak_check;
    const TempDir dir;
    const std::string fifo = dir.path + "/daemon.conf";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    CHECK(load_refusal(fifo, fifo) == fifo + ": not a regular file but a FIFO");

    // Through a symbolic link: the link is followed, what it names refused.
    const std::string link = dir.path + "/link.conf";
    REQUIRE(::symlink(fifo.c_str(), link.c_str()) == 0);
    CHECK(load_refusal(link, fifo) == link + ": not a regular file but a FIFO");
}

TEST_CASE("load_config refuses a directory, a device and a socket, saying what they are") {
    muxio::test::FdLeakCheck leak_check;
    const TempDir dir;
    CHECK(load_refusal(dir.path) == dir.path + ": not a regular file but a directory");
    CHECK(load_refusal("/dev/zero") == "/dev/zero: not a regular file but a character device");
    CHECK(load_refusal("/dev/null") == "/dev/null: not a regular file but a character device");

    const std::string socket_path = dir.path + "/daemon.sock";
    const muxio::test::UniqueFd socket{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    const auto address = muxio::SocketAddress::unix_path(socket_path);
    REQUIRE(::bind(socket.get(), address.data(), address.size()) == 0);
    CHECK(load_refusal(socket_path) == socket_path + ": not a regular file but a socket");
}

TEST_CASE("load_config reads at most 1 MiB") {
    muxio::test::FdLeakCheck leak_check;
    CHECK(muxio::apps::daemon::max_config_file_size == 1024 * 1024);
    const TempDir dir;
    const std::string path = dir.path + "/daemon.conf";
    // Exactly the bound: read (comment lines, then a key).
    std::string text(muxio::apps::daemon::max_config_file_size - 13, '\n');
    text.front() = '#';
    text += "interval = 7\n";
    REQUIRE(text.size() == muxio::apps::daemon::max_config_file_size);
    {
        muxio::test::UniqueFd file{::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)};
        REQUIRE(file.get() >= 0);
        muxio::test::write_all(file.get(), text);
    }
    CHECK(load_config(path).interval == Seconds{7.0});

    // One byte more: refused before reading, naming the size and the bound.
    {
        muxio::test::UniqueFd file{::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC)};
        REQUIRE(file.get() >= 0);
        muxio::test::write_all(file.get(), "\n");
    }
    CHECK(load_refusal(path) == path + ": too big: 1048577 bytes, at most 1048576 are read");

    // A sparse file of a terabyte is refused as fast.
    REQUIRE(::truncate(path.c_str(), off_t{1} << 40) == 0);
    CHECK(load_refusal(path) == path + ": too big: 1099511627776 bytes, at most 1048576 are read");
}

TEST_CASE("load_config says why a file that is gone cannot be read") {
    muxio::test::FdLeakCheck leak_check;
    const TempDir dir;
    const std::string path = dir.path + "/daemon.conf";
    CHECK(load_refusal(path) == path + ": cannot open: No such file or directory");
    // A dangling symbolic link: its target is gone.
    const std::string link = dir.path + "/link.conf";
    REQUIRE(::symlink(path.c_str(), link.c_str()) == 0);
    CHECK(load_refusal(link) == link + ": cannot open: No such file or directory");
    // Unreadable: permission denied (not as root, who may read anything).
    if (::geteuid() != 0) {
        muxio::test::UniqueFd file{::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0)};
        REQUIRE(file.get() >= 0);
        CHECK(load_refusal(path) == path + ": cannot open: Permission denied");
    }
}

TEST_CASE("load_config keeps its messages on one line whatever the path") {
    muxio::test::FdLeakCheck leak_check;
    const TempDir dir;
    const std::string path = dir.path + "/bad\nname.conf";
    const std::string message = load_refusal(path);
    CHECK(message.find('\n') == std::string::npos);
    CHECK(message == dir.path + "/bad?name.conf: cannot open: No such file or directory");
}
