// Uses an installed muxio: registers one end of a socket pair with the
// default selector, makes it readable, and checks that select() says so.
// Exits 0 on success, 1 with a message otherwise.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
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
    } catch (const std::exception& error) {
        std::fprintf(stderr, "muxio consumer: FAILED: exception: %s\n", error.what());
    }
    ::close(fds[0]);
    ::close(fds[1]);
    return status;
}
