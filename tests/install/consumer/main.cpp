// Uses an installed muxio: registers one end of a socket pair with the
// default selector, makes it readable, and checks that select() says so;
// then runs the coroutine chains a user's Debug build (-O0, built by
// tests/install/run_install_test.cmake) must run in constant stack: a
// million awaits of a task that ends at once, and a loop of awaits of UDP
// operations that are always ready. Exits 0 on success, 1 with a message
// otherwise.
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>

#include <muxio/muxio.hpp>

namespace {

int check(const char* what, bool ok) {
    if (!ok) {
        std::fprintf(stderr, "muxio consumer: FAILED: %s\n", what);
    }
    return ok ? 0 : 1;
}

int run(int reader, int writer) {
    muxio::DefaultSelector<int> selector;
    const auto& key = selector.register_(reader, muxio::EVENT_READ, 42);
    if (check("register_ returns the key", key.fd == reader && key.data == 42) != 0) {
        return 1;
    }
    if (check("nothing is ready before the write", selector.select(std::chrono::milliseconds{0}).empty()) != 0) {
        return 1;
    }
    const char byte = 'x';
    if (check("write to the socket pair", ::write(writer, &byte, 1) == 1) != 0) {
        return 1;
    }
    const auto ready = selector.select(std::chrono::seconds{5});
    int failures = check("select reports exactly one key", ready.size() == 1);
    if (failures == 0) {
        failures += check("the key is the registered one", ready[0].key().fd == reader && ready[0].key().data == 42);
        failures += check("the ready events are EVENT_READ", ready[0].events() == muxio::EVENT_READ);
    }
    if (failures == 0) {
        std::printf("muxio consumer: muxio %d.%d.%d, %.*s selector reported fd %d readable\n", MUXIO_VERSION_MAJOR,
                    MUXIO_VERSION_MINOR, MUXIO_VERSION_PATCH, static_cast<int>(selector.name().size()),
                    selector.name().data(), reader);
    }
    return failures == 0 ? 0 : 1;
}

// The address of this call's frame on the stack: equal for two calls at the
// same depth.
[[gnu::noinline]] std::uintptr_t stack_position() noexcept {
    return reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
}

// The stack position after the first await of a loop and after its last.
struct Positions {
    std::uintptr_t first = 0;
    std::uintptr_t last = 0;
    void record(bool is_first) noexcept { (is_first ? first : last) = stack_position(); }
    [[nodiscard]] bool flat() const noexcept { return first != 0 && last == first; }
};

muxio::Task<int> one() {
    co_return 1;
}

muxio::Task<long> awaits_of_ended_tasks(long count, Positions& positions) {
    long sum = 0;
    for (long i = 0; i < count; ++i) {
        sum += co_await one();
        positions.record(i == 0);
    }
    co_return sum;
}

// Sends each datagram to itself, so the receive never waits.
muxio::Task<long> ready_udp_round_trips(muxio::UdpSocket& socket, long count, Positions& positions) {
    std::array<std::byte, 8> buffer{};
    const std::array<std::byte, 4> ping{std::byte{'p'}, std::byte{'i'}, std::byte{'n'}, std::byte{'g'}};
    const muxio::SocketAddress self = socket.local_address();
    long received = 0;
    for (long i = 0; i < count; ++i) {
        (void)co_await socket.send_to(ping, self);
        received += static_cast<long>((co_await socket.recv_from(buffer)).size);
        positions.record(i == 0);
    }
    co_return received;
}

int run_coroutines() {
    constexpr long chain = 1'000'000;
    constexpr long round_trips = 100'000;
    muxio::Reactor reactor;
    Positions chain_positions;
    const long sum = muxio::run_until_complete(reactor, awaits_of_ended_tasks(chain, chain_positions));
    int failures = check("a million awaits of tasks that end at once", sum == chain);
    failures += check("the million awaits ran in constant stack", chain_positions.flat());

    muxio::UdpSocket socket = muxio::UdpSocket::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
    Positions udp_positions;
    const long received = muxio::run_until_complete(reactor, ready_udp_round_trips(socket, round_trips, udp_positions));
    failures += check("every datagram came back", received == 4 * round_trips);
    failures += check("the UDP loop ran in constant stack", udp_positions.flat());
    if (failures == 0) {
#if defined(__OPTIMIZE__)
        const char* optimised = "optimised";
#else
        const char* optimised = "not optimised";
#endif
        std::printf("muxio consumer (%s): %ld awaits and %ld UDP round trips in constant stack\n", optimised, chain,
                    round_trips);
    }
    return failures == 0 ? 0 : 1;
}

}  // namespace

int main() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
        std::perror("muxio consumer: socketpair");
        return 1;
    }
    int status = 1;
    try {
        status = run(fds[0], fds[1]);
        if (status == 0) {
            status = run_coroutines();
        }
    } catch (const std::exception& error) {
        std::fprintf(stderr, "muxio consumer: FAILED: exception: %s\n", error.what());
    }
    ::close(fds[0]);
    ::close(fds[1]);
    return status;
}
