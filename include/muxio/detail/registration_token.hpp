// How a selector names a registration to the kernel.
#pragma once

#include <cstddef>
#include <cstdint>

namespace muxio::detail {

/// A registration's token, the 64 bits the kernel hands back with each
/// event: the descriptor in the low half, the generation of its slot in the
/// high half. The generation changes when a registration begins and when it
/// ends, so an event queued for an earlier registration of the same number
/// is told apart from the current one without a lookup.
struct RegistrationToken {
    [[nodiscard]] static constexpr std::uint64_t make(int fd, std::uint32_t generation) noexcept {
        return (std::uint64_t{generation} << 32U) | static_cast<std::uint32_t>(fd);
    }
    /// The descriptor number, as the reactor compares it with its own.
    [[nodiscard]] static constexpr int fd(std::uint64_t token) noexcept {
        return static_cast<int>(token & 0xffff'ffffU);
    }
    /// The descriptor as an index into the selector's table: never
    /// negative, so one bounds check covers every token.
    [[nodiscard]] static constexpr std::size_t slot(std::uint64_t token) noexcept {
        return static_cast<std::size_t>(token & 0xffff'ffffU);
    }
    [[nodiscard]] static constexpr std::uint32_t generation(std::uint64_t token) noexcept {
        return static_cast<std::uint32_t>(token >> 32U);
    }
};

}  // namespace muxio::detail
