// A socket's reactor callbacks follow it when it moves, and the move leaves
// the kernel registration alone: the callbacks are swapped, the descriptor
// is not registered again.
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "coro/coro_support.hpp"
#include "muxio/net.hpp"
#include "muxio/run.hpp"
#include "muxio/selectors.hpp"
#include "support/support.hpp"

using muxio::Reactor;
using muxio::Task;
using muxio::UnixStream;
using muxio::coro_test::FrameLeakCheck;
using muxio::coro_test::Live;
using muxio::test::FdLeakCheck;

namespace {

std::vector<int> open_fds() {
    std::vector<int> fds;
    DIR* dir = ::opendir("/proc/self/fd");
    REQUIRE(dir != nullptr);
    while (const dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] != '.' && std::stoi(entry->d_name) != ::dirfd(dir)) {
            fds.push_back(std::stoi(entry->d_name));
        }
    }
    ::closedir(dir);
    return fds;
}

// The one epoll instance among the descriptors opened since `before`.
int new_epoll_fd(const std::vector<int>& before) {
    int found = -1;
    for (const int fd : open_fds()) {
        std::array<char, 64> target{};
        const ssize_t length = ::readlink(fmt::format("/proc/self/fd/{}", fd).c_str(), target.data(), target.size());
        if (std::find(before.begin(), before.end(), fd) == before.end() && length > 0 &&
            std::string{target.data(), static_cast<std::size_t>(length)} == "anon_inode:[eventpoll]") {
            REQUIRE(found == -1);
            found = fd;
        }
    }
    REQUIRE(found >= 0);
    return found;
}

// The token the epoll set `epfd` carries for `fd`, as /proc/self/fdinfo
// shows it: a new registration or a modification would change it.
std::optional<std::uint64_t> epoll_token(int epfd, int fd) {
    std::ifstream info{fmt::format("/proc/self/fdinfo/{}", epfd)};
    std::string line;
    while (std::getline(info, line)) {
        int target = -1;
        unsigned events = 0;
        unsigned long long data = 0;
        if (std::sscanf(line.c_str(), "tfd: %d events: %x data: %llx", &target, &events, &data) == 3 && target == fd) {
            return data;
        }
    }
    return std::nullopt;
}

Task<std::size_t> read_once(Reactor& reactor, UnixStream& stream, int writer_fd, Live /*held*/) {
    std::array<std::byte, 8> buffer{};
    reactor.call_soon([writer_fd] { muxio::test::write_all(writer_fd, "x"); });
    co_return co_await stream.read_some(buffer);
}

}  // namespace

TEST_CASE("moving a socket swaps its reactor callbacks and leaves the kernel registration alone") {
    FdLeakCheck leak_check;
    FrameLeakCheck frame_check;
    const auto available = muxio::available_selectors();
    if (std::find(available.begin(), available.end(), "epoll") == available.end()) {
        return;
    }
    const std::vector<int> before = open_fds();
    muxio::ReactorOptions options;
    options.selector = "epoll";
    Reactor reactor{options};
    const int epfd = new_epoll_fd(before);
    auto [left, right] = UnixStream::pair(reactor);
    const int fd = left.fileno();
    // The read waited, so the socket's reader stays registered.
    CHECK(muxio::run_until_complete(reactor, read_once(reactor, left, right.fileno(), Live{})) == 1);
    REQUIRE(reactor.has_reader(fd));
    const std::optional<std::uint64_t> token = epoll_token(epfd, fd);
    REQUIRE(token.has_value());

    UnixStream moved = std::move(left);
    CHECK(epoll_token(epfd, fd) == token);
    CHECK(muxio::run_until_complete(reactor, read_once(reactor, moved, right.fileno(), Live{})) == 1);
    left = std::move(moved);  // and back, by assignment
    CHECK(epoll_token(epfd, fd) == token);
    CHECK(muxio::run_until_complete(reactor, read_once(reactor, left, right.fileno(), Live{})) == 1);
}
