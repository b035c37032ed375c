// Per-descriptor bookkeeping the pollers and the reactor share.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <string_view>
#include <utility>
#include <vector>

#include "muxio/error.hpp"

namespace muxio::detail {

// Owns a descriptor the library made (epoll, eventfd, ...) from the moment
// the kernel returns it, so that a constructor throwing afterwards, for want
// of memory say, cannot leak it.
class OwnedFd {
public:
    OwnedFd() = default;
    explicit OwnedFd(int fd) noexcept : fd_{fd} {}
    OwnedFd(OwnedFd&& other) noexcept : fd_{std::exchange(other.fd_, -1)} {}
    OwnedFd& operator=(OwnedFd&& other) noexcept {
        if (this != &other) {
            reset(std::exchange(other.fd_, -1));
        }
        return *this;
    }
    OwnedFd(const OwnedFd&) = delete;
    OwnedFd& operator=(const OwnedFd&) = delete;
    ~OwnedFd() { reset(); }

    [[nodiscard]] int get() const noexcept { return fd_; }
    [[nodiscard]] bool valid() const noexcept { return fd_ >= 0; }
    [[nodiscard]] int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) {
            ::close(fd_);
        }
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

// select(2) and poll(2) take any number without complaint and only fail at
// wait time (EBADF for the whole select() call, POLLNVAL for poll). Checking
// at add() time gives the caller the error where the mistake was made.
inline void require_open_descriptor(int fd, std::string_view operation) {
    if (::fcntl(fd, F_GETFD) == -1) {
        throw_system_error(errno, operation, fd);
    }
}

// A vector indexed by descriptor that grows on demand; reads past the end see
// `fill`.
template <class T>
class DescriptorTable {
public:
    explicit DescriptorTable(T fill) : fill_{fill} {}

    [[nodiscard]] const T& operator[](int fd) const noexcept {
        const auto index = static_cast<std::size_t>(fd);
        return index < values_.size() ? values_[index] : fill_;
    }
    T& at_growing(int fd) {
        const auto index = static_cast<std::size_t>(fd);
        if (index >= values_.size()) {
            values_.resize(index + 1, fill_);
        }
        return values_[index];
    }
    void reset(int fd) noexcept {
        const auto index = static_cast<std::size_t>(fd);
        if (index < values_.size()) {
            values_[index] = fill_;
        }
    }
    void clear() noexcept { values_.clear(); }
    /// One past the highest descriptor ever grown to.
    [[nodiscard]] int size() const noexcept { return static_cast<int>(values_.size()); }

private:
    std::vector<T> values_;
    T fill_;
};

}  // namespace muxio::detail
