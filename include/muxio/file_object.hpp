// FileObject: what a selector registers — a bare descriptor or an object with fileno().
#pragma once

#include <concepts>
#include <cstdint>
#include <memory>

namespace muxio {

/// Any type whose `fileno()` member returns something convertible to `int`.
template <class T>
concept HasFileno = requires(const T& object) {
    { object.fileno() } -> std::convertible_to<int>;
};

/// A non-owning reference to what was registered: an `int` file descriptor,
/// or any object with a `fileno()` member (a socket class, a pipe wrapper).
///
/// Both convert implicitly, so `selector.register_(fd, ...)` and
/// `selector.register_(socket, ...)` read the same. An object is held by
/// address: it must outlive its registration. Two FileObjects are equal when
/// they are the same descriptor number or the same object (identity, as
/// Python's selectors compare file objects), which is how an object whose
/// descriptor is already closed is still found in a selector's map.
class FileObject {
public:
    // Both constructors are implicit on purpose: register_(fd, ...) and
    // register_(socket, ...) should read alike.
    // NOLINTBEGIN(google-explicit-constructor,hicpp-explicit-conversions)

    /// A bare descriptor. Negative values are representable and refused by
    /// selectors with `std::invalid_argument`.
    constexpr FileObject(int fd) noexcept : fd_{fd} {}

    /// An object with `fileno()`; the selector calls it each time it needs the
    /// descriptor of a file object not yet registered.
    template <HasFileno T>
    requires(!std::convertible_to<T, int>) constexpr FileObject(T& object) noexcept
        : object_{std::addressof(object)}, fileno_{&call_fileno<T>}, type_{&type_tag<T>} {}

    // NOLINTEND(google-explicit-constructor,hicpp-explicit-conversions)

    /// True when this refers to a bare descriptor rather than an object.
    [[nodiscard]] constexpr bool is_descriptor() const noexcept { return object_ == nullptr; }

    /// The descriptor now: the stored number, or the object's `fileno()`.
    /// Whatever `fileno()` throws propagates; a closed object may return -1.
    [[nodiscard]] int fileno() const { return object_ == nullptr ? fd_ : fileno_(object_); }

    /// The registered object if it is a `T`, else nullptr (also for a bare descriptor).
    template <class T>
    [[nodiscard]] T* get() const noexcept {
        return type_ == &type_tag<std::remove_const_t<T>> ? static_cast<T*>(const_cast<void*>(object_)) : nullptr;
    }

    /// Same descriptor number, or same object.
    friend constexpr bool operator==(const FileObject& a, const FileObject& b) noexcept {
        return a.object_ == b.object_ && (a.object_ != nullptr || a.fd_ == b.fd_);
    }

private:
    template <class T>
    static int call_fileno(const void* object) {
        return static_cast<int>(static_cast<const T*>(object)->fileno());
    }
    template <class T>
    static constexpr char type_tag = 0;

    const void* object_ = nullptr;
    int (*fileno_)(const void*) = nullptr;
    const char* type_ = nullptr;
    int fd_ = -1;
};

}  // namespace muxio
