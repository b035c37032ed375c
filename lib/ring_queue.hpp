// A FIFO in a power-of-two ring: push and pop never allocate once the ring
// has grown to the largest backlog seen (std::deque frees and reallocates
// blocks as it goes).
//
// Every element keeps an absolute position for its whole stay: the count of
// pushes before it. The reactor hands that position out as the handle of a
// call_soon() callback, and find() turns it back into the element while it
// is still queued. Growing keeps each element at `position & mask`, so
// positions survive it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace muxio::detail {

template <class T>
class RingQueue {
public:
    [[nodiscard]] bool empty() const noexcept { return head_ == tail_; }
    [[nodiscard]] std::size_t size() const noexcept { return static_cast<std::size_t>(tail_ - head_); }

    /// Appends `value`; returns its position. Taken by reference: the
    /// reactor's callbacks are 56 bytes, moved through a function pointer.
    std::uint64_t push(T&& value) {
        if (size() == slots_.size()) {
            grow();
        }
        slots_[tail_ & mask()] = std::move(value);
        return tail_++;
    }

    /// Removes and returns the oldest element. The queue must not be empty.
    T pop() noexcept { return std::move(slots_[head_++ & mask()]); }

    /// The element at `position` while it is queued; nullptr once it was
    /// popped or cleared, or for a position never handed out.
    [[nodiscard]] T* find(std::uint64_t position) noexcept {
        return position >= head_ && position < tail_ ? &slots_[position & mask()] : nullptr;
    }
    [[nodiscard]] const T* find(std::uint64_t position) const noexcept {
        return const_cast<RingQueue*>(this)->find(position);
    }

    /// Destroys every element. Positions keep counting, so a handle from
    /// before the clear never names a later element.
    void clear() noexcept {
        slots_.clear();
        head_ = tail_;
    }

private:
    [[nodiscard]] std::size_t mask() const noexcept { return slots_.size() - 1; }

    void grow() {
        std::vector<T> bigger(slots_.empty() ? 64 : slots_.size() * 2);
        const std::size_t bigger_mask = bigger.size() - 1;
        for (std::uint64_t position = head_; position != tail_; ++position) {
            bigger[position & bigger_mask] = std::move(slots_[position & mask()]);
        }
        slots_ = std::move(bigger);
    }

    std::vector<T> slots_;
    std::uint64_t head_ = 0;  // monotonic positions; the mask picks the slot
    std::uint64_t tail_ = 0;
};

}  // namespace muxio::detail
