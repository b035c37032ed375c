// Transport misuse: calls from another thread while the reactor runs, from a
// child forked after the reactor was made, and write() after close().
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "muxio/transport.hpp"
#include "support/support.hpp"
#include "transport/transport_support.hpp"

namespace muxio::test {
namespace {

// A transport on one end of a socket pair; the test holds the other end.
struct Adopted {
    explicit Adopted(Reactor& reactor) {
        SocketPair pair;
        peer = std::move(pair.right);
        transport = std::make_unique<Transport>(reactor, pair.left.release(), protocol);
    }
    Recorder protocol;
    UniqueFd peer;
    std::unique_ptr<Transport> transport;
};

// The message of the std::logic_error `call` throws; "no throw" or "other
// exception" otherwise.
std::string refusal_of(const std::function<void()>& call) {
    try {
        call();
        return "no throw";
    } catch (const std::logic_error& refusal) {
        return refusal.what();
    } catch (...) {
        return "other exception";
    }
}

bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

// Runs `calls` on another thread from inside a callback of the running
// reactor (joined there: bounded, nothing left behind); returns the messages.
std::vector<std::string> from_other_thread(Reactor& reactor, const std::vector<std::function<void()>>& calls) {
    std::vector<std::string> messages;
    bool ran = false;
    reactor.call_soon([&] {
        std::thread other{[&] {
            for (const auto& call : calls) {
                messages.push_back(refusal_of(call));
            }
        }};
        other.join();
        ran = true;
    });
    REQUIRE(run_until(reactor, [&] { return ran; }));
    return messages;
}

// Reads from non-blocking `fd`, running the reactor, until `text` holds
// `want` or the stream ended.
std::string read_until_size(Reactor& reactor, int fd, std::size_t want) {
    std::string text;
    bool open = true;
    (void)run_until(reactor, [&] {
        open = open && read_available(fd, text);
        return text.size() >= want || !open;
    });
    return text;
}

void make_non_blocking(int fd) {
    const int flags = ::fcntl(fd, F_GETFL);
    REQUIRE(::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0);
}

// Exit codes of the forked child.
constexpr int child_ok = 0;
constexpr int child_no_throw = 10;
constexpr int child_unclear = 11;

// Forks; the child runs `calls`, each of which must throw the fork error,
// and exits with child_ok or why not. Waits at most 10 s for it.
int fork_error_in_child(const std::vector<std::function<void()>>& calls) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int code = child_ok;
        for (const auto& call : calls) {
            const std::string message = refusal_of(call);
            if (message == "no throw") {
                code = child_no_throw;
            } else if (!contains(message, "fork")) {
                code = child_unclear;
            }
        }
        ::_exit(code);
    }
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    REQUIRE(pidfd >= 0);
    const UniqueFd owned{pidfd};
    pollfd watch{pidfd, POLLIN, 0};
    int ready = 0;
    do {
        ready = ::poll(&watch, 1, 10'000);
    } while (ready == -1 && errno == EINTR);
    if (ready != 1) {
        ::kill(pid, SIGKILL);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE_MESSAGE(ready == 1, "the child did not exit in time");
    REQUIRE(WIFEXITED(status));
    return WEXITSTATUS(status);
}

TEST_CASE(
    "Transport methods called from another thread while the reactor runs throw std::logic_error naming the call, "
    "and the connection goes on from the loop thread") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    make_non_blocking(side.peer.get());
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    Transport& transport = *side.transport;
    const std::vector<std::string> messages =
        from_other_thread(reactor, {
                                       [&] { transport.write("stray"); },
                                       [&] { transport.close(); },
                                       [&] {
                                           const std::string text = "v";
                                           const std::span<const std::byte> part = bytes_of(text);
                                           transport.writev(std::span{&part, 1});
                                       },
                                       [&] { transport.write_eof(); },
                                       [&] { transport.abort(); },
                                       [&] { transport.pause_reading(); },
                                       [&] { transport.resume_reading(); },
                                       [&] { transport.set_deadline_after(std::chrono::seconds{1}); },
                                       [&] { transport.set_idle_timeout(std::chrono::seconds{1}); },
                                       [&] { transport.set_write_buffer_limits(1, 1); },
                                   });
    REQUIRE(messages.size() == 10);
    CHECK(contains(messages[0], "Transport::write"));
    CHECK(contains(messages[0], "call_soon_threadsafe"));
    CHECK(contains(messages[1], "Transport::close"));
    CHECK(contains(messages[2], "Transport::writev"));
    CHECK(contains(messages[3], "Transport::write_eof"));
    CHECK(contains(messages[4], "Transport::abort"));
    CHECK(contains(messages[5], "Transport::pause_reading"));
    CHECK(contains(messages[6], "Transport::resume_reading"));
    CHECK(contains(messages[7], "Transport::set_deadline_after"));
    CHECK(contains(messages[8], "Transport::set_idle_timeout"));
    CHECK(contains(messages[9], "Transport::set_write_buffer_limits"));
    // Nothing changed: still open and reading, the marks as they were.
    CHECK_FALSE(transport.is_closing());
    CHECK(transport.is_reading());
    CHECK(transport.high_water() == TransportOptions{}.high_water);
    CHECK(transport.deadline() == Transport::TimePoint::max());
    transport.write("loop");
    write_all(side.peer.get(), "ping");
    REQUIRE(run_until(reactor, [&] { return side.protocol.received == "ping"; }));
    CHECK(read_until_size(reactor, side.peer.get(), 4) == "loop");
    transport.close();
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(*side.protocol.reason == std::error_code{});
}

TEST_CASE("send_file from another thread while the reactor runs throws std::logic_error and closes the file") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    Pipe pipe;
    const int file = pipe.read_end.release();
    const std::vector<std::string> messages =
        from_other_thread(reactor, {[&] { side.transport->send_file(file, 0, 1); }});
    REQUIRE(messages.size() == 1);
    CHECK(contains(messages[0], "Transport::send_file"));
    CHECK(::fcntl(file, F_GETFD) == -1);  // closed: the transport owned it
    CHECK(side.transport->write_buffer_size() == 0);
}

TEST_CASE("Transport methods from another thread are harmless no-ops once the connection ended") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->abort();
    const std::vector<std::string> messages = from_other_thread(reactor, {
                                                                             [&] { side.transport->write("late"); },
                                                                             [&] { side.transport->close(); },
                                                                             [&] { side.transport->abort(); },
                                                                         });
    CHECK(messages == std::vector<std::string>(3, "no throw"));
    CHECK(side.protocol.lost == 1);
}

TEST_CASE(
    "Transport write and close in a child forked after the reactor was made throw the fork error, and the "
    "parent's connection is intact") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    make_non_blocking(side.peer.get());
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    Transport& transport = *side.transport;
    CHECK(fork_error_in_child({
              [&] { transport.write("child"); },
              [&] { transport.close(); },
              [&] { transport.abort(); },
              [&] { transport.pause_reading(); },
          }) == child_ok);
    CHECK_FALSE(transport.is_closing());
    transport.write("parent");
    transport.close();
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(*side.protocol.reason == std::error_code{});
    CHECK(read_until_size(reactor, side.peer.get(), 1000) == "parent");  // to the end of the stream
}

TEST_CASE(
    "a transport closed from another's connection_lost while the reactor closes gets no exception and ends once") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted first{reactor};
    Adopted second{reactor};
    REQUIRE(run_until(reactor, [&] { return first.protocol.made == 1 && second.protocol.made == 1; }));
    std::string refusals;
    auto close_the_other = [&](Adopted& other) {
        return [&](Recorder&) {
            refusals += refusal_of([&] { other.transport->close(); });
            refusals += refusal_of([&] { other.transport->abort(); });
        };
    };
    first.protocol.on_lost = close_the_other(second);
    second.protocol.on_lost = close_the_other(first);
    reactor.close();
    CHECK(refusals == "no throwno throwno throwno throw");
    CHECK(first.protocol.lost == 1);
    CHECK(second.protocol.lost == 1);
}

TEST_CASE("write after close throws std::logic_error when the queue was empty and close ended the connection at once") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    side.transport->close();
    REQUIRE(side.transport->is_closed());
    CHECK(contains(refusal_of([&] { side.transport->write("late"); }), "Transport::write"));
    CHECK(contains(refusal_of([&] {
                       const std::span<const std::byte> part = bytes_of("late");
                       side.transport->writev(std::span{&part, 1});
                   }),
                   "Transport::writev"));
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(*side.protocol.reason == std::error_code{});
    CHECK(contains(refusal_of([&] { side.transport->write("later"); }), "Transport::write"));
}

TEST_CASE("write after close throws std::logic_error while queued bytes are still draining") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string big(std::size_t{8} * 1024 * 1024, 'x');  // more than the socket buffers take
    side.transport->write(big);
    REQUIRE(side.transport->write_buffer_size() > 0);
    side.transport->close();
    REQUIRE_FALSE(side.transport->is_closed());
    CHECK(contains(refusal_of([&] { side.transport->write("late"); }), "Transport::write"));
}

TEST_CASE("write after close drops the bytes silently once an error ended the connection") {
    FdLeakCheck leak_check;
    Reactor reactor;
    Adopted side{reactor};
    REQUIRE(run_until(reactor, [&] { return side.protocol.made == 1; }));
    const std::string big(std::size_t{8} * 1024 * 1024, 'x');
    side.transport->write(big);
    side.transport->close();
    side.transport->abort();  // the error that ends it
    CHECK(refusal_of([&] { side.transport->write("late"); }) == "no throw");
    REQUIRE(run_until(reactor, [&] { return side.protocol.lost == 1; }));
    CHECK(*side.protocol.reason == std::errc::connection_aborted);
    CHECK(refusal_of([&] { side.transport->write("later"); }) == "no throw");
}

}  // namespace
}  // namespace muxio::test
