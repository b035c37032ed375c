// UniqueFunction: a move-only callable wrapper that stores small callables
// inline, so scheduling a callback with a few captured words never allocates.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

namespace muxio::detail {

template <class Signature>
class UniqueFunction;

/// Like C++23's std::move_only_function<R(Args...)>, which g++ 12 lacks in
/// C++20 mode. Callables up to `inline_size` bytes whose move cannot throw
/// live inside the object; larger ones go to the heap. Calling an empty
/// UniqueFunction throws std::bad_function_call.
template <class R, class... Args>
class UniqueFunction<R(Args...)> {
public:
    static constexpr std::size_t inline_size = 6 * sizeof(void*);

    UniqueFunction() noexcept = default;
    UniqueFunction(std::nullptr_t) noexcept {}  // NOLINT(google-explicit-constructor)

    template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, UniqueFunction> &&
             std::is_invocable_r_v<R, std::decay_t<F>&, Args...>)
        UniqueFunction(F&& callable) {  // NOLINT(google-explicit-constructor)
        emplace(std::forward<F>(callable));
    }

    /// Replaces the held callable with one built from `callable` in place,
    /// without a move. If building it throws, *this is left empty.
    template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, UniqueFunction> &&
             std::is_invocable_r_v<R, std::decay_t<F>&, Args...>) void emplace(F&& callable) {
        reset();
        using Stored = std::decay_t<F>;
        if constexpr (std::is_pointer_v<Stored> || std::is_member_pointer_v<Stored>) {
            if (callable == nullptr) {
                return;
            }
        }
        if constexpr (fits_inline<Stored>()) {
            ::new (static_cast<void*>(storage_)) Stored(std::forward<F>(callable));
            ops_ = &inline_ops<Stored>;
        } else {
            *reinterpret_cast<Stored**>(storage_) = new Stored(std::forward<F>(callable));
            ops_ = &heap_ops<Stored>;
        }
    }

    UniqueFunction(UniqueFunction&& other) noexcept : ops_{other.ops_} {
        if (ops_ != nullptr) {
            relocate(other.storage_, storage_, *ops_);
            other.ops_ = nullptr;
        }
    }

    UniqueFunction& operator=(UniqueFunction&& other) noexcept {
        if (this != &other) {
            reset();
            if (other.ops_ != nullptr) {
                relocate(other.storage_, storage_, *other.ops_);
                ops_ = std::exchange(other.ops_, nullptr);
            }
        }
        return *this;
    }

    /// Moves `other`'s callable into *this, which must be empty: operator=
    /// without the self-move check and the reset, for the reactor's
    /// per-event path, where the compiler keeps operator= out of line.
    void assign_to_empty(UniqueFunction&& other) noexcept {
        assert(ops_ == nullptr);
        if (other.ops_ != nullptr) {
            relocate(other.storage_, storage_, *other.ops_);
            ops_ = std::exchange(other.ops_, nullptr);
        }
    }

    UniqueFunction& operator=(std::nullptr_t) noexcept {
        reset();
        return *this;
    }

    UniqueFunction(const UniqueFunction&) = delete;
    UniqueFunction& operator=(const UniqueFunction&) = delete;
    ~UniqueFunction() { reset(); }

    R operator()(Args... args) {
        if (ops_ == nullptr) {
            throw std::bad_function_call();
        }
        return ops_->invoke(storage_, std::forward<Args>(args)...);
    }

    explicit operator bool() const noexcept { return ops_ != nullptr; }

    /// Destroys the held callable (and what it captured) now.
    void reset() noexcept {
        if (ops_ != nullptr) {
            const Ops* ops = std::exchange(ops_, nullptr);
            if (!ops->trivial) {
                ops->destroy(storage_);
            }
        }
    }

    /// True when a callable of type F would be stored without allocating.
    template <class F>
    static constexpr bool fits_inline() noexcept {
        return sizeof(F) <= inline_size && alignof(F) <= alignof(std::max_align_t) &&
               std::is_nothrow_move_constructible_v<F>;
    }

private:
    struct Ops {
        R (*invoke)(void* storage, Args&&... args);
        void (*relocate)(void* from, void* to) noexcept;
        void (*destroy)(void* storage) noexcept;
        // Stored inline, trivially copyable and destructible (a lambda that
        // captures pointers and numbers): moved by copying the storage,
        // destroyed by forgetting it, with no call through the table. The
        // reactor moves each callback into its queue, so this is per call.
        bool trivial;
    };

    static void relocate(void* from, void* to, const Ops& ops) noexcept {
        if (ops.trivial) {
            // The whole buffer, whatever the callable's size: one fixed-size
            // copy. Bytes past the callable are indeterminate, which copying
            // as bytes allows; g++ at -O3 warns about them all the same.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
            std::memcpy(to, from, inline_size);
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
        } else {
            ops.relocate(from, to);
        }
    }

    template <class F>
    static constexpr Ops inline_ops{
        [](void* storage, Args&&... args) -> R {
            return std::invoke(*std::launder(static_cast<F*>(storage)), std::forward<Args>(args)...);
        },
        [](void* from, void* to) noexcept {
            F* source = std::launder(static_cast<F*>(from));
            ::new (to) F(std::move(*source));
            source->~F();
        },
        [](void* storage) noexcept { std::launder(static_cast<F*>(storage))->~F(); },
        std::is_trivially_copyable_v<F>&& std::is_trivially_destructible_v<F>,
    };

    template <class F>
    static constexpr Ops heap_ops{
        [](void* storage, Args&&... args) -> R {
            return std::invoke(**static_cast<F**>(storage), std::forward<Args>(args)...);
        },
        [](void* from, void* to) noexcept { *static_cast<F**>(to) = *static_cast<F**>(from); },
        [](void* storage) noexcept { delete *static_cast<F**>(storage); },
        false,
    };

    alignas(std::max_align_t) std::byte storage_[inline_size];
    const Ops* ops_ = nullptr;
};

}  // namespace muxio::detail
