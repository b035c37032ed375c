// muxio-daemon's configuration file: what parses, what is refused, and that
// every refusal names its line.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <string_view>

#include <doctest/doctest.h>

#include "config.hpp"
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
    check_refused("interval = fast\n", 1, "interval: 'fast' is not a number of seconds");
    check_refused("\n\ninterval = 1.5s\n", 3, "'1.5s' is not a number");
    check_refused("interval =\n", 1, "'' is not a number");
    check_refused("interval = nan\n", 1, "not a number");
    check_refused("interval = inf\n", 1, "not a number");
    check_refused("interval = 0\n", 1, "out of range");
    check_refused("interval = -1\n", 1, "out of range");
    check_refused("interval = 1e9\n", 1, "out of range");
    check_refused("drain_timeout = -0.5\n", 1, "drain_timeout: '-0.5' is out of range");
    check_refused("drain_timeout = 5 seconds\n", 1, "not a number");
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
            CHECK(std::string{error.what()}.starts_with(unreadable + ": cannot"));
        }
    }
}
