// Fork: in a child process the parent's reactor refuses to run with a clear
// std::logic_error, the child can build and run a reactor of its own, and
// nothing the child does to what it inherited (removing callbacks, closing
// sockets, closing or destroying the reactor) reaches the kernel objects it
// shares with the parent: the parent's registrations keep firing. The child
// reports through its exit code; the parent waits for it with a bound (a
// pidfd polled with a timeout).
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/awaitables.hpp"
#include "muxio/net.hpp"
#include "muxio/reactor.hpp"
#include "muxio/run.hpp"
#include "net/completion_support.hpp"
#include "reactor/reactor_support.hpp"
#include "support/support.hpp"

using namespace std::chrono_literals;
using muxio::Reactor;
using muxio::SocketAddress;
using muxio::Task;
using muxio::TcpListener;
using muxio::TcpStream;
using muxio::UdpSocket;
using muxio::UnixListener;
using muxio::UnixStream;
using muxio::reactor_test::with_selector;
using muxio::test::FdLeakCheck;
using muxio::test::Pipe;
using muxio::test::SocketPair;
using muxio::test::Stopwatch;
using muxio::test::UniqueFd;

namespace {

// What the child found; each failure has its own exit code.
enum ChildResult : int {
    ok = 0,
    parent_run_allowed = 10,
    parent_run_once_allowed = 11,
    parent_call_soon_allowed = 12,
    parent_add_reader_allowed = 13,
    unclear_message = 14,
    wrong_exception = 15,
    own_reactor_failed = 20,
    own_reactor_did_not_run = 21,
    removal_allowed = 30,
    constructor_allowed = 31,
    descriptor_opened = 32,
    run_went_on = 33,
    unexpected_exception = 40,
};

// Expects `call` to throw std::logic_error that mentions fork.
int expect_refusal(Reactor& parent, int code_if_allowed, void (*call)(Reactor&)) {
    try {
        call(parent);
        return code_if_allowed;
    } catch (const std::logic_error& refusal) {
        return std::string_view{refusal.what()}.find("fork") == std::string_view::npos ? unclear_message : ok;
    } catch (...) {
        return wrong_exception;
    }
}

int child_main(Reactor& parent, const std::string& name, int parent_fd) {
    for (const auto& [code, call] : {
             std::pair<int, void (*)(Reactor&)>{parent_run_allowed, [](Reactor& r) { r.run(); }},
             std::pair<int, void (*)(Reactor&)>{parent_run_once_allowed, [](Reactor& r) { (void)r.run_once(0s); }},
             std::pair<int, void (*)(Reactor&)>{parent_call_soon_allowed, [](Reactor& r) { r.call_soon([] {}); }},
         }) {
        if (const int result = expect_refusal(parent, code, call); result != ok) {
            return result;
        }
    }
    try {
        parent.add_reader(parent_fd, [] {});
        return parent_add_reader_allowed;
    } catch (const std::logic_error&) {
    } catch (...) {
        return wrong_exception;
    }
    try {
        Reactor own{with_selector(name)};
        Pipe pipe;
        bool soon = false;
        bool timer = false;
        bool reader = false;
        own.call_soon([&] { soon = true; });
        own.call_later(1ms, [&] { timer = true; });
        own.add_reader(pipe.read_end.get(), [&] {
            reader = true;
            own.remove_reader(pipe.read_end.get());
        });
        muxio::test::write_all(pipe.write_end.get(), "x");
        own.call_later(5s, [&] { own.stop(); });
        own.call_later(2ms, [&] { own.stop(); });
        own.run();
        return soon && timer && reader ? ok : own_reactor_did_not_run;
    } catch (...) {
        return own_reactor_failed;
    }
}

// Waits at most `limit` for `pid` to exit; returns its wait status, or kills
// it and fails the test.
int wait_bounded(pid_t pid, std::chrono::milliseconds limit) {
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    REQUIRE_MESSAGE(pidfd >= 0, "pidfd_open: ", std::strerror(errno));
    const muxio::test::UniqueFd owned{pidfd};
    pollfd watch{pidfd, POLLIN, 0};
    int ready = 0;
    do {
        ready = ::poll(&watch, 1, static_cast<int>(limit.count()));
    } while (ready == -1 && errno == EINTR);
    if (ready != 1) {
        ::kill(pid, SIGKILL);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE_MESSAGE(ready == 1, "the child did not exit in time");
    return status;
}

// Runs `child` in a forked child, which exits with what it returns, and
// waits for it (at most `limit`); returns its exit status.
int in_child(const std::function<int()>& child, std::chrono::milliseconds limit = 10'000ms) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int code = unexpected_exception;
        try {
            code = child();
        } catch (...) {
        }
        ::_exit(code);
    }
    const int status = wait_bounded(pid, limit);
    REQUIRE(WIFEXITED(status));
    return WEXITSTATUS(status);
}

// `call` throws the fork error: ok, else `code_if_allowed` or why not.
int expect_fork_refusal(int code_if_allowed, const std::function<void()>& call) {
    try {
        call();
        return code_if_allowed;
    } catch (const std::logic_error& refusal) {
        return std::string_view{refusal.what()}.find("fork") == std::string_view::npos ? unclear_message : ok;
    } catch (...) {
        return wrong_exception;
    }
}

// Descriptors open in this process, counted without the test framework
// (for a child).
int open_fd_count() noexcept {
    DIR* dir = ::opendir("/proc/self/fd");
    if (dir == nullptr) {
        return -1;
    }
    int count = 0;
    while (const dirent* entry = ::readdir(dir)) {
        count += entry->d_name[0] != '.' ? 1 : 0;
    }
    ::closedir(dir);
    return count - 1;
}

// Runs iterations until `done()`, for at most a few seconds; returns done().
bool run_until(Reactor& reactor, const std::function<bool()>& done) {
    const Stopwatch stopwatch;
    while (!done() && stopwatch.elapsed() < 5s) {
        (void)reactor.run_once(50ms);
    }
    return done();
}

Task<void> await_readable(Reactor& reactor, int fd, bool& ready) {
    co_await muxio::readable(reactor, fd);
    ready = true;
}

// Waits for `stream` to be readable and reads what is there.
Task<void> await_socket_readable(UnixStream& stream, bool& ready) {
    co_await stream.readable();
    std::array<std::byte, 64> buffer{};
    std::error_code error;
    (void)stream.try_read(buffer, error);
    ready = true;
}

Task<void> read_some_into(UnixStream& stream, std::string& got) {
    std::array<std::byte, 64> buffer{};
    const std::size_t count = co_await stream.read_some(buffer);
    got.assign(reinterpret_cast<const char*>(buffer.data()), count);
}

Task<void> accept_one(TcpListener& listener, bool& accepted) {
    const TcpStream stream = co_await listener.accept();
    accepted = stream.is_open();
}

Task<void> receive_one(UdpSocket& socket, std::size_t& received) {
    std::array<std::byte, 64> buffer{};
    received = (co_await socket.recv_from(buffer)).size;
}

// A blocking TCP client connected to `address` (the listener's backlog
// completes the handshake without an accept).
UniqueFd connect_blocking(const SocketAddress& address) {
    UniqueFd client{::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0)};
    REQUIRE(client.get() >= 0);
    REQUIRE(::connect(client.get(), address.data(), address.size()) == 0);
    return client;
}

void send_datagram(const SocketAddress& destination) {
    const UniqueFd sender{::socket(destination.family(), SOCK_DGRAM | SOCK_CLOEXEC, 0)};
    REQUIRE(sender.get() >= 0);
    REQUIRE(::sendto(sender.get(), "d", 1, 0, destination.data(), destination.size()) == 1);
}

}  // namespace

TEST_CASE("in a forked child the parent's reactor refuses and a new one runs") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor parent{with_selector(name)};
        Pipe pipe;
        int parent_reads = 0;
        parent.add_reader(pipe.read_end.get(), [&] {
            ++parent_reads;
            muxio::test::drain(pipe.read_end.get());
        });
        parent.call_later(1h, [] {});

        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::_exit(child_main(parent, name, pipe.read_end.get()));
        }
        const int status = wait_bounded(pid, 10'000ms);
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == ok);

        // The parent's reactor is untouched and still works in the parent.
        muxio::test::write_all(pipe.write_end.get(), "x");
        CHECK(parent.run_once(1s) == 1);
        CHECK(parent_reads == 1);
        CHECK(parent.remove_reader(pipe.read_end.get()));
    }
}

TEST_CASE("a reactor built after a fork runs in the parent") {
    FdLeakCheck leak_check;
    {
        Reactor before{};
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::_exit(0);
        }
        const int status = wait_bounded(pid, 10'000ms);
        CHECK(WIFEXITED(status));
        // The fork happened in the child only: the parent's reactors run.
        bool ran = false;
        before.call_soon([&] { ran = true; });
        CHECK(before.run_once(0s) == 1);
        CHECK(ran);
    }
    Reactor after{};
    bool ran = false;
    after.call_soon([&] { ran = true; });
    CHECK(after.run_once(0s) == 1);
    CHECK(ran);
}

TEST_CASE("a forked child's remove_reader and remove_writer throw and leave the parent's registrations") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor parent{with_selector(name)};
        SocketPair pair;
        const int fd = pair.left.get();
        int reads = 0;
        int writes = 0;
        parent.add_reader(fd, [&] {
            ++reads;
            muxio::test::drain(fd);
        });
        parent.add_writer(fd, [&] { ++writes; });

        CHECK(in_child([&]() -> int {
                  if (const int result = expect_fork_refusal(removal_allowed, [&] { parent.remove_reader(fd); });
                      result != ok) {
                      return result;
                  }
                  return expect_fork_refusal(removal_allowed, [&] { parent.remove_writer(fd); });
              }) == ok);

        // Both registrations still fire in the parent, and say so.
        muxio::test::write_all(pair.right.get(), "x");
        CHECK(run_until(parent, [&] { return reads == 1 && writes >= 1; }));
        CHECK(parent.has_reader(fd));
        CHECK(parent.has_writer(fd));
        CHECK(parent.remove_reader(fd));
        CHECK(parent.remove_writer(fd));
    }
}

TEST_CASE("sockets closed or destroyed in a forked child keep their registrations in the parent") {
    FdLeakCheck leak_check;
    // About readiness registrations: on io_uring the sockets use readiness too
    // (the completion path's fork rules are in the transport and stream suites).
    const muxio::net_test::ReadinessOnly readiness;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor parent{with_selector(name)};
        // A stream with a lasting reader (an await on it ended, the
        // registration stays for the next), one with a read pending, a
        // listener with an accept pending, a UDP socket with a receive
        // pending.
        auto [lasting_socket, lasting_peer] = UnixStream::pair(parent);
        auto [pending_socket, pending_peer] = UnixStream::pair(parent);
        std::optional<UnixStream> lasting{std::move(lasting_socket)};
        std::optional<UnixStream> pending{std::move(pending_socket)};
        std::optional<TcpListener> listener{TcpListener::bind(parent, SocketAddress::ipv4("127.0.0.1", 0))};
        std::optional<UdpSocket> udp{UdpSocket::bind(parent, SocketAddress::ipv4("127.0.0.1", 0))};
        const int lasting_fd = lasting->fileno();
        const int listener_fd = listener->fileno();
        const SocketAddress listener_address = listener->local_address();
        const SocketAddress udp_address = udp->local_address();

        bool first_ready = false;
        muxio::spawn(parent, await_socket_readable(*lasting, first_ready));
        muxio::test::write_all(lasting_peer.fileno(), "x");
        REQUIRE(run_until(parent, [&] { return first_ready; }));
        REQUIRE(parent.has_reader(lasting_fd));
        std::string got;
        bool accepted = false;
        std::size_t received = 0;
        muxio::spawn(parent, read_some_into(*pending, got));
        muxio::spawn(parent, accept_one(*listener, accepted));
        muxio::spawn(parent, receive_one(*udp, received));
        (void)parent.run_once(0s);  // starts them: each waits
        REQUIRE(parent.has_reader(pending->fileno()));
        REQUIRE(parent.has_reader(listener_fd));

        CHECK(in_child([&]() -> int {
                  lasting.reset();
                  pending->close();
                  listener.reset();
                  udp->close();
                  return ok;
              }) == ok);

        // Every registration still fires in the parent.
        CHECK(parent.has_reader(lasting_fd));
        bool second_ready = false;
        muxio::spawn(parent, await_socket_readable(*lasting, second_ready));
        muxio::test::write_all(lasting_peer.fileno(), "x");
        muxio::test::write_all(pending_peer.fileno(), "x");
        const UniqueFd client = connect_blocking(listener_address);
        send_datagram(udp_address);
        CHECK(run_until(parent, [&] { return second_ready && got == "x" && accepted && received == 1; }));
        CHECK(second_ready);
        CHECK(got == "x");
        CHECK(accepted);
        CHECK(received == 1);
    }
}

TEST_CASE("a reactor closed or destroyed in a forked child leaves the parent's tasks waiting") {
    FdLeakCheck leak_check;
    // About readiness registrations: on io_uring the sockets use readiness too
    // (the completion path's fork rules are in the transport and stream suites).
    const muxio::net_test::ReadinessOnly readiness;
    MUXIO_FOR_EACH_SELECTOR(name) {
        for (const bool destroy : {false, true}) {
            CAPTURE(destroy);
            auto parent = std::make_unique<Reactor>(with_selector(name));
            Pipe pipe;
            std::optional<std::pair<UnixStream, UnixStream>> pair{UnixStream::pair(*parent)};
            UnixStream& stream = pair->first;
            bool pipe_ready = false;
            std::string got;
            muxio::spawn(*parent, await_readable(*parent, pipe.read_end.get(), pipe_ready));
            muxio::spawn(*parent, read_some_into(stream, got));
            (void)parent->run_once(0s);
            REQUIRE(parent->has_reader(pipe.read_end.get()));
            REQUIRE(parent->has_reader(stream.fileno()));

            CHECK(in_child([&]() -> int {
                      if (destroy) {
                          parent.reset();
                      } else {
                          parent->close();
                      }
                      return ok;
                  }) == ok);

            muxio::test::write_all(pipe.write_end.get(), "x");
            muxio::test::write_all(pair->second.fileno(), "y");
            CHECK(run_until(*parent, [&] { return pipe_ready && got == "y"; }));
            CHECK(pipe_ready);
            CHECK(got == "y");
            // What the awaits left: readable() removed its reader, the
            // socket keeps its own for the next read.
            CHECK_FALSE(parent->has_reader(pipe.read_end.get()));
            CHECK(parent->has_reader(stream.fileno()));
            pair.reset();
        }
    }
}

TEST_CASE("socket constructors refuse the parent's reactor in a forked child and open nothing") {
    FdLeakCheck leak_check;
    Reactor parent;
    CHECK(in_child([&]() -> int {
              const int before = open_fd_count();
              const SocketAddress ipv4 = SocketAddress::ipv4("127.0.0.1", 0);
              const std::function<void()> calls[] = {
                  [&] { (void)TcpListener::bind(parent, ipv4); },
                  [&] { (void)UnixListener::bind(parent, SocketAddress::unix_abstract("muxio-fork-test")); },
                  [&] { (void)UdpSocket::bind(parent, ipv4); },
                  [&] { (void)UdpSocket::open(parent, AF_INET); },
                  [&] { (void)UnixStream::pair(parent); },
              };
              for (const auto& call : calls) {
                  if (const int result = expect_fork_refusal(constructor_allowed, call); result != ok) {
                      return result;
                  }
              }
              UniqueFd unconnected{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
              if (const int result = expect_fork_refusal(constructor_allowed,
                                                         [&] { (void)TcpStream::adopt(parent, unconnected.get()); });
                  result != ok) {
                  return result;
              }
              unconnected.reset();
              return open_fd_count() == before ? ok : descriptor_opened;
          }) == ok);
}

TEST_CASE("a child forked inside a callback leaves run at the end of that iteration") {
    FdLeakCheck leak_check;
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor reactor{with_selector(name)};
        Pipe pipe;
        int reads = 0;
        reactor.add_reader(pipe.read_end.get(), [&] {
            ++reads;
            muxio::test::drain(pipe.read_end.get());
        });
        pid_t pid = -1;
        reactor.call_soon([&] {
            pid = ::fork();
            if (pid != 0) {
                reactor.stop();  // the parent's run ends here; the child's would go on
            }
        });
        bool waited = false;  // in the child: a later iteration waited on the parent's instance
        const muxio::TimerHandle guard = reactor.call_later(2s, [&] {
            waited = true;
            reactor.stop();
        });
        bool refused = false;
        try {
            reactor.run();
        } catch (const std::logic_error& refusal) {
            refused = std::string_view{refusal.what()}.find("fork") != std::string_view::npos;
        }
        if (pid == 0) {
            ::_exit(refused && !waited ? ok : run_went_on);
        }
        REQUIRE(pid > 0);
        CHECK_FALSE(refused);
        const int status = wait_bounded(pid, 10'000ms);
        REQUIRE(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == ok);

        muxio::test::write_all(pipe.write_end.get(), "x");
        CHECK(run_until(reactor, [&] { return reads == 1; }));
        CHECK(muxio::TimerHandle{guard}.cancel());
        CHECK(reactor.remove_reader(pipe.read_end.get()));
    }
}

TEST_CASE("a child forked inside a nested run leaves both runs at the end of their iterations") {
    FdLeakCheck leak_check;
    Reactor outer;
    Reactor inner;
    pid_t pid = -1;
    bool inner_refused = false;
    inner.call_soon([&] {
        pid = ::fork();
        inner.stop();  // in both processes: the outer run is the one to watch
    });
    outer.call_soon([&] {
        try {
            inner.run();
        } catch (const std::logic_error& refusal) {
            inner_refused = std::string_view{refusal.what()}.find("fork") != std::string_view::npos;
        }
        if (pid != 0) {
            outer.stop();
        }
    });
    bool waited = false;  // in the child: a later iteration waited on the parent's instance
    const muxio::TimerHandle guard = outer.call_later(2s, [&] {
        waited = true;
        outer.stop();
    });
    bool outer_refused = false;
    try {
        outer.run();
    } catch (const std::logic_error& refusal) {
        outer_refused = std::string_view{refusal.what()}.find("fork") != std::string_view::npos;
    }
    if (pid == 0) {
        ::_exit(outer_refused && !waited ? ok : run_went_on);
    }
    REQUIRE(pid > 0);
    CHECK_FALSE(inner_refused);
    CHECK_FALSE(outer_refused);
    const int status = wait_bounded(pid, 10'000ms);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == ok);
    CHECK(muxio::TimerHandle{guard}.cancel());
}

TEST_CASE("a signal delivered to a forked child does not wake the parent's reactor") {
    FdLeakCheck leak_check;
    const muxio::reactor_test::SavedSignal saved{SIGUSR1};
    const std::vector<int> before = muxio::reactor_test::open_fds();
    Reactor parent;
    const int wake_fd = muxio::reactor_test::find_new_eventfd(before);
    int handled = 0;
    parent.add_signal_handler(SIGUSR1, [&] { ++handled; });

    CHECK(in_child([]() -> int { return ::raise(SIGUSR1) == 0 ? ok : unexpected_exception; }) == ok);

    CHECK(muxio::reactor_test::eventfd_count(wake_fd) == 0);
    CHECK(parent.run_once(0s) == 0);
    CHECK(handled == 0);
    CHECK(parent.remove_signal_handler(SIGUSR1));
}

// A parent's thread may be inside the reactor's thread-safe queue, or
// changing signal handlers, at the moment of the fork: the child inherits its
// locks held by a thread that does not exist there. Closing the inherited
// reactor in the child must not wait for that thread. Many forks, so that
// some land while the other thread holds a lock.
TEST_CASE("a child forked while another thread posts to the reactor closes it without hanging") {
    FdLeakCheck leak_check;
    Reactor parent;
    std::atomic<bool> done{false};
    std::thread poster{[&] {
        while (!done.load(std::memory_order_relaxed)) {
            parent.call_soon_threadsafe([] {});
        }
    }};
    for (int round = 0; round < 20; ++round) {
        CAPTURE(round);
        CHECK(in_child(
                  [&]() -> int {
                      parent.close();
                      return ok;
                  },
                  3000ms) == ok);
        (void)parent.run_once(0s);
    }
    done = true;
    poster.join();
}

TEST_CASE("a child forked while another thread changes signal handlers closes the inherited reactor without hanging") {
    FdLeakCheck leak_check;
    const muxio::reactor_test::SavedSignal saved_first{SIGUSR1};
    const muxio::reactor_test::SavedSignal saved_second{SIGUSR2};
    Reactor parent;
    parent.add_signal_handler(SIGUSR1, [] {});
    std::atomic<bool> done{false};
    std::thread churn{[&] {
        Reactor own;
        while (!done.load(std::memory_order_relaxed)) {
            own.add_signal_handler(SIGUSR2, [] {});
            (void)own.remove_signal_handler(SIGUSR2);
        }
    }};
    for (int round = 0; round < 20; ++round) {
        CAPTURE(round);
        CHECK(in_child(
                  [&]() -> int {
                      parent.close();
                      return ok;
                  },
                  3000ms) == ok);
    }
    done = true;
    churn.join();
    CHECK(parent.remove_signal_handler(SIGUSR1));
}

TEST_CASE("a Unix listener closed or destroyed in a forked child leaves the parent's path and accepts") {
    FdLeakCheck leak_check;
    char directory_template[] = "/tmp/muxio-fork-XXXXXX";
    REQUIRE(::mkdtemp(directory_template) != nullptr);
    const std::string path = std::string{directory_template} + "/listener.sock";
    MUXIO_FOR_EACH_SELECTOR(name) {
        Reactor parent{with_selector(name)};
        std::optional<UnixListener> closed{UnixListener::bind(parent, SocketAddress::unix_path(path + "-closed"))};
        std::optional<UnixListener> destroyed{UnixListener::bind(parent, SocketAddress::unix_path(path))};
        std::optional<UnixStream> accepted;
        muxio::spawn(parent, [](UnixListener& listener, std::optional<UnixStream>& out) -> Task<void> {
            out = co_await listener.accept();
        }(*destroyed, accepted));
        (void)parent.run_once(0s);

        CHECK(in_child([&]() -> int {
                  closed->close();
                  destroyed.reset();
                  return ok;
              }) == ok);

        CHECK(::access((path + "-closed").c_str(), F_OK) == 0);
        CHECK(::access(path.c_str(), F_OK) == 0);
        std::optional<UnixStream> client;
        muxio::spawn(parent, [](Reactor& reactor, std::string where, std::optional<UnixStream>& out) -> Task<void> {
            out = co_await UnixStream::connect(reactor, SocketAddress::unix_path(where));
        }(parent, path, client));
        CHECK(run_until(parent, [&] { return accepted.has_value() && client.has_value(); }));
        accepted.reset();
        client.reset();
        destroyed.reset();
        closed.reset();
        CHECK(::access(path.c_str(), F_OK) != 0);  // the parent's own close removes it
    }
    CHECK(::rmdir(directory_template) == 0);
}

TEST_CASE(
    "on io_uring completions, a stream read in a forked child refuses there, and closing it there spares the parent") {
    FdLeakCheck leak_check;
    if (!muxio::detail::completion_features().receive) {
        MESSAGE("the kernel lacks io_uring's multishot receive: no completion path");
        return;
    }
    muxio::ReactorOptions options;
    options.selector = "io_uring";
    Reactor parent{options};
    auto [socket, peer] = UnixStream::pair(parent);
    std::optional<UnixStream> stream{std::move(socket)};
    REQUIRE(muxio::net_test::reads_on_completions(parent));
    // A read in flight on the ring: its receive is armed in the kernel.
    std::string got;
    muxio::spawn(parent, read_some_into(*stream, got));
    (void)parent.run_once(0s);
    REQUIRE(stream->uses_completions());
    CHECK(in_child([&]() -> int {
              std::string child_got;
              if (const int result = expect_fork_refusal(
                      parent_call_soon_allowed, [&] { muxio::spawn(parent, read_some_into(*stream, child_got)); });
                  result != ok) {
                  return result;
              }
              stream->close();  // the child's copy only: nothing reaches the parent's ring
              stream.reset();
              return ok;
          }) == ok);
    // The parent's read still completes through its ring.
    muxio::test::write_all(peer.fileno(), "after");
    CHECK(run_until(parent, [&] { return got == "after"; }));
}
