// The reactor's timers: records in a slot table with generations, ordered by
// a 4-ary min-heap of (deadline, slot) entries.
//
// Cancellation is lazy. A cancelled timer's callback is destroyed at once,
// but its heap entry stays where it is, marked by its record, until it
// reaches the top or until dead entries make up half of the heap, when
// they are all dropped and the heap is rebuilt in linear time. So cancel()
// is O(1) amortised, and the heap needs no index of positions: keeping one
// cost a write to a random place in memory at every step of every sift,
// which at a million timers is a cache miss each (benchmarked: see the
// timers section of docs/BENCHMARKS.md).
//
// Rescheduling is lazy the same way: the timer gets a new entry, and the old
// one dies where it is. Each entry carries a tag, the low 32 bits of a count
// of pushes; an entry is its timer's live one only while its tag is the one
// in the record. The tag also orders equal deadlines (scheduling order,
// compared modulo 2^32), so a sift reads no record. Dead entries are never
// older than 2^31 pushes (older ones force a compaction), so a tag cannot
// come round again while an entry holding it is in the heap.
//
// A repeating timer keeps its record while its callback runs (state
// `running`) and goes back into the heap after it, at the next tick of its
// interval past the loop's time: ticks missed meanwhile are skipped.
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

    using Duration = Reactor::Duration;

    Scheduler() { heap_.resize(heap_offset); }

    /// Stores a callback due at `deadline`. Equal deadlines keep scheduling
    /// order through the push tag, as libuv does with a sequence number. A
    /// positive `interval` makes it repeat (see finish_repeat()).
    Id add_timer(TimePoint deadline, Callback callback, Duration interval = Duration::zero()) {
        // Every allocation happens before anything is recorded, so if one
        // throws the scheduler is unchanged.
        make_room();
        const bool repeating = interval > Duration::zero();
        if (repeating) {
            repeats_.grow_to(free_.empty() ? fresh_ : free_.back());
        }
        const std::uint32_t slot = acquire();
        Record& record = records_[slot];
        callbacks_[slot] = std::move(callback);
        record.state = State::scheduled;
        record.repeating = repeating;
        if (repeating) {
            repeats_[slot].interval = interval;
        }
        ++live_;
        push(slot, deadline);
        return {slot, record.generation};
    }

    [[nodiscard]] bool pending(Id id) const noexcept {
        if (id.slot >= records_.size()) {
            return false;
        }
        const Record& record = records_[id.slot];
        return record.generation == id.generation &&
               (record.state == State::scheduled || record.state == State::due || record.state == State::running);
    }

    /// Moves a pending timer to `deadline`, keeping its callback: a timer
    /// waiting in the heap, one due in this iteration and not run yet (it
    /// then waits for the new deadline), or a repeating one from inside its
    /// own callback (its next tick). Returns false, changing nothing, for a
    /// timer that ran, runs (one-shot) or was cancelled. May allocate only
    /// while the heap grows to its high-water mark (std::bad_alloc, nothing
    /// changed).
    bool reschedule(Id id, TimePoint deadline) {
        if (!pending(id)) {
            return false;
        }
        make_room();
        Record& record = records_[id.slot];
        const State was = record.state;
        const std::uint32_t old_tag = record.tag;
        if (was == State::scheduled) {
            note_dead_entry();  // its current entry
        } else if (was == State::running) {
            running_outside_ = false;
        }
        record.state = State::scheduled;
        const bool was_top = was == State::scheduled && top().slot == id.slot && top().tag == old_tag;
        push(id.slot, deadline);
        if (was_top) {
            drop_cancelled_top();
        } else if (was == State::scheduled) {
            compact_if_half_cancelled();
        }
        return true;
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
        if (record.state == State::running) {
            // Its callback is out, running: finish_repeat() frees the record.
            record.state = State::stopped;
            running_outside_ = false;
            return true;
        }
        record.state = State::cancelled;
        note_dead_entry();
        // Only the top's own record is read: any other is a cache miss in a
        // large heap.
        if (top().slot == id.slot && top().tag == record.tag) {
            drop_cancelled_top();
        } else {
            compact_if_half_cancelled();
        }
        return true;
    }

    /// Moves out the callback of a timer pop_due() returned, so the callback
    /// may cancel its own handle harmlessly while it runs. Empty if the
    /// timer was cancelled or rescheduled since. A one-shot timer's record
    /// is freed now; a repeating one's stays, `running`, and `*repeating` is
    /// set: the caller hands the callback back to finish_repeat() after
    /// running it.
    Callback take(Id id, bool* repeating = nullptr) noexcept {
        if (!pending(id) || records_[id.slot].state != State::due) {
            return {};
        }
        Record& record = records_[id.slot];
        Callback callback = std::move(callbacks_[id.slot]);
        if (record.repeating) [[unlikely]] {
            record.state = State::running;
            running_outside_ = true;
            if (repeating != nullptr) {
                *repeating = true;
            }
            return callback;
        }
        --live_;
        release(id.slot);
        return callback;
    }

    /// Puts back the callback of a repeating timer that take() returned,
    /// once it has run: at its next tick past `now` (the deadline it was due
    /// at plus its interval, or the first tick after `now` if that one has
    /// passed too: missed ticks are skipped, not run in a burst), at the
    /// deadline it was rescheduled to while it ran, or nowhere if it was
    /// cancelled meanwhile (the callback is then destroyed with the
    /// argument). Allocates nothing: the heap kept room for it.
    void finish_repeat(Id id, Callback callback, TimePoint now) noexcept {
        Record& record = records_[id.slot];
        switch (record.state) {
            case State::running: {
                running_outside_ = false;
                const Repeat& repeat = repeats_[id.slot];
                record.state = State::scheduled;
                callbacks_[id.slot] = std::move(callback);
                push(id.slot, next_tick(repeat.last_deadline, repeat.interval, now));
                break;
            }
            case State::scheduled:
                callbacks_[id.slot] = std::move(callback);
                break;
            case State::stopped:
                release(id.slot);
                break;
            default:  // cancelled after a reschedule: the heap entry frees the record
                break;
        }
    }

    /// The tick of a repeating timer that follows `last` once `now` has
    /// come: `last + interval` if that is later than `now`, else the first
    /// `last + k * interval` later than `now`. Saturates at TimePoint::max().
    static TimePoint next_tick(TimePoint last, Duration interval, TimePoint now) noexcept {
        const TimePoint next = deadline_after(last, interval);
        if (next > now) {
            return next;
        }
        const Duration behind = time_until(now, last);
        return deadline_after(deadline_after(last, behind - behind % interval), interval);
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
        const TimePoint deadline = top().deadline;
        remove_top();
        Record& record = records_[slot];
        record.state = State::due;
        if (record.repeating) [[unlikely]] {
            repeats_[slot].last_deadline = deadline;
        }
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
        repeats_.clear();
        free_.clear();
        heap_.resize(heap_offset);
        fresh_ = 0;
        live_ = 0;
        cancelled_in_heap_ = 0;
        running_outside_ = false;
    }

private:
    static constexpr std::size_t arity = 4;
    // The root lives at heap_[heap_offset], so that with 16-byte entries the
    // four children of any node fill exactly one 64-byte cache line.
    static constexpr std::size_t heap_offset = arity - 1;

    // running: a repeating timer's callback is out, running; stopped: it
    // was cancelled meanwhile.
    enum class State : std::uint8_t { free, scheduled, cancelled, due, running, stopped };

    // The callbacks are kept apart from the records' 16 bytes of state,
    // which every heap operation reads: a million records fit in the cache,
    // a million callbacks do not. Aligned so that none straddles two lines.
    struct alignas(16) Record {
        std::uint32_t generation = 0;
        std::uint32_t tag = 0;  // the tag of its live heap entry
        State state = State::free;
        bool repeating = false;
    };
    struct HeapEntry {
        TimePoint deadline;
        std::uint32_t slot;
        std::uint32_t tag;  // see the comment at the top
    };
    static_assert(sizeof(HeapEntry) * arity == 64);
    // Only repeating timers' slots have one.
    struct Repeat {
        Duration interval{};
        TimePoint last_deadline{};  // the deadline it was last due at
    };

    [[nodiscard]] std::size_t heap_size() const noexcept { return heap_.size() - heap_offset; }
    [[nodiscard]] HeapEntry& at(std::size_t index) noexcept { return heap_[heap_offset + index]; }
    [[nodiscard]] const HeapEntry& top() const noexcept { return heap_[heap_offset]; }

    // Equal deadlines in scheduling order: the tags compared modulo 2^32.
    [[nodiscard]] static bool earlier(const HeapEntry& a, const HeapEntry& b) noexcept {
        if (a.deadline != b.deadline) {
            return a.deadline < b.deadline;
        }
        return static_cast<std::int32_t>(a.tag - b.tag) < 0;
    }

    // Whether `entry` is not its timer's live one: cancelled, or replaced by
    // a reschedule (then its record may belong to another timer already).
    [[nodiscard]] bool dead(const HeapEntry& entry) const noexcept {
        const Record& record = records_[entry.slot];
        return record.tag != entry.tag || record.state == State::cancelled;
    }

    // Room for one more entry, and for the repeating timer whose callback
    // runs now to go back without allocating (finish_repeat() is noexcept).
    void make_room() {
        const std::size_t needed = heap_.size() + 1 + (running_outside_ ? 1U : 0U);
        if (needed > heap_.capacity()) {
            heap_.reserve(std::max(needed, 2 * heap_.capacity()));
        }
    }

    // Adds the live entry of `slot`, under a new tag. The room was made.
    void push(std::uint32_t slot, TimePoint deadline) noexcept {
        const auto tag = static_cast<std::uint32_t>(pushes_++);
        records_[slot].tag = tag;
        heap_.push_back({deadline, slot, tag});
        sift_up(heap_size() - 1);
        if (cancelled_in_heap_ != 0 && pushes_ - first_dead_push_ >= (std::uint64_t{1} << 31U)) [[unlikely]] {
            compact();  // no dead entry may live to see its tag again
        }
    }

    void note_dead_entry() noexcept {
        if (cancelled_in_heap_++ == 0) {
            first_dead_push_ = pushes_;
        }
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

    // A dead entry leaves the heap: a cancelled timer's own entry frees its
    // record; a replaced entry's record lives on under its new entry.
    void drop_dead(const HeapEntry& entry) noexcept {
        if (records_[entry.slot].tag == entry.tag) {
            release(entry.slot);
        }
    }

    // Keeps the top a live timer, so next_deadline() is a timer that runs.
    void drop_cancelled_top() noexcept {
        while (heap_size() != 0 && dead(top())) {
            const HeapEntry entry = top();
            remove_top();
            --cancelled_in_heap_;
            drop_dead(entry);
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
            if (dead(entry)) {
                drop_dead(entry);
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
    ChunkedTable<Repeat, 10> repeats_;  // grown only as far as repeating timers' slots
    std::size_t fresh_ = 0;             // slots below this have been handed out at least once
    std::vector<std::uint32_t> free_;
    std::vector<HeapEntry, CacheLineAllocator<HeapEntry>> heap_;
    std::uint64_t pushes_ = 0;           // entries ever pushed: the next tag, in full
    std::uint64_t first_dead_push_ = 0;  // pushes_ when the oldest dead entry died
    std::size_t live_ = 0;               // scheduled, due or running
    std::size_t cancelled_in_heap_ = 0;  // dead entries (cancelled or replaced) still in the heap
    bool running_outside_ = false;       // a repeating timer's callback runs, out of the heap
};

}  // namespace muxio::detail
