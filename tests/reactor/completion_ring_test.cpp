// The completion ring of an io_uring reactor, driven directly: what the
// socket layer builds its completion path on.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "muxio/reactor.hpp"
#include "net/completion_receiver.hpp"
#include "reactor/completions.hpp"
#include "support/support.hpp"

namespace {

using muxio::Reactor;
using muxio::ReactorOptions;
using muxio::detail::CompletionFeatures;
using muxio::detail::CompletionReceiver;
using muxio::detail::CompletionRing;
using muxio::detail::CompletionTarget;
using muxio::detail::OperationId;
using muxio::detail::ReactorCompletions;
using muxio::test::FdLeakCheck;
using muxio::test::SocketPair;
using namespace std::chrono_literals;

ReactorOptions options_for(const char* selector) {
    ReactorOptions options;
    options.selector = selector;
    return options;
}

bool kernel_has_completions() {
    return muxio::detail::completion_features().receive;
}

// What a target saw, one entry per completion.
struct Seen {
    struct Entry {
        std::int32_t result;
        std::uint32_t flags;
    };
    std::vector<Entry> entries;
    static void record(void* context, std::int32_t result, std::uint32_t flags) {
        static_cast<Seen*>(context)->entries.push_back({result, flags});
    }
    CompletionTarget target(int fd) { return {&Seen::record, this, fd}; }
};

// Runs iterations until `done()`, at most `limit` of them, none waiting
// longer than a second.
template <class Done>
void run_until(Reactor& reactor, Done done, int limit = 1000) {
    for (int iteration = 0; iteration < limit && !done(); ++iteration) {
        (void)reactor.run_once(1s);
    }
    REQUIRE(done());
}

std::string bytes_of(CompletionRing& ring, const Seen::Entry& entry) {
    const auto bytes = ring.buffer(CompletionRing::buffer_id(entry.flags), static_cast<std::size_t>(entry.result));
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace

TEST_CASE("a reactor on io_uring has a completion ring where the kernel has the operations, one on epoll has none") {
    FdLeakCheck leaks;
    Reactor epoll{options_for("epoll")};
    CHECK(ReactorCompletions::ring(epoll) == nullptr);
    Reactor uring{options_for("io_uring")};
    CompletionRing* ring = ReactorCompletions::ring(uring);
    CHECK((ring != nullptr) == kernel_has_completions());
    uring.close();
    CHECK(ReactorCompletions::ring(uring) == nullptr);
}

TEST_CASE("forcing the completion features off gives reactors made afterwards no completion ring") {
    FdLeakCheck leaks;
    const CompletionFeatures none{};
    muxio::detail::set_completion_features_for_testing(&none);
    Reactor forced{options_for("io_uring")};
    CHECK(ReactorCompletions::ring(forced) == nullptr);
    CHECK_FALSE(muxio::detail::completion_features().receive);
    muxio::detail::set_completion_features_for_testing(nullptr);
    Reactor probed{options_for("io_uring")};
    CHECK((ReactorCompletions::ring(probed) != nullptr) == kernel_has_completions());
}

TEST_CASE("a multishot receive hands over each arrival in its own buffer, in order, then the peer's end") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks multishot receive: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    Seen seen;
    (void)ring.receive(pair.left.get(), seen.target(pair.left.get()));
    CHECK(ring.operations_in_flight() == 1);
    std::string received;
    for (const std::string piece : {"one", "two", "three"}) {
        muxio::test::write_all(pair.right.get(), piece);
        const std::size_t before = seen.entries.size();
        run_until(reactor, [&] { return seen.entries.size() > before; });
        const Seen::Entry entry = seen.entries.back();
        REQUIRE(entry.result > 0);
        CHECK((entry.flags & CompletionRing::more_flag) != 0);
        REQUIRE(CompletionRing::has_buffer(entry.flags));
        received += bytes_of(ring, entry);
        ring.recycle(CompletionRing::buffer_id(entry.flags));
    }
    CHECK(received == "onetwothree");
    pair.right.reset();
    const std::size_t before = seen.entries.size();
    run_until(reactor, [&] { return seen.entries.size() > before; });
    CHECK(seen.entries.back().result == 0);
    CHECK((seen.entries.back().flags & CompletionRing::more_flag) == 0);
    CHECK(ring.operations_in_flight() == 0);
}

TEST_CASE("a send completes with the bytes the kernel took, and with EPIPE once the peer is gone, raising no SIGPIPE") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    Seen seen;
    const std::string message = "hello";
    (void)ring.send(pair.left.get(), std::as_bytes(std::span{message}), seen.target(pair.left.get()));
    run_until(reactor, [&] { return !seen.entries.empty(); });
    CHECK(seen.entries[0].result == 5);
    char echo[8] = {};
    CHECK(::read(pair.right.get(), echo, sizeof echo) == 5);
    pair.right.reset();
    (void)ring.send(pair.left.get(), std::as_bytes(std::span{message}), seen.target(pair.left.get()));
    run_until(reactor, [&] { return seen.entries.size() == 2; });
    CHECK(seen.entries[1].result == -EPIPE);
}

TEST_CASE("a receive ended by a dry buffer ring loses no byte and goes on when a buffer comes back") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    Seen seen;
    (void)ring.receive(pair.left.get(), seen.target(pair.left.get()));
    // One byte per iteration, each in a buffer of its own that is kept:
    // the ring runs dry after as many arrivals as it has buffers.
    std::size_t held = 0;
    bool dry = false;
    for (int round = 0; round < 10'000 && !dry; ++round) {
        muxio::test::write_all(pair.right.get(), "x");
        const std::size_t before = seen.entries.size();
        run_until(reactor, [&] { return seen.entries.size() > before; });
        const Seen::Entry entry = seen.entries.back();
        if (entry.result == -ENOBUFS) {
            dry = true;
        } else {
            REQUIRE(entry.result == 1);
            ++held;
        }
    }
    REQUIRE(dry);
    CHECK((seen.entries.back().flags & CompletionRing::more_flag) == 0);
    Seen woken;
    (void)ring.wait_for_buffers(woken.target(-1));
    for (int iteration = 0; iteration < 3; ++iteration) {
        (void)reactor.run_once(0s);
    }
    CHECK(woken.entries.empty());  // nothing came back yet
    for (std::size_t index = 0; index < held; ++index) {
        const Seen::Entry& entry = seen.entries[index];
        ring.recycle(CompletionRing::buffer_id(entry.flags));
    }
    run_until(reactor, [&] { return !woken.entries.empty(); });
    // The byte that found no buffer is still in the socket.
    const std::size_t before = seen.entries.size();
    (void)ring.receive(pair.left.get(), seen.target(pair.left.get()));
    run_until(reactor, [&] { return seen.entries.size() > before; });
    CHECK(seen.entries.back().result == 1);
    CHECK(bytes_of(ring, seen.entries.back()) == "x");
    ring.recycle(CompletionRing::buffer_id(seen.entries.back().flags));
}

TEST_CASE("waiting for buffers after they all came back runs at once rather than waiting for another recycle") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    Seen seen;
    (void)ring.receive(pair.left.get(), seen.target(pair.left.get()));
    bool dry = false;
    for (int round = 0; round < 10'000 && !dry; ++round) {
        muxio::test::write_all(pair.right.get(), "x");
        const std::size_t before = seen.entries.size();
        run_until(reactor, [&] { return seen.entries.size() > before; });
        dry = seen.entries.back().result == -ENOBUFS;
    }
    REQUIRE(dry);
    // The owner learns of the dry ring only after it gave every buffer back
    // (its ENOBUFS reaped in the same batch as the data it consumed).
    for (std::size_t index = 0; index + 1 < seen.entries.size(); ++index) {
        ring.recycle(CompletionRing::buffer_id(seen.entries[index].flags));
    }
    (void)reactor.run_once(0s);
    Seen woken;
    (void)ring.wait_for_buffers(woken.target(-1));
    run_until(
        reactor, [&] { return !woken.entries.empty(); }, 10);
}

TEST_CASE("a detached operation runs its target no more and gives back the buffers of its late completions") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    Seen seen;
    const OperationId receiving = ring.receive(pair.left.get(), seen.target(pair.left.get()));
    muxio::test::write_all(pair.right.get(), "late");
    ring.detach(receiving);
    run_until(reactor, [&] { return ring.operations_in_flight() == 0; });
    CHECK(seen.entries.empty());
    ring.detach(receiving);  // a spent id: harmless
    ring.cancel(receiving);
}

TEST_CASE("detach_and_wait returns once the kernel is done with a send that was blocked on a full socket") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    muxio::test::fill_until_blocked(pair.left.get());
    Seen seen;
    auto bytes = std::make_unique<std::vector<std::byte>>(4096, std::byte{'b'});
    const OperationId sending = ring.send(pair.left.get(), *bytes, seen.target(pair.left.get()));
    (void)reactor.run_once(0s);  // submitted: the kernel waits for room
    CHECK(ring.operations_in_flight() == 1);
    ring.detach_and_wait(sending);
    bytes.reset();  // the kernel reads it no more
    CHECK(ring.operations_in_flight() == 0);
    (void)reactor.run_once(0s);
    CHECK(seen.entries.empty());
}

TEST_CASE(
    "completions reaped while waiting for another operation are dispatched by the next iteration without blocking") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair blocked;
    SocketPair open;
    muxio::test::fill_until_blocked(blocked.left.get());
    Seen other;
    Seen waited;
    const std::string message = "ready";
    std::vector<std::byte> bytes(64, std::byte{'w'});
    const OperationId sending = ring.send(blocked.left.get(), bytes, waited.target(blocked.left.get()));
    (void)ring.send(open.left.get(), std::as_bytes(std::span{message}), other.target(open.left.get()));
    ring.detach_and_wait(sending);  // reaps the other send's completion too
    CHECK(other.entries.empty());   // not run from inside detach_and_wait
    CHECK(ring.has_completions());
    (void)reactor.run_once();  // blocks only if the reaped completion is forgotten
    REQUIRE(other.entries.size() == 1);
    CHECK(other.entries[0].result == 5);
}

TEST_CASE("a completion target that throws is reported as its descriptor's reader and the iteration goes on") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    std::vector<muxio::CallbackOrigin> reported;
    reactor.set_exception_handler(
        [&](std::exception_ptr /*error*/, const muxio::CallbackOrigin& origin) { reported.push_back(origin); });
    const std::string message = "x";
    auto throwing = [](void* /*context*/, std::int32_t /*result*/, std::uint32_t /*flags*/) {
        throw std::runtime_error("target failed");
    };
    Seen seen;
    (void)ring.send(pair.left.get(), std::as_bytes(std::span{message}), {throwing, nullptr, pair.left.get()});
    (void)ring.send(pair.left.get(), std::as_bytes(std::span{message}), seen.target(pair.left.get()));
    run_until(reactor, [&] { return !seen.entries.empty(); });
    REQUIRE(reported.size() == 1);
    CHECK(reported[0].kind == muxio::CallbackKind::reader);
    CHECK(reported[0].fd == pair.left.get());
}

TEST_CASE("closing a reactor with receives and a blocked send in flight ends them, and their owners may detach after") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    muxio::test::fill_until_blocked(pair.left.get());
    Seen seen;
    std::vector<std::byte> bytes(4096, std::byte{'c'});
    const OperationId receiving = ring.receive(pair.left.get(), seen.target(pair.left.get()));
    const OperationId sending = ring.send(pair.left.get(), bytes, seen.target(pair.left.get()));
    (void)reactor.run_once(0s);
    reactor.close();
    CHECK(ring.operations_in_flight() == 2);  // their slots stay until detached
    ring.detach(receiving);
    ring.detach_and_wait(sending);
    CHECK(ring.operations_in_flight() == 0);
    CHECK(seen.entries.empty());
}

TEST_CASE(
    "an embedded reactor's descriptor polls readable for the completion of a receive started between iterations") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    const int embedded = reactor.embed_fd();
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    Seen seen;
    (void)ring.receive(pair.left.get(), seen.target(pair.left.get()));  // no iteration runs to submit it
    muxio::test::write_all(pair.right.get(), "wake");
    pollfd watched{embedded, POLLIN, 0};
    REQUIRE(::poll(&watched, 1, 5000) == 1);
    (void)reactor.run_once(0s);
    REQUIRE(seen.entries.size() == 1);
    CHECK(bytes_of(ring, seen.entries[0]) == "wake");
    ring.recycle(CompletionRing::buffer_id(seen.entries[0].flags));
}

// ----- The receiving half built on the ring (lib/net/completion_receiver.hpp) -----

namespace {

struct ReceiverOwner {
    int notified = 0;
    static void notify(void* owner) { ++static_cast<ReceiverOwner*>(owner)->notified; }
};

std::string read_all(CompletionReceiver& receiver) {
    std::string out(receiver.queued_bytes(), '\0');
    const std::size_t got = receiver.read(std::as_writable_bytes(std::span{out}));
    out.resize(got);
    return out;
}

}  // namespace

TEST_CASE("a completion receiver hands over a stream in order, whatever the pieces, and then its end") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    ReceiverOwner owner;
    CompletionReceiver receiver{ring, pair.left.get(), &ReceiverOwner::notify, &owner};
    receiver.start();
    std::string sent;
    std::string received;
    for (int piece = 0; piece < 200; ++piece) {
        const std::string bytes(static_cast<std::size_t>(1 + (piece * 37) % 3000), static_cast<char>('a' + piece % 26));
        muxio::test::write_all(pair.right.get(), bytes);
        sent += bytes;
        run_until(reactor, [&] { return receiver.queued_bytes() != 0; });
        // Read in odd sizes, leaving some queued now and then.
        std::string chunk(std::min<std::size_t>(receiver.queued_bytes(), 1000), '\0');
        chunk.resize(receiver.read(std::as_writable_bytes(std::span{chunk})));
        received += chunk;
    }
    pair.right.reset();
    run_until(reactor, [&] { return receiver.ended(); });
    received += read_all(receiver);
    CHECK(received == sent);
    CHECK_FALSE(receiver.error());
    CHECK(owner.notified > 0);
    CHECK(ring.operations_in_flight() == 0);
}

TEST_CASE("a completion receiver stops receiving at its queue limit and goes on as it is consumed, losing nothing") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    ReceiverOwner owner;
    CompletionReceiver receiver{ring, pair.left.get(), &ReceiverOwner::notify, &owner};
    receiver.start();
    std::string sent;
    // One byte per iteration: each arrival fills a buffer of its own.
    for (int round = 0; round < 3 * static_cast<int>(CompletionReceiver::queue_limit); ++round) {
        const char byte = static_cast<char>('A' + round % 26);
        sent += byte;
        muxio::test::write_all(pair.right.get(), std::string(1, byte));
        for (int iteration = 0; iteration < 3; ++iteration) {
            (void)reactor.run_once(0s);
        }
    }
    // The receive was cancelled at the limit: the rest waits in the socket.
    CHECK(receiver.queued_bytes() >= CompletionReceiver::queue_limit);
    CHECK(receiver.queued_bytes() < sent.size());
    CHECK(ring.operations_in_flight() == 0);
    std::string received = read_all(receiver);
    run_until(reactor, [&] { return received.size() + receiver.queued_bytes() == sent.size(); });
    received += read_all(receiver);
    CHECK(received == sent);
}

TEST_CASE("a paused completion receiver keeps what arrived and takes nothing more until started again") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    ReceiverOwner owner;
    CompletionReceiver receiver{ring, pair.left.get(), &ReceiverOwner::notify, &owner};
    receiver.start();
    muxio::test::write_all(pair.right.get(), "first");
    run_until(reactor, [&] { return receiver.queued_bytes() == 5; });
    receiver.pause();
    run_until(reactor, [&] { return ring.operations_in_flight() == 0; });
    muxio::test::write_all(pair.right.get(), "second");
    for (int iteration = 0; iteration < 3; ++iteration) {
        (void)reactor.run_once(0s);
    }
    CHECK(receiver.queued_bytes() == 5);
    CHECK(read_all(receiver) == "first");
    CHECK(receiver.queued_bytes() == 0);
    receiver.start();
    run_until(reactor, [&] { return receiver.queued_bytes() == 6; });
    CHECK(read_all(receiver) == "second");
}

TEST_CASE("a completion receiver released with a receive in flight and bytes queued leaves no operation behind") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    ReceiverOwner owner;
    {
        CompletionReceiver receiver{ring, pair.left.get(), &ReceiverOwner::notify, &owner};
        receiver.start();
        muxio::test::write_all(pair.right.get(), "held");
        run_until(reactor, [&] { return receiver.queued_bytes() == 4; });
        muxio::test::write_all(pair.right.get(), "late");
    }
    run_until(reactor, [&] { return ring.operations_in_flight() == 0; });
    const int notified = owner.notified;
    for (int iteration = 0; iteration < 3; ++iteration) {
        (void)reactor.run_once(0s);
    }
    CHECK(owner.notified == notified);
}

TEST_CASE("completion targets may start operations while the ring dispatches, however far its tables grow") {
    if (!kernel_has_completions()) {
        MESSAGE("the kernel lacks the completion path: nothing to test");
        return;
    }
    FdLeakCheck leaks;
    Reactor reactor{options_for("io_uring")};
    CompletionRing& ring = *ReactorCompletions::ring(reactor);
    SocketPair pair;
    struct Spawner {
        CompletionRing* ring;
        int fd;
        int completed = 0;
        int started = 0;
        std::array<std::byte, 1> byte{};
        static void done(void* context, std::int32_t result, std::uint32_t /*flags*/) {
            auto& self = *static_cast<Spawner*>(context);
            CHECK(result == 1);
            ++self.completed;
            // Each completion starts three more, up to a few thousand: the
            // slot table and the completion queues grow during dispatch.
            for (int more = 0; more < 3 && self.started < 3000; ++more) {
                self.start();
            }
        }
        void start() {
            ++started;
            (void)ring->send(fd, byte, {&Spawner::done, this, fd});
        }
    } spawner{&ring, pair.left.get()};
    spawner.start();
    int drained = 0;
    run_until(
        reactor,
        [&] {
            drained += static_cast<int>(muxio::test::drain(pair.right.get()));
            return spawner.completed == spawner.started && spawner.started >= 3000;
        },
        100'000);
    drained += static_cast<int>(muxio::test::drain(pair.right.get()));
    CHECK(drained == spawner.started);
    CHECK(ring.operations_in_flight() == 0);
}

TEST_CASE(
    "probing the kernel's completion operations leaves no signal on the calling thread: a blocking receive there "
    "is not interrupted") {
    FdLeakCheck leaks;
    int pair[2] = {-1, -1};
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
    const muxio::test::UniqueFd silent{pair[0]};
    const muxio::test::UniqueFd peer{pair[1]};
    const timeval timeout{0, 300'000};
    REQUIRE(::setsockopt(silent.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) == 0);
    // A fresh thread: none of the rings closed by earlier cases in this
    // process has it among the threads it signals on teardown.
    ssize_t got = 0;
    int error = 0;
    std::thread{[&] {
        (void)muxio::detail::probe_completion_features_on_own_thread();
        // The probing ring's teardown reaches its submitters some
        // milliseconds later: a receive blocked well past that would fail
        // with EINTR if this thread had been one of them.
        char byte = 0;
        got = ::recv(silent.get(), &byte, 1, 0);
        error = errno;
    }}.join();
    CHECK(got == -1);
    CHECK(error == EAGAIN);
}
