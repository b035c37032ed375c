// The selector example README.md opens with, built as a program of its own
// and run by CTest. The code between the readme-begin and readme-end markers
// is printed in README.md verbatim; readme_snippets_test.cpp fails when the
// two differ.

// readme-begin: selector
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include <fmt/format.h>
#include <muxio/muxio.hpp>

int main() {
    int ends[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, ends) != 0) {
        return 1;
    }

    // The key data is yours: any movable type. Here, a name for each end.
    muxio::DefaultSelector<std::string> selector;
    selector.register_(ends[0], muxio::EVENT_READ, "reader");
    selector.register_(ends[1], muxio::EVENT_WRITE, "writer");
    if (::write(ends[1], "ping", 4) != 4) {
        return 1;
    }

    using namespace std::chrono_literals;
    for (const auto& [key, events] : selector.select(100ms)) {
        fmt::print("{} (fd {}) is ready for {}\n", key.data, key.fd, events);
    }

    // New events and new data in one call; only the events reach the kernel.
    selector.modify(ends[1], muxio::EVENT_READ, "idle writer");
    fmt::print("{} keys on the {} selector\n", selector.get_map().size(), selector.name());

    for (const int end : ends) {
        const auto key = selector.unregister(end);  // the key comes back, data included
        ::close(key.fd);
    }
}
// readme-end: selector
