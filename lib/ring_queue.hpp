// A FIFO in a power-of-two ring: push and pop never allocate once the ring
// has grown to the largest backlog seen (std::deque frees and reallocates
// blocks as it goes).
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace muxio::detail {

template <class T>
class RingQueue {
public:
    [[nodiscard]] bool empty() const noexcept { return head_ == tail_; }
    [[nodiscard]] std::size_t size() const noexcept { return tail_ - head_; }

    void push(T value) {
        if (size() == slots_.size()) {
            grow();
        }
        slots_[tail_++ & (slots_.size() - 1)] = std::move(value);
    }

    T pop() noexcept { return std::move(slots_[head_++ & (slots_.size() - 1)]); }

    void clear() noexcept {
        slots_.clear();
        head_ = tail_ = 0;
    }

private:
    void grow() {
        std::vector<T> bigger(slots_.empty() ? 64 : slots_.size() * 2);
        const std::size_t count = size();
        for (std::size_t i = 0; i < count; ++i) {
            bigger[i] = std::move(slots_[(head_ + i) & (slots_.size() - 1)]);
        }
        slots_ = std::move(bigger);
        head_ = 0;
        tail_ = count;
    }

    std::vector<T> slots_;
    std::size_t head_ = 0;  // monotonic counters; the mask picks the slot
    std::size_t tail_ = 0;
};

}  // namespace muxio::detail
