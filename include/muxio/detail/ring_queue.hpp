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
        if (size() == capacity_) [[unlikely]] {
            grow();
        }
        slots_[tail_ & mask_] = std::move(value);
        return tail_++;
    }

    /// push() of a T built in place from `args` (into a slot that holds an
    /// empty T: T::emplace() replaces it). If that throws, nothing was pushed.
    template <class... Args>
    std::uint64_t emplace(Args&&... args) {
        if (size() == capacity_) [[unlikely]] {
            grow();
        }
        slots_[tail_ & mask_].emplace(std::forward<Args>(args)...);
        return tail_++;
    }

    /// Removes the oldest element from the queue but leaves it in its slot:
    /// the reference stays valid until the next push() or clear(). The queue
    /// must not be empty. For running a batch in place, without moving each
    /// element out.
    T& pop_in_place() noexcept { return slots_[head_++ & mask_]; }

    /// Makes an empty queue hand out positions from `position` on, so that
    /// two queues taking turns (see Reactor) never reuse a position.
    void restart_at(std::uint64_t position) noexcept {
        head_ = position;
        tail_ = position;
    }
    [[nodiscard]] std::uint64_t next_position() const noexcept { return tail_; }

    /// The element at `position` while it is queued; nullptr once it was
    /// popped or cleared, or for a position never handed out.
    [[nodiscard]] T* find(std::uint64_t position) noexcept {
        return position >= head_ && position < tail_ ? &slots_[position & mask_] : nullptr;
    }
    [[nodiscard]] const T* find(std::uint64_t position) const noexcept {
        return const_cast<RingQueue*>(this)->find(position);
    }

    /// Destroys every element. Positions keep counting, so a handle from
    /// before the clear never names a later element.
    void clear() noexcept {
        slots_.clear();
        capacity_ = 0;
        mask_ = 0;
        head_ = tail_;
    }

private:
    // Out of line: push()'s fast path then needs few registers.
    [[gnu::noinline]] void grow() {
        std::vector<T> bigger(capacity_ == 0 ? 64 : capacity_ * 2);
        const std::size_t bigger_mask = bigger.size() - 1;
        for (std::uint64_t position = head_; position != tail_; ++position) {
            bigger[position & bigger_mask] = std::move(slots_[position & mask_]);
        }
        slots_ = std::move(bigger);
        capacity_ = slots_.size();
        mask_ = bigger_mask;
    }

    std::vector<T> slots_;
    // slots_.size() and that minus one, kept: computing them divides by the
    // element size on every push.
    std::size_t capacity_ = 0;
    std::size_t mask_ = 0;
    std::uint64_t head_ = 0;  // monotonic positions; the mask picks the slot
    std::uint64_t tail_ = 0;
};

}  // namespace muxio::detail
