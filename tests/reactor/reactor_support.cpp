#include "reactor/reactor_support.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <new>
#include <string>
#include <system_error>

#include "muxio/selectors.hpp"

namespace muxio::reactor_test {

const std::vector<std::string>& usable_selectors() {
    static const std::vector<std::string> usable = [] {
        std::vector<std::string> names;
        for (const std::string_view name : available_selectors()) {
            try {
                (void)make_selector<int>(name);
                names.emplace_back(name);
            } catch (const std::system_error& refused) {
                MESSAGE("selector ", std::string{name}, " refused by the kernel, skipped: ", refused.what());
            }
        }
        return names;
    }();
    return usable;
}

std::vector<std::string> embeddable_selectors() {
    std::vector<std::string> names;
    for (const std::string& name : usable_selectors()) {
        if (make_selector<int>(name)->fileno() >= 0) {
            names.push_back(name);
        }
    }
    return names;
}

std::vector<int> open_fds() {
    DIR* dir = ::opendir("/proc/self/fd");
    REQUIRE(dir != nullptr);
    std::vector<int> fds;
    while (const dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] == '.') {
            continue;
        }
        const int fd = std::atoi(entry->d_name);
        if (fd != ::dirfd(dir)) {
            fds.push_back(fd);
        }
    }
    ::closedir(dir);
    return fds;
}

namespace {

int find_new_anon_inode(const std::vector<int>& before, std::string_view kind) {
    const std::string wanted = "anon_inode:[" + std::string{kind} + "]";
    int found = -1;
    int matches = 0;
    for (const int fd : open_fds()) {
        if (std::find(before.begin(), before.end(), fd) != before.end()) {
            continue;
        }
        std::array<char, 256> target{};
        const std::string link = "/proc/self/fd/" + std::to_string(fd);
        const ssize_t length = ::readlink(link.c_str(), target.data(), target.size() - 1);
        if (length > 0 && std::string_view{target.data(), static_cast<std::size_t>(length)} == wanted) {
            found = fd;
            ++matches;
        }
    }
    REQUIRE_MESSAGE(matches == 1, "expected exactly one new ", std::string{kind}, ", found ", matches);
    return found;
}

}  // namespace

int find_new_eventfd(const std::vector<int>& before) {
    return find_new_anon_inode(before, "eventfd");
}

int find_new_timerfd(const std::vector<int>& before) {
    return find_new_anon_inode(before, "timerfd");
}

std::uint64_t eventfd_count(int fd) {
    std::ifstream info{"/proc/self/fdinfo/" + std::to_string(fd)};
    REQUIRE(info.is_open());
    std::string line;
    while (std::getline(info, line)) {
        constexpr std::string_view field = "eventfd-count:";
        if (line.starts_with(field)) {
            return std::stoull(line.substr(field.size()), nullptr, 16);
        }
    }
    FAIL("no eventfd-count in /proc/self/fdinfo/", fd);
    return 0;
}

SavedSignal::SavedSignal(int signo) : signo_{signo} {
    REQUIRE(::sigaction(signo_, nullptr, &saved_) == 0);
}

SavedSignal::~SavedSignal() {
    ::sigaction(signo_, &saved_, nullptr);
}

void (*current_handler(int signo))(int) {
    struct sigaction now {};
    REQUIRE(::sigaction(signo, nullptr, &now) == 0);
    return now.sa_handler;
}

}  // namespace muxio::reactor_test
