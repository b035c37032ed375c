// Resuming coroutines without recursion, so that a chain of awaits that end
// at once runs in constant stack whatever the optimisation level.
//
// Symmetric transfer (an await_suspend returning the next handle) is a tail
// call only where the compiler makes it one: always with clang, with g++
// only under sibling-call optimisation (off at -O0) and never under its
// AddressSanitizer. Elsewhere each transfer nests one resume() inside the
// last, and a long loop of awaits of tasks that end at once overflows the
// stack.
//
// muxio's awaiters hand the next coroutine to a loop instead: every
// resumption muxio makes from outside a coroutine (a reactor callback, a
// driver starting, a child started by a combinator) runs in a ResumeLoop,
// which resumes one coroutine, and when that one suspends after handing
// control on (starting a child, or ending and passing control back to its
// awaiter), resumes the next, at the same depth. A coroutine resumed by
// anything else (another library's awaitable) gets a loop of its own at the
// first handover, with the same effect.
#pragma once

#include <coroutine>
#include <utility>

namespace muxio::detail {

class ResumeLoop {
public:
    ResumeLoop(const ResumeLoop&) = delete;
    ResumeLoop& operator=(const ResumeLoop&) = delete;
    ResumeLoop(ResumeLoop&&) = delete;
    ResumeLoop& operator=(ResumeLoop&&) = delete;
    ~ResumeLoop() { current_ = outer_; }

    /// Resumes `first`, then every coroutine handed on to this loop, until
    /// one suspends without handing on. Returns then.
    static void run(std::coroutine_handle<> first) {
        ResumeLoop loop{{}};
        loop.drain(first);
    }

    /// For the await_suspend of `self`, which gives control to `next` (a
    /// child it starts, or its awaiter when it ends): true if the loop that
    /// resumed `self` takes `next`, to resume it once `self` has suspended;
    /// false if `self` was not resumed by a loop.
    static bool hand_on(std::coroutine_handle<> self, std::coroutine_handle<> next) noexcept {
        ResumeLoop* loop = current_;
        if (loop == nullptr || loop->running_ != self) [[unlikely]] {
            return false;
        }
        if (next == loop->owner_) [[unlikely]] {
            loop->owner_resumes_ = true;  // see start(): `next` continues from its await_suspend
        } else {
            loop->next_ = next;
        }
        return true;
    }

    /// The await_suspend of `self` starting `child`, which ends by handing
    /// control back to `self`. Returns what await_suspend returns: true
    /// (suspend) once `child` is handed on or has suspended, false when it
    /// ended already and `self` goes on at once, without a resumption.
    static bool start(std::coroutine_handle<> self, std::coroutine_handle<> child) {
        if (hand_on(self, child)) [[likely]] {
            return true;
        }
        // Nobody's loop runs `self`: run `child` here, and learn from its
        // handover whether it ended before suspending.
        ResumeLoop loop{self};
        loop.drain(child);
        return !loop.owner_resumes_;
    }

    /// At the end of `self`, gives control to `next`: hands it on, or
    /// resumes it in a loop here. `self` may be destroyed already (only its
    /// address is compared).
    static void transfer(std::coroutine_handle<> self, std::coroutine_handle<> next) {
        if (!hand_on(self, next)) [[unlikely]] {
            run(next);
        }
    }

private:
    explicit ResumeLoop(std::coroutine_handle<> owner) noexcept
        : owner_{owner}, outer_{std::exchange(current_, this)} {}

    void drain(std::coroutine_handle<> next) {
        do {
            running_ = next;
            next.resume();
            next = std::exchange(next_, {});
        } while (next);
    }

    // The innermost loop running on this thread.
    static inline thread_local ResumeLoop* current_ = nullptr;

    std::coroutine_handle<> running_;  // what this loop resumed and runs now
    std::coroutine_handle<> next_;     // handed on, to resume once running_ has suspended
    // The coroutine in whose await_suspend this loop runs (start()): handing
    // control to it means it continues when that await_suspend returns.
    std::coroutine_handle<> owner_;
    bool owner_resumes_ = false;
    ResumeLoop* outer_;
};

}  // namespace muxio::detail
