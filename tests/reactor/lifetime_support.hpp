// Helpers for the tests of objects that outlive their reactor: a reactor
// whose memory is made unusable once it is destroyed, and an eagerly started
// coroutine that holds a suspended task for as long as the test wants.
#pragma once

#include <coroutine>
#include <cstddef>
#include <cstring>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include <valgrind/memcheck.h>

#include "muxio/reactor.hpp"
#include "muxio/task.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define MUXIO_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MUXIO_TEST_ASAN 1
#endif
#endif
#ifndef MUXIO_TEST_ASAN
#define MUXIO_TEST_ASAN 0
#endif

#if MUXIO_TEST_ASAN
extern "C" void __asan_poison_memory_region(void const volatile* address, std::size_t size);
extern "C" void __asan_unpoison_memory_region(void const volatile* address, std::size_t size);
#endif

namespace muxio::lifetime_test {

/// A Reactor that can be destroyed before the objects bound to it. Its
/// memory is then zero-filled (a plain build crashes on the null pointer to
/// its state when something uses it) and marked inaccessible to
/// AddressSanitizer and valgrind, which report the use. So a use after
/// destruction fails in every build, not only in the sanitizer ones.
class DoomedReactor {
public:
    explicit DoomedReactor(ReactorOptions options = {}) : reactor_{new (storage_) Reactor{std::move(options)}} {}
    ~DoomedReactor() {
        if (reactor_ != nullptr) {
            reactor_->~Reactor();
        }
        accessible(true);
    }
    DoomedReactor(const DoomedReactor&) = delete;
    DoomedReactor& operator=(const DoomedReactor&) = delete;

    Reactor& operator*() const noexcept { return *reactor_; }
    Reactor* operator->() const noexcept { return reactor_; }

    /// Runs the destructor and spoils the memory.
    void destroy() noexcept {
        std::exchange(reactor_, nullptr)->~Reactor();
        std::memset(storage_, 0, sizeof storage_);
        accessible(false);
    }

private:
    void accessible(bool yes) noexcept {
#if MUXIO_TEST_ASAN
        if (yes) {
            __asan_unpoison_memory_region(storage_, sizeof storage_);
        } else {
            __asan_poison_memory_region(storage_, sizeof storage_);
        }
#endif
        if (yes) {
            (void)VALGRIND_MAKE_MEM_DEFINED(storage_, sizeof storage_);
        } else {
            (void)VALGRIND_MAKE_MEM_NOACCESS(storage_, sizeof storage_);
        }
    }

    alignas(Reactor) std::byte storage_[sizeof(Reactor)];
    Reactor* reactor_;
};

/// A coroutine that starts at once and awaits one task; destroying it
/// destroys its frame and the task's, suspended or not. What the task threw
/// is kept.
class Held {
public:
    struct promise_type {
        std::exception_ptr error;
        bool done = false;

        Held get_return_object() noexcept { return Held{std::coroutine_handle<promise_type>::from_promise(*this)}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_always final_suspend() noexcept { return {}; }
        void return_void() noexcept { done = true; }
        void unhandled_exception() noexcept {
            error = std::current_exception();
            done = true;
        }
    };

    Held(Held&& other) noexcept : handle_{std::exchange(other.handle_, {})} {}
    Held& operator=(Held&&) = delete;
    Held(const Held&) = delete;
    Held& operator=(const Held&) = delete;
    ~Held() { reset(); }

    /// Destroys the frame now.
    void reset() noexcept {
        if (handle_) {
            std::exchange(handle_, {}).destroy();
        }
    }
    /// True once the task ended, by returning or throwing.
    [[nodiscard]] bool done() const noexcept { return handle_ && handle_.promise().done; }
    /// The message of what the task threw, empty if it threw nothing (or
    /// something that is not a std::exception).
    [[nodiscard]] std::string error_message() const {
        if (!handle_ || !handle_.promise().error) {
            return {};
        }
        try {
            std::rethrow_exception(handle_.promise().error);
        } catch (const std::exception& error) {
            return error.what();
        } catch (...) {
            return {};
        }
    }
    /// True if the task threw a std::logic_error whose message contains `text`.
    [[nodiscard]] bool threw_logic_error(std::string_view text) const {
        if (!handle_ || !handle_.promise().error) {
            return false;
        }
        try {
            std::rethrow_exception(handle_.promise().error);
        } catch (const std::logic_error& error) {
            return std::string_view{error.what()}.find(text) != std::string_view::npos;
        } catch (...) {
            return false;
        }
    }

private:
    explicit Held(std::coroutine_handle<promise_type> handle) noexcept : handle_{handle} {}
    std::coroutine_handle<promise_type> handle_;
};

/// Starts `task` now, on the caller's stack, and holds it.
template <class T>
Held hold(Task<T> task) {
    co_await std::move(task);
}

}  // namespace muxio::lifetime_test
