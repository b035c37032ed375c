// muxio-daemon's services in-process: the Daemon on a Reactor that the test
// drives one iteration at a time, as main.cpp's loop does, with plain
// non-blocking sockets as clients.
#include <fcntl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <spdlog/sinks/ostream_sink.h>

#include "daemon.hpp"
#include "fifo_guard.hpp"
#include "muxio/error.hpp"
#include "muxio/log.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::apps::daemon::Config;
using muxio::apps::daemon::Daemon;
using muxio::apps::daemon::DaemonOptions;
using muxio::apps::daemon::Seconds;
using muxio::apps::daemon::State;
using muxio::test::FdLeakCheck;
using muxio::test::UniqueFd;

namespace {

struct TempDir {
    std::string path;
    TempDir() {
        std::string pattern = "/tmp/muxio-daemon-test-XXXXXX";
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

void write_file(const std::string& path, std::string_view text) {
    UniqueFd file{::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)};
    REQUIRE(file.get() >= 0);
    muxio::test::write_all(file.get(), text);
}

bool exists(const std::string& path) {
    struct stat info {};
    return ::lstat(path.c_str(), &info) == 0;
}

// A daemon on its own reactor, logging into a string.
struct Fixture {
    TempDir dir;
    std::string config_path = dir.path + "/daemon.conf";
    std::string control_path = dir.path + "/control.sock";
    std::ostringstream log_text;
    std::shared_ptr<spdlog::logger> log = std::make_shared<spdlog::logger>(
        "muxio-daemon-test", std::make_shared<spdlog::sinks::ostream_sink_st>(log_text));
    Reactor reactor;
    std::optional<Daemon> daemon;

    // `selector`: as ReactorOptions::selector (empty: the default).
    explicit Fixture(std::string_view config_text, std::string_view selector = {})
        : reactor{muxio::ReactorOptions{selector, {}}} {
        write_file(config_path, config_text);
        DaemonOptions options;
        options.control_path = control_path;
        options.config_path = config_path;
        daemon.emplace(reactor, log, muxio::apps::daemon::load_config(config_path), options);
    }
    ~Fixture() {
        daemon.reset();
        reactor.close();
    }
    Fixture(const Fixture&) = delete;
    Fixture& operator=(const Fixture&) = delete;

    // Runs iterations until `done` holds, calling advance() after each as
    // main.cpp's loop does; fails after `limit`.
    void run_until(const std::function<bool()>& done, Reactor::Duration limit = 10s) {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        for (;;) {
            stopped = daemon->advance();
            if (done()) {
                return;
            }
            REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "timed out");
            reactor.run_once(10ms);
        }
    }
    // Runs iterations until the daemon has stopped.
    void run_until_stopped(Reactor::Duration limit = 10s) {
        run_until([this] { return stopped; }, limit);
    }

    bool stopped = false;
};

// A non-blocking client socket with a line reader; the test runs the
// reactor while it waits, as both ends live on this thread.
class Client {
public:
    Client(Fixture& fixture, const muxio::SocketAddress& address) : fixture_{fixture} {
        fd_.reset(::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        REQUIRE(fd_.get() >= 0);
        const int status = ::connect(fd_.get(), address.data(), address.size());
        REQUIRE((status == 0 || errno == EINPROGRESS));
    }

    void send(std::string_view text) {
        // Small writes to a fresh socket: they fit at once.
        REQUIRE(::send(fd_.get(), text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size()));
    }
    // The next line, running the reactor until it arrives; nullopt if the
    // daemon closed the connection first.
    std::optional<std::string> line() {
        std::optional<std::string> result;
        fixture_.run_until([&] {
            if (const std::size_t newline = received_.find('\n'); newline != std::string::npos) {
                result = received_.substr(0, newline);
                received_.erase(0, newline + 1);
                return true;
            }
            return read_some() == 0;
        });
        return result;
    }
    std::string ask(std::string_view command) {
        send(std::string{command} + "\n");
        const std::optional<std::string> reply = line();
        REQUIRE(reply.has_value());
        return *reply;
    }
    // Runs the reactor until the daemon closes the connection.
    void wait_closed() {
        fixture_.run_until([&] { return read_some() == 0; });
    }
    void close() { fd_.reset(); }

private:
    // Bytes read now: 0 at the end of the stream, -1 if none yet.
    ssize_t read_some() {
        char buffer[512];
        const ssize_t got = ::recv(fd_.get(), buffer, sizeof buffer, 0);
        if (got > 0) {
            received_.append(buffer, static_cast<std::size_t>(got));
        } else if (got < 0) {
            REQUIRE((errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOTCONN));
        }
        return got;
    }

    Fixture& fixture_;
    UniqueFd fd_;
    std::string received_;
};

// A blocking connect, which fails at once on loopback when nobody listens.
bool refused(const muxio::SocketAddress& address) {
    const UniqueFd fd{::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(fd.get() >= 0);
    return ::connect(fd.get(), address.data(), address.size()) != 0 && errno == ECONNREFUSED;
}

std::string status_field(const std::string& status, std::string_view name) {
    const std::string key = " " + std::string{name} + "=";
    const std::size_t at = (" " + status).find(key);
    REQUIRE_MESSAGE(at != std::string::npos, status);
    const std::size_t start = at + key.size() - 1;
    return status.substr(start, status.find(' ', start) - start);
}

}  // namespace

TEST_CASE("the control socket answers status, reload and stop") {
    FdLeakCheck leak_check;
    Fixture fixture{"interval = 60\ngreeting = one\n"};
    REQUIRE(exists(fixture.control_path));
    {
        Client control{fixture, muxio::SocketAddress::unix_path(fixture.control_path)};
        const std::string status = control.ask("status");
        CHECK(status_field(status, "pid") == std::to_string(::getpid()));
        CHECK(status_field(status, "generation") == "1");
        CHECK(status_field(status, "state") == "running");
        CHECK(status_field(status, "control_clients") == "1");
        CHECK(control.ask("bogus") == "error: unknown command 'bogus'");

        write_file(fixture.config_path, "interval = 60\ngreeting = two\n");
        CHECK(control.ask("reload") == "ok: reloaded, generation=2");
        CHECK(fixture.daemon->config().greeting == "two");

        write_file(fixture.config_path, "interval = 60\ngreeting = three\nwhat = ever\n");
        const std::string refused = control.ask("reload");
        CHECK(
            refused.starts_with("error: reload failed, generation=2 kept: " + fixture.config_path + ":3: unknown key"));
        CHECK(fixture.daemon->config().greeting == "two");
        CHECK(fixture.log_text.str().find("reload failed, generation 2 kept") != std::string::npos);

        CHECK(control.ask("stop") == "ok: stopping");
        // No connection to drain: the next advance() ends the drain, which
        // closes the control channel too.
        control.wait_closed();
    }
    fixture.run_until_stopped();
    fixture.daemon.reset();
    fixture.reactor.close();
    CHECK_FALSE(exists(fixture.control_path));
}

TEST_CASE("a reload from a FIFO, a directory, a device, a huge or a missing file keeps the configuration") {
    FdLeakCheck leak_check;
    Fixture fixture{"interval = 60\ngreeting = kept\n"};
    Client control{fixture, muxio::SocketAddress::unix_path(fixture.control_path)};
    const std::string& path = fixture.config_path;
    const std::string elsewhere = fixture.dir.path + "/elsewhere";

    struct Case {
        const char* what;
        std::function<void()> make;  // replaces the file at `path`
        std::string why;             // what the reply and the log say after the path
    };
    const auto remove_path = [&path] { REQUIRE(::unlink(path.c_str()) == 0); };
    const Case cases[] = {
        {"a FIFO",
         [&] {
             remove_path();
             REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
         },
         "not a regular file but a FIFO"},
        {"a symbolic link to a FIFO",
         [&] {
             remove_path();
             REQUIRE(::mkfifo(elsewhere.c_str(), 0600) == 0);
             REQUIRE(::symlink(elsewhere.c_str(), path.c_str()) == 0);
         },
         "not a regular file but a FIFO"},
        {"a directory",
         [&] {
             remove_path();
             REQUIRE(::mkdir(path.c_str(), 0700) == 0);
         },
         "not a regular file but a directory"},
        {"a device",
         [&] {
             remove_path();
             REQUIRE(::symlink("/dev/zero", path.c_str()) == 0);
         },
         "not a regular file but a character device"},
        {"a file over 1 MiB",
         [&] {
             remove_path();
             write_file(path, "interval = 1\n");
             REQUIRE(::truncate(path.c_str(), 2 * 1024 * 1024) == 0);
         },
         "too big: 2097152 bytes, at most 1048576 are read"},
        {"a file that is gone", [&] { remove_path(); }, "cannot open: No such file or directory"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.what);
        c.make();
        std::string reply;
        {
            // Should the daemon wait for a writer, this ends the wait.
            const muxio::test::FifoUnblocker unblocker{elsewhere, 5s};
            const muxio::test::FifoUnblocker unblocker_at_path{path, 5s};
            reply = control.ask("reload");
        }
        CHECK(reply == "error: reload failed, generation=1 kept: " + path + ": " + c.why);
        CHECK(fixture.log_text.str().find("reload failed, generation 1 kept: " + path + ": " + c.why) !=
              std::string::npos);
        CHECK(fixture.daemon->config().greeting == "kept");
        CHECK(fixture.daemon->config().interval == Seconds{60.0});
        // Still answering, on the same connection and on a new one.
        CHECK(status_field(control.ask("status"), "generation") == "1");
        Client other{fixture, muxio::SocketAddress::unix_path(fixture.control_path)};
        CHECK(status_field(other.ask("status"), "state") == "running");
        // Back to a regular file for the next case.
        (void)std::system(fmt::format("rm -rf '{}' '{}'", path, elsewhere).c_str());
        write_file(path, "interval = 60\ngreeting = kept\n");
    }
    // And a good file is read again.
    write_file(path, "interval = 60\ngreeting = new\n");
    CHECK(control.ask("reload") == "ok: reloaded, generation=2");
    CHECK(fixture.daemon->config().greeting == "new");
}

TEST_CASE("a reload that sets a number out of range keeps the configuration, naming key, value and range") {
    FdLeakCheck leak_check;
    Fixture fixture{"interval = 60\n"};
    Client control{fixture, muxio::SocketAddress::unix_path(fixture.control_path)};
    write_file(fixture.config_path, "interval = 1e-300\n");
    CHECK(control.ask("reload") == "error: reload failed, generation=1 kept: " + fixture.config_path +
                                       ":1: interval: '1e-300' is out of range (0.01 to 86400 seconds)");
    CHECK(fixture.daemon->config().interval == Seconds{60.0});
    write_file(fixture.config_path, "drain_timeout = nan\n");
    CHECK(control.ask("reload").ends_with(":1: drain_timeout: 'nan' is not a number of seconds (range 0 to 86400)"));
    CHECK(fixture.daemon->config().drain_timeout == Seconds{5.0});
}

TEST_CASE("several control clients are served at once") {
    FdLeakCheck leak_check;
    Fixture fixture{"interval = 60\n"};
    const auto address = muxio::SocketAddress::unix_path(fixture.control_path);
    Client first{fixture, address};
    Client second{fixture, address};
    CHECK(first.ask("help").starts_with("ok: "));
    CHECK(status_field(second.ask("status"), "control_clients") == "2");
    // Two commands in one write get two answers, in order.
    first.send("nope\nstatus\n");
    CHECK(first.line() == "error: unknown command 'nope'");
    CHECK(first.line().value_or("").starts_with("pid="));
    first.close();
    fixture.run_until([&] { return fixture.daemon->status().control_clients == 1; });
    CHECK(status_field(second.ask("status"), "control_clients") == "1");
}

TEST_CASE("a control line that is too long ends the connection") {
    FdLeakCheck leak_check;
    Fixture fixture{"interval = 60\n"};
    Client control{fixture, muxio::SocketAddress::unix_path(fixture.control_path)};
    control.send(std::string(2000, 'x'));
    CHECK(control.line() == "error: line too long");
    control.wait_closed();
}

TEST_CASE("the TCP service greets and echoes lines") {
    FdLeakCheck leak_check;
    Fixture fixture{"greeting = \"hi there\"\n"};
    Client client{fixture, fixture.daemon->tcp_address()};
    CHECK(client.line() == "hi there");
    client.send("one\r\ntw");
    CHECK(client.line() == "one");
    client.send("o\n");
    CHECK(client.line() == "two");
    CHECK(fixture.daemon->connections() == 1);
    CHECK(fixture.daemon->status().served == 1);
    client.close();
    fixture.run_until([&] { return fixture.daemon->connections() == 0; });
}

TEST_CASE("a TCP client that does not read its echoes is not read from until they are sent, and loses none") {
    FdLeakCheck leak_check;
    Fixture fixture{"greeting = \"\"\n"};
    const muxio::SocketAddress address = fixture.daemon->tcp_address();
    const UniqueFd fd{::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)};
    REQUIRE(fd.get() >= 0);
    const int status = ::connect(fd.get(), address.data(), address.size());
    REQUIRE((status == 0 || errno == EINPROGRESS));
    fixture.run_until([&] { return fixture.daemon->connections() == 1; });

    // Lines go out until the writes make no progress while the loop runs:
    // the daemon holds an unsent answer and reads no more. A daemon that
    // kept reading would take every byte up to the limit.
    const std::string line = std::string(999, 'l') + '\n';
    constexpr std::size_t limit = std::size_t{256} * 1024 * 1024;
    std::size_t sent = 0;  // within the current line
    std::size_t lines_sent = 0;
    int idle = 0;
    while (idle < 50 && lines_sent * line.size() < limit) {
        const ssize_t n = ::send(fd.get(), line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<std::size_t>(n);
            if (sent == line.size()) {
                sent = 0;
                ++lines_sent;
            }
            idle = 0;
            continue;
        }
        REQUIRE((errno == EAGAIN || errno == EWOULDBLOCK));
        ++idle;
        fixture.reactor.run_once(1ms);
    }
    REQUIRE(idle == 50);  // held back before the limit
    // Every complete line comes back, intact and in order, once the client
    // reads (a partial last one waits for its end).
    std::string received;
    std::size_t lines_back = 0;
    bool intact = true;
    fixture.run_until(
        [&] {
            std::array<char, 65536> buffer{};
            for (;;) {
                const ssize_t got = ::recv(fd.get(), buffer.data(), buffer.size(), 0);
                if (got <= 0) {
                    break;
                }
                received.append(buffer.data(), static_cast<std::size_t>(got));
            }
            std::size_t newline = 0;
            while ((newline = received.find('\n')) != std::string::npos) {
                intact = intact && received.compare(0, newline + 1, line) == 0;
                received.erase(0, newline + 1);
                ++lines_back;
            }
            return lines_back == lines_sent;
        },
        60s);
    CHECK(intact);
    CHECK(received.empty());
}

TEST_CASE("out of descriptors, accepting pauses and the queued connection is served once they are back") {
    FdLeakCheck leak_check;
    Fixture fixture{"greeting = \"hi there\"\n"};
    Client client{fixture, fixture.daemon->tcp_address()};  // queued: accept has not run yet
    {
        // The soft limit at the lowest free descriptor: the next accept4
        // fails with EMFILE. UBSan's first check of a polymorphic type probes
        // memory through a pipe, which needs descriptors: an error like the
        // one accept throws is made once beforehand, and logging stays off.
        const std::string operation = fmt::format("accept on {}", fixture.daemon->tcp_address());
        const std::system_error warm_up = muxio::make_system_error(EMFILE, operation, 3);
        CHECK(warm_up.code() == std::errc::too_many_files_open);
        CHECK(std::string_view{warm_up.what()}.starts_with("accept on"));
        fixture.log->set_level(spdlog::level::off);
        // The accept path warns through muxio's logger: it is made now, and
        // kept quiet like the daemon's.
        spdlog::logger& library_log = muxio::logger();
        const spdlog::level::level_enum library_level = library_log.level();
        library_log.set_level(spdlog::level::off);
        const muxio::test::NoFreeDescriptors no_free_descriptor;
        // A loop that retried at once would find the listener ready in every
        // iteration; one that pauses has iterations with nothing to run.
        int idle_iterations = 0;
        for (int iteration = 0; iteration < 20; ++iteration) {
            if (fixture.reactor.run_once(Reactor::Duration::zero()) == 0) {
                ++idle_iterations;
            }
        }
        CHECK(idle_iterations > 0);
        CHECK(fixture.daemon->status().served == 0);
        CHECK(fixture.daemon->connections() == 0);
        library_log.set_level(library_level);
    }
    fixture.log->set_level(spdlog::level::info);
    CHECK(client.line() == "hi there");
    CHECK(fixture.daemon->status().served == 1);
    client.close();
    fixture.run_until([&] { return fixture.daemon->connections() == 0; });
}

TEST_CASE("a TCP or control connection the selector cannot watch is closed at once, and the daemon goes on") {
    FdLeakCheck leak_check;
    // select cannot watch a descriptor from FD_SETSIZE up: accepted sockets
    // get such numbers while the low ones are all taken.
    Fixture fixture{"greeting = hi\n", "select"};
    std::size_t escaped = 0;  // exceptions that reached the reactor
    fixture.reactor.set_exception_handler([&escaped](const std::exception_ptr&) { ++escaped; });
    const auto control_address = muxio::SocketAddress::unix_path(fixture.control_path);
    Client tcp{fixture, fixture.daemon->tcp_address()};  // queued now, accepted below
    Client control{fixture, control_address};
    {
        const muxio::test::OccupyDescriptorsBelow occupied{FD_SETSIZE};
        const int open_before = muxio::test::count_open_fds();
        // The greeting needs no wait, so it goes out; the first read cannot wait.
        CHECK(tcp.line() == "hi");
        tcp.wait_closed();
        control.wait_closed();
        fixture.run_until(
            [&] { return fixture.daemon->connections() == 0 && fixture.daemon->status().control_clients == 0; });
        CHECK(fixture.daemon->status().served == 1);
        CHECK(fixture.daemon->status().errors == 2);
        CHECK(muxio::test::count_open_fds() == open_before);  // both accepted sockets are closed
        const std::string log = fixture.log_text.str();
        CHECK_MESSAGE(log.find("connection from 127.0.0.1:") != std::string::npos, log);
        CHECK_MESSAGE(log.find("cannot serve it, closed it") != std::string::npos, log);
        CHECK_MESSAGE(log.find("control client: cannot serve it, closed it") != std::string::npos, log);
    }
    // Later connections, numbered low again, are served.
    Client again{fixture, fixture.daemon->tcp_address()};
    CHECK(again.line() == "hi");
    again.send("echo\n");
    CHECK(again.line() == "echo");
    Client control_again{fixture, control_address};
    const std::string status = control_again.ask("status");
    CHECK(status_field(status, "served") == "2");
    CHECK(status_field(status, "errors") == "2");
    CHECK(status_field(status, "connections") == "1");
    CHECK(status_field(status, "control_clients") == "1");
    CHECK(escaped == 0);
}

TEST_CASE("the heartbeat ticks on the configured interval") {
    FdLeakCheck leak_check;
    // Before the daemon schedules its first heartbeat.
    const auto start = std::chrono::steady_clock::now();
    Fixture fixture{"interval = 0.01\nlog_level = info\n"};
    fixture.run_until([&] { return fixture.daemon->status().ticks >= 3; });
    CHECK(std::chrono::steady_clock::now() - start >= 30ms);
    CHECK(fixture.log_text.str().find("heartbeat: uptime") != std::string::npos);
}

TEST_CASE("a reload that changes the interval reschedules the heartbeat") {
    FdLeakCheck leak_check;
    Fixture fixture{"interval = 3600\n"};
    write_file(fixture.config_path, "interval = 0.01\n");
    REQUIRE(fixture.daemon->reload().ok);
    fixture.run_until([&] { return fixture.daemon->status().ticks >= 2; });
}

TEST_CASE("a stop waits for open connections, refusing new ones") {
    FdLeakCheck leak_check;
    Fixture fixture{"drain_timeout = 60\n"};
    const muxio::SocketAddress address = fixture.daemon->tcp_address();
    Client client{fixture, address};
    REQUIRE(client.line().has_value());

    REQUIRE(fixture.daemon->request_stop("test"));
    CHECK_FALSE(fixture.daemon->request_stop("test again"));
    CHECK(fixture.daemon->state() == State::draining);
    REQUIRE(fixture.daemon->drain_deadline().has_value());
    // The accept loop ends within an iteration or two; then connecting fails.
    fixture.run_until([&] { return refused(address); });

    // The open connection is still served, and holds the stop.
    client.send("still here\n");
    CHECK(client.line() == "still here");
    CHECK_FALSE(fixture.daemon->advance());
    CHECK(fixture.daemon->state() == State::draining);

    client.close();
    fixture.run_until_stopped();
    CHECK(fixture.daemon->state() == State::stopping);
    CHECK(fixture.log_text.str().find("closing") == std::string::npos);
}

TEST_CASE("the drain ends at drain_timeout, closing what is still open") {
    FdLeakCheck leak_check;
    Fixture fixture{"drain_timeout = 0.05\n"};
    Client client{fixture, fixture.daemon->tcp_address()};
    REQUIRE(client.line().has_value());
    const auto start = std::chrono::steady_clock::now();
    REQUIRE(fixture.daemon->request_stop("test"));
    fixture.run_until_stopped();
    CHECK(std::chrono::steady_clock::now() - start >= 50ms);
    client.wait_closed();
    CHECK(fixture.log_text.str().find("closing 1 connection(s) still open") != std::string::npos);
}

TEST_CASE("a control path held by a live daemon is refused, a stale one replaced") {
    FdLeakCheck leak_check;
    Fixture fixture{""};
    Reactor other;
    DaemonOptions options;
    options.control_path = fixture.control_path;
    CHECK_THROWS_WITH_AS(Daemon(other, fixture.log, Config{}, options),
                         doctest::Contains("is in use by a running process"), std::runtime_error);

    // A socket file nobody listens on is a leftover: taken over.
    const std::string stale = fixture.dir.path + "/stale.sock";
    {
        const auto address = muxio::SocketAddress::unix_path(stale);
        UniqueFd leftover{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
        REQUIRE(::bind(leftover.get(), address.data(), address.size()) == 0);
    }
    REQUIRE(exists(stale));
    options.control_path = stale;
    {
        const Daemon second{other, fixture.log, Config{}, options};
        CHECK(second.control_path() == stale);
    }
    other.close();
    CHECK_FALSE(exists(stale));
}
