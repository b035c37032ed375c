// FifoQueue: a first-in, first-out queue over one std::vector.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace muxio::http {

/// What a connection has queued to send, oldest first: a vector and the
/// index of its head. Unlike std::deque, which allocates and frees a block
/// every few elements as a queue of one or two drifts through it, the same
/// memory serves every response of a keep-alive connection, and it stays
/// warm. Popping resets the element (releasing what it holds); the slots
/// before the head are reclaimed when the queue empties, or once they are
/// at least half of the vector, so a queue that never empties stays
/// bounded. Pushing may move the elements: references do not survive it.
template <class T>
class FifoQueue {
public:
    [[nodiscard]] bool empty() const noexcept { return head_ == items_.size(); }
    [[nodiscard]] std::size_t size() const noexcept { return items_.size() - head_; }
    /// Slots held, popped ones included (for tests of the reclaiming).
    [[nodiscard]] std::size_t footprint() const noexcept { return items_.size(); }

    T& front() noexcept { return items_[head_]; }
    T& back() noexcept { return items_.back(); }

    template <class... Args>
    T& emplace_back(Args&&... args) {
        return items_.emplace_back(std::forward<Args>(args)...);
    }
    void push_back(T&& item) { items_.push_back(std::move(item)); }

    void pop_front() {
        items_[head_] = T{};
        ++head_;
        if (head_ == items_.size()) {
            items_.clear();  // keeps the capacity
            head_ = 0;
        } else if (head_ >= reclaim_after && 2 * head_ >= items_.size()) {
            items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
            head_ = 0;
        }
    }

private:
    static constexpr std::size_t reclaim_after = 16;

    std::vector<T> items_;
    std::size_t head_ = 0;
};

}  // namespace muxio::http
