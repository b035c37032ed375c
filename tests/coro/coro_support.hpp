// Helpers for the coroutine suites: a count of live objects, to prove that
// coroutine frames (which hold them) are freed, and the stack position of a
// call, to prove that a chain of awaits does not grow the stack.
#pragma once

#include <cstdint>

#include <doctest/doctest.h>

namespace muxio::coro_test {

/// The address of this call's frame on the thread's stack (the real one,
/// not AddressSanitizer's fake stack of locals): two calls at the same
/// depth return the same value.
[[gnu::noinline]] inline std::uintptr_t stack_position() noexcept {
    return reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
}

/// Counts its live instances. Held by a coroutine (a parameter or a local),
/// it tells whether the coroutine's frame was destroyed.
class Live {
public:
    Live() noexcept { ++count_; }
    Live(const Live& /*other*/) noexcept { ++count_; }
    Live(Live&& /*other*/) noexcept { ++count_; }
    Live& operator=(const Live&) = default;
    Live& operator=(Live&&) = default;
    ~Live() { --count_; }

    [[nodiscard]] static int count() noexcept { return count_; }

private:
    static inline int count_ = 0;
};

/// Checks, when it goes out of scope, that no Live instance made since it
/// was made is still alive: every frame holding one was freed.
class FrameLeakCheck {
public:
    FrameLeakCheck() noexcept : before_{Live::count()} {}
    ~FrameLeakCheck() { CHECK_MESSAGE(Live::count() == before_, "a coroutine frame was leaked"); }
    FrameLeakCheck(const FrameLeakCheck&) = delete;
    FrameLeakCheck& operator=(const FrameLeakCheck&) = delete;

private:
    int before_;
};

}  // namespace muxio::coro_test
