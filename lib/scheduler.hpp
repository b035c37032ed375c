// The reactor's timers: records in a slot map with generations, ordered by a
// 4-ary min-heap that knows each record's position, so cancel is O(log n)
// and a stale handle is harmless.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "muxio/reactor.hpp"

namespace muxio::detail {

class Scheduler {
public:
    using TimePoint = Reactor::TimePoint;

    /// Names one scheduled callback; stale once it ran or was cancelled.
    struct Id {
        std::uint32_t slot;
        std::uint32_t generation;
    };

    /// Stores a callback due at `deadline`. Equal deadlines keep scheduling
    /// order through a sequence number, as libuv does.
    Id add_timer(TimePoint deadline, Callback callback) {
        // The heap grows first: if either allocation throws, nothing is recorded.
        heap_.push_back({deadline, next_sequence_, 0});
        std::uint32_t slot = 0;
        try {
            slot = acquire();
        } catch (...) {
            heap_.pop_back();
            throw;
        }
        ++next_sequence_;
        Record& record = records_[slot];
        record.callback = std::move(callback);
        heap_.back().slot = slot;
        heap_pos_[slot] = static_cast<std::uint32_t>(heap_.size() - 1);
        sift_up(heap_.size() - 1);
        return {slot, record.generation};
    }

    [[nodiscard]] bool pending(Id id) const noexcept {
        return id.slot < records_.size() && records_[id.slot].generation == id.generation && records_[id.slot].in_use;
    }

    /// Forgets the callback (destroying its captures now) if it is still
    /// pending; returns whether it was.
    bool cancel(Id id) noexcept {
        if (!pending(id)) {
            return false;
        }
        if (heap_pos_[id.slot] != not_in_heap) {
            erase_from_heap(heap_pos_[id.slot]);
        }
        release(id.slot);
        return true;
    }

    /// Moves the callback out and frees its record, so the callback may
    /// cancel its own handle harmlessly while it runs. Empty if stale.
    Callback take(Id id) noexcept {
        if (!pending(id)) {
            return {};
        }
        Callback callback = std::move(records_[id.slot].callback);
        release(id.slot);
        return callback;
    }

    [[nodiscard]] std::optional<TimePoint> next_deadline() const noexcept {
        if (heap_.empty()) {
            return std::nullopt;
        }
        return heap_.front().deadline;
    }

    /// Removes the earliest timer if it is due at `now`; its record stays
    /// pending until take().
    std::optional<Id> pop_due(TimePoint now) noexcept {
        if (heap_.empty() || heap_.front().deadline > now) {
            return std::nullopt;
        }
        const std::uint32_t slot = heap_.front().slot;
        erase_from_heap(0);
        return Id{slot, records_[slot].generation};
    }

    [[nodiscard]] std::size_t size() const noexcept { return live_; }
    [[nodiscard]] std::size_t timer_count() const noexcept { return heap_.size(); }

    /// Destroys every callback.
    void clear() noexcept {
        records_.clear();
        free_.clear();
        heap_pos_.clear();
        heap_.clear();
        live_ = 0;
    }

private:
    static constexpr std::uint32_t not_in_heap = UINT32_MAX;
    static constexpr std::size_t arity = 4;

    struct Record {
        Callback callback;
        std::uint32_t generation = 0;
        bool in_use = false;
    };
    // Kept apart from the records so sifting touches 24-byte entries only.
    struct HeapEntry {
        TimePoint deadline;
        std::uint64_t sequence;
        std::uint32_t slot;
    };

    static bool earlier(const HeapEntry& a, const HeapEntry& b) noexcept {
        return a.deadline != b.deadline ? a.deadline < b.deadline : a.sequence < b.sequence;
    }

    std::uint32_t acquire() {
        std::uint32_t slot = 0;
        if (!free_.empty()) {
            slot = free_.back();
            free_.pop_back();
        } else {
            heap_pos_.push_back(not_in_heap);
            try {
                records_.emplace_back();
            } catch (...) {
                heap_pos_.pop_back();
                throw;
            }
            // release() runs in noexcept paths; room for every slot in the
            // free list is made here, where allocation may throw. Following
            // records_' capacity keeps the growth geometric: reserving the
            // exact size would reallocate the free list for every new slot.
            free_.reserve(records_.capacity());
            slot = static_cast<std::uint32_t>(records_.size() - 1);
        }
        records_[slot].in_use = true;
        ++live_;
        return slot;
    }

    void release(std::uint32_t slot) noexcept {
        Record& record = records_[slot];
        // Destroyed last, once the slot is free: the captures' destructors may
        // schedule or cancel callbacks, which can grow records_ and move `record`.
        const Callback doomed = std::move(record.callback);
        record.in_use = false;
        heap_pos_[slot] = not_in_heap;
        ++record.generation;  // every outstanding Id of this slot is now stale
        free_.push_back(slot);
        --live_;
    }

    void place(std::size_t index, const HeapEntry& entry) noexcept {
        heap_[index] = entry;
        heap_pos_[entry.slot] = static_cast<std::uint32_t>(index);
    }

    void sift_up(std::size_t index) noexcept {
        const HeapEntry moving = heap_[index];
        while (index > 0) {
            const std::size_t parent = (index - 1) / arity;
            if (!earlier(moving, heap_[parent])) {
                break;
            }
            place(index, heap_[parent]);
            index = parent;
        }
        place(index, moving);
    }

    void sift_down(std::size_t index) noexcept {
        const HeapEntry moving = heap_[index];
        const std::size_t size = heap_.size();
        for (;;) {
            const std::size_t first_child = index * arity + 1;
            if (first_child >= size) {
                break;
            }
            std::size_t best = first_child;
            const std::size_t last_child = std::min(first_child + arity, size);
            for (std::size_t child = first_child + 1; child < last_child; ++child) {
                if (earlier(heap_[child], heap_[best])) {
                    best = child;
                }
            }
            if (!earlier(heap_[best], moving)) {
                break;
            }
            place(index, heap_[best]);
            index = best;
        }
        place(index, moving);
    }

    void erase_from_heap(std::size_t index) noexcept {
        heap_pos_[heap_[index].slot] = not_in_heap;
        const HeapEntry last = heap_.back();
        heap_.pop_back();
        if (index == heap_.size()) {
            return;
        }
        heap_[index] = last;
        heap_pos_[last.slot] = static_cast<std::uint32_t>(index);
        if (index > 0 && earlier(last, heap_[(index - 1) / arity])) {
            sift_up(index);
        } else {
            sift_down(index);
        }
    }

    std::vector<Record> records_;
    std::vector<std::uint32_t> free_;
    // Each record's index in heap_ (or not_in_heap), by slot. Apart from the
    // records and dense (16 to a cache line): every step of a sift writes one.
    std::vector<std::uint32_t> heap_pos_;
    std::vector<HeapEntry> heap_;
    std::uint64_t next_sequence_ = 0;
    std::size_t live_ = 0;
};

}  // namespace muxio::detail
