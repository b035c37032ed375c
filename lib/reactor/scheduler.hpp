// The reactor's timers: records in a slot table with generations, ordered by
// a 4-ary min-heap of (deadline, slot) entries.
//
// Cancellation is lazy. A cancelled timer's callback is destroyed at once,
// but its heap entry stays where it is, marked by its record, until it
// reaches the top or until cancelled entries make up half of the heap, when
// they are all dropped and the heap is rebuilt in linear time. So cancel()
// is O(1) amortised, and the heap needs no index of positions: keeping one
// cost a write to a random place in memory at every step of every sift,
// which at a million timers is a cache miss each (benchmarked: see the
// timers section of docs/BENCHMARKS.md).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <utility>
#include <vector>

#include "muxio/detail/chunked_table.hpp"
#include "muxio/detail/prefetch.hpp"
#include "muxio/reactor.hpp"

namespace muxio::detail {

/// std::allocator with cache-line alignment, for the heap's child groups.
template <class T>
struct CacheLineAllocator {
    using value_type = T;
    static constexpr std::align_val_t alignment{64};

    CacheLineAllocator() = default;
    template <class U>
    CacheLineAllocator(  // NOLINT(google-explicit-constructor): rebinding converts implicitly
        const CacheLineAllocator<U>& /*other*/) noexcept {}

    T* allocate(std::size_t count) { return static_cast<T*>(::operator new(count * sizeof(T), alignment)); }
    void deallocate(T* pointer, std::size_t /*count*/) noexcept { ::operator delete(pointer, alignment); }
    friend bool operator==(const CacheLineAllocator& /*a*/, const CacheLineAllocator& /*b*/) noexcept { return true; }
};

class Scheduler {
public:
    using TimePoint = Reactor::TimePoint;

    /// Names one scheduled callback; stale once it ran or was cancelled.
    struct Id {
        std::uint32_t slot;
        std::uint32_t generation;
    };

    Scheduler() { heap_.resize(heap_offset); }

    /// Stores a callback due at `deadline`. Equal deadlines keep scheduling
    /// order through a sequence number, as libuv does.
    Id add_timer(TimePoint deadline, Callback callback) {
        // Both allocations happen before anything is recorded, so if either
        // throws the scheduler is unchanged.
        if (heap_.size() == heap_.capacity()) {
            heap_.reserve(2 * heap_.capacity());
        }
        const std::uint32_t slot = acquire();
        Record& record = records_[slot];
        callbacks_[slot] = std::move(callback);
        record.sequence = next_sequence_++;
        record.state = State::scheduled;
        ++live_;
        heap_.push_back({deadline, slot});
        sift_up(heap_size() - 1);
        return {slot, record.generation};
    }

    [[nodiscard]] bool pending(Id id) const noexcept {
        if (id.slot >= records_.size()) {
            return false;
        }
        const Record& record = records_[id.slot];
        return record.generation == id.generation && (record.state == State::scheduled || record.state == State::due);
    }

    /// Forgets the callback (destroying its captures now) if it is still
    /// pending; returns whether it was.
    bool cancel(Id id) noexcept {
        if (!pending(id)) {
            return false;
        }
        Record& record = records_[id.slot];
        // Destroyed last, once the scheduler is consistent again: the
        // captures' destructors may schedule or cancel timers.
        const Callback doomed = std::move(callbacks_[id.slot]);
        --live_;
        if (record.state == State::due) {
            release(id.slot);  // out of the heap already
            return true;
        }
        record.state = State::cancelled;
        ++cancelled_in_heap_;
        if (top().slot == id.slot) {
            drop_cancelled_top();
        } else {
            compact_if_half_cancelled();
        }
        return true;
    }

    /// Moves out the callback of a timer pop_due() returned and frees its
    /// record, so the callback may cancel its own handle harmlessly while it
    /// runs. Empty if the timer was cancelled since.
    Callback take(Id id) noexcept {
        if (!pending(id) || records_[id.slot].state != State::due) {
            return {};
        }
        Callback callback = std::move(callbacks_[id.slot]);
        --live_;
        release(id.slot);
        return callback;
    }

    /// Starts loading what take(id) reads, for a caller that knows it will.
    void prefetch(Id id) const noexcept {
        detail::prefetch(&records_[id.slot]);
        detail::prefetch(&callbacks_[id.slot]);
    }

    [[nodiscard]] std::optional<TimePoint> next_deadline() const noexcept {
        if (heap_size() == 0) {
            return std::nullopt;
        }
        return top().deadline;
    }

    /// Removes the earliest timer if it is due at `now`; its record stays
    /// pending until take().
    std::optional<Id> pop_due(TimePoint now) noexcept {
        if (heap_size() == 0 || top().deadline > now) {
            return std::nullopt;
        }
        const std::uint32_t slot = top().slot;
        remove_top();
        records_[slot].state = State::due;
        drop_cancelled_top();
        compact_if_half_cancelled();
        return Id{slot, records_[slot].generation};
    }

    /// Timers scheduled and not yet run or cancelled.
    [[nodiscard]] std::size_t size() const noexcept { return live_; }
    /// Entries in the heap. The top is never a cancelled one, so this is
    /// zero exactly when no timer waits for its deadline.
    [[nodiscard]] std::size_t timer_count() const noexcept { return heap_size(); }

    /// Destroys every callback.
    void clear() noexcept {
        callbacks_.clear();
        records_.clear();
        free_.clear();
        heap_.resize(heap_offset);
        fresh_ = 0;
        live_ = 0;
        cancelled_in_heap_ = 0;
    }

private:
    static constexpr std::size_t arity = 4;
    // The root lives at heap_[heap_offset], so that with 16-byte entries the
    // four children of any node fill exactly one 64-byte cache line.
    static constexpr std::size_t heap_offset = arity - 1;

    enum class State : std::uint8_t { free, scheduled, cancelled, due };

    // The callbacks are kept apart from the records' 16 bytes of state,
    // which every heap operation reads: a million records fit in the cache,
    // a million callbacks do not.
    struct Record {
        std::uint64_t sequence = 0;
        std::uint32_t generation = 0;
        State state = State::free;
    };
    struct HeapEntry {
        TimePoint deadline;
        std::uint32_t slot;
    };
    static_assert(sizeof(HeapEntry) * arity == 64);

    [[nodiscard]] std::size_t heap_size() const noexcept { return heap_.size() - heap_offset; }
    [[nodiscard]] HeapEntry& at(std::size_t index) noexcept { return heap_[heap_offset + index]; }
    [[nodiscard]] const HeapEntry& top() const noexcept { return heap_[heap_offset]; }

    // Ties are rare (deadlines are in nanoseconds), so the sequence lives in
    // the record. A cancelled entry's record keeps its sequence until the
    // entry leaves the heap, so the order never changes under the heap.
    [[nodiscard]] bool earlier(const HeapEntry& a, const HeapEntry& b) const noexcept {
        if (a.deadline != b.deadline) {
            return a.deadline < b.deadline;
        }
        return records_[a.slot].sequence < records_[b.slot].sequence;
    }

    std::uint32_t acquire() {
        if (!free_.empty()) {
            const std::uint32_t slot = free_.back();
            free_.pop_back();
            return slot;
        }
        records_.grow_to(fresh_);
        callbacks_.grow_to(fresh_);
        // release() runs in noexcept paths; room for every slot in the free
        // list is made here, where allocation may throw.
        // Growing it geometrically, not chunk by chunk, keeps that linear.
        if (free_.capacity() < records_.size()) {
            free_.reserve(std::max(records_.size(), 2 * free_.capacity()));
        }
        return static_cast<std::uint32_t>(fresh_++);
    }

    void release(std::uint32_t slot) noexcept {
        Record& record = records_[slot];
        record.state = State::free;
        ++record.generation;  // every outstanding Id of this slot is now stale
        free_.push_back(slot);
    }

    // Keeps the top a live timer, so next_deadline() is a timer that runs.
    void drop_cancelled_top() noexcept {
        while (heap_size() != 0 && records_[top().slot].state == State::cancelled) {
            const std::uint32_t slot = top().slot;
            remove_top();
            --cancelled_in_heap_;
            release(slot);
        }
    }

    // Keeps cancelled entries under half of the heap, so it never holds more
    // than twice the live timers. Each compaction is paid for by the cancels
    // that left the entries behind.
    void compact_if_half_cancelled() noexcept {
        if (cancelled_in_heap_ != 0 && 2 * cancelled_in_heap_ >= heap_size()) {
            compact();
        }
    }

    // Drops every cancelled entry, then heapifies what is left (Floyd).
    void compact() noexcept {
        std::size_t kept = 0;
        for (std::size_t index = 0; index < heap_size(); ++index) {
            const HeapEntry entry = at(index);
            if (records_[entry.slot].state == State::cancelled) {
                release(entry.slot);
            } else {
                at(kept++) = entry;
            }
        }
        heap_.resize(heap_offset + kept);
        cancelled_in_heap_ = 0;
        if (kept > 1) {
            for (std::size_t index = (kept - 2) / arity + 1; index-- > 0;) {
                sift_down(index);
            }
        }
    }

    void sift_up(std::size_t index) noexcept {
        const HeapEntry moving = at(index);
        while (index > 0) {
            const std::size_t parent = (index - 1) / arity;
            if (!earlier(moving, at(parent))) {
                break;
            }
            at(index) = at(parent);
            index = parent;
        }
        at(index) = moving;
    }

    [[nodiscard]] std::size_t earliest_child(std::size_t first_child, std::size_t size) noexcept {
        std::size_t best = first_child;
        const std::size_t end = first_child + arity < size ? first_child + arity : size;
        for (std::size_t child = first_child + 1; child < end; ++child) {
            if (earlier(at(child), at(best))) {
                best = child;
            }
        }
        return best;
    }

    void sift_down(std::size_t index) noexcept {
        const HeapEntry moving = at(index);
        const std::size_t size = heap_size();
        for (std::size_t first_child = index * arity + 1; first_child < size; first_child = index * arity + 1) {
            const std::size_t best = earliest_child(first_child, size);
            if (!earlier(at(best), moving)) {
                break;
            }
            at(index) = at(best);
            index = best;
        }
        at(index) = moving;
    }

    // Floyd's bottom-up removal: the hole at the root sinks to a leaf along
    // the earliest children, then the last entry rises into it. The last
    // entry nearly always belongs near the bottom, so this saves comparing it
    // at every level on the way down.
    void remove_top() noexcept {
        const HeapEntry last = heap_.back();
        heap_.pop_back();
        const std::size_t size = heap_size();
        if (size == 0) {
            return;
        }
        std::size_t hole = 0;
        for (std::size_t first_child = 1; first_child < size; first_child = hole * arity + 1) {
            // The grandchildren's lines are fetched while these children are
            // compared: one of them is read next.
            const std::size_t first_grandchild = first_child * arity + 1;
            if (first_grandchild < size) {
                for (std::size_t group = 0; group < arity; ++group) {
                    detail::prefetch(&at(first_grandchild + group * arity));
                }
            }
            const std::size_t best = earliest_child(first_child, size);
            if (hole == 0) {
                // The next root: pop_due() reads its record right after.
                detail::prefetch(&records_[at(best).slot]);
            }
            at(hole) = at(best);
            hole = best;
        }
        at(hole) = last;
        sift_up(hole);
    }

    // 1 024 slots to a chunk (80 KiB with the callbacks): smaller chunks mean
    // more of them to reach through, which the million-timer benchmark feels.
    ChunkedTable<Record, 10> records_;
    ChunkedTable<Callback, 10> callbacks_;
    std::size_t fresh_ = 0;  // slots below this have been handed out at least once
    std::vector<std::uint32_t> free_;
    std::vector<HeapEntry, CacheLineAllocator<HeapEntry>> heap_;
    std::uint64_t next_sequence_ = 0;
    std::size_t live_ = 0;               // scheduled or due
    std::size_t cancelled_in_heap_ = 0;  // cancelled, entry still in the heap
};

}  // namespace muxio::detail
