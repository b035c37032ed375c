// Storage for one object whose owner starts and ends its lifetime and keeps
// the "is it alive" flag itself. std::optional keeps that flag after the
// object, which for a large object is another cache line to read on every
// check; the hot paths of the awaits keep their flags together instead.
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <utility>

namespace muxio::detail {

template <class T>
class ManualLifetime {
public:
    // User-provided, so owners count the member as initialised: the storage
    // stays raw until construct().
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-member-init,modernize-use-equals-default)
    ManualLifetime() noexcept {}
    ManualLifetime(const ManualLifetime&) = delete;
    ManualLifetime& operator=(const ManualLifetime&) = delete;
    // Destroys nothing: the owner calls destroy() while the object is alive.
    ~ManualLifetime() = default;

    /// Precondition: not alive.
    template <class... Args>
    T& construct(Args&&... args) {
        return *std::construct_at(get(), std::forward<Args>(args)...);
    }
    /// Precondition: alive.
    void destroy() noexcept { std::destroy_at(get()); }

    [[nodiscard]] T* get() noexcept { return std::launder(reinterpret_cast<T*>(storage_)); }
    [[nodiscard]] const T* get() const noexcept { return std::launder(reinterpret_cast<const T*>(storage_)); }
    T* operator->() noexcept { return get(); }
    const T* operator->() const noexcept { return get(); }

private:
    alignas(T) std::byte storage_[sizeof(T)];
};

}  // namespace muxio::detail
