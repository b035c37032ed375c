// Helpers for the coroutine suites: a count of live objects, to prove that
// coroutine frames (which hold them) are freed.
#pragma once

#include <doctest/doctest.h>

// 1 when symmetric transfer is a real tail call in this build, so chains of
// a million awaits run in constant stack: always with clang; with g++ only
// with -foptimize-sibling-calls (tests/CMakeLists.txt adds it) and never
// under its AddressSanitizer or ThreadSanitizer.
#if defined(__clang__)
#define MUXIO_TEST_TAIL_CALLS 1
#elif defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MUXIO_TEST_TAIL_CALLS 0
#else
#define MUXIO_TEST_TAIL_CALLS 1
#endif

namespace muxio::coro_test {

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
