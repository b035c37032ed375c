// Events: the readiness mask a selector watches for and reports.
#pragma once

#include <cstdint>

#include <fmt/format.h>

namespace muxio {

/// A set of readiness conditions: EVENT_READ, EVENT_WRITE or both.
///
/// A plain value type. It can hold any bits so that a bad mask coming from
/// outside can be represented and refused: `register_` and `modify` throw
/// `std::invalid_argument` for an empty mask or one with bits other than
/// EVENT_READ | EVENT_WRITE (see `is_valid()`).
///
/// fmt formats it as `READ`, `WRITE`, `READ|WRITE`, or `0` for none, with
/// any other bits in hex (`READ|0x4`).
class Events {
public:
    /// The empty mask.
    constexpr Events() noexcept = default;
    /// Wraps raw bits; nothing is checked here, only where the mask is used.
    static constexpr Events from_bits(std::uint32_t bits) noexcept { return Events{bits}; }

    /// The raw bits, unchecked (EVENT_READ is 1, EVENT_WRITE 2).
    [[nodiscard]] constexpr std::uint32_t bits() const noexcept { return bits_; }
    /// True when no bit is set.
    [[nodiscard]] constexpr bool empty() const noexcept { return bits_ == 0; }
    /// True when every bit of `other` is set here.
    [[nodiscard]] constexpr bool contains(Events other) const noexcept { return (bits_ & other.bits_) == other.bits_; }
    /// True when the mask is non-empty and holds only EVENT_READ / EVENT_WRITE.
    [[nodiscard]] constexpr bool is_valid() const noexcept;

    /// True when any bit is set: `if (events & EVENT_READ)`.
    constexpr explicit operator bool() const noexcept { return bits_ != 0; }

    /// The union of two masks.
    friend constexpr Events operator|(Events a, Events b) noexcept { return Events{a.bits_ | b.bits_}; }
    /// The intersection of two masks.
    friend constexpr Events operator&(Events a, Events b) noexcept { return Events{a.bits_ & b.bits_}; }
    /// Every bit not set in `a`, unknown ones included, so the result is not
    /// a valid mask; meant for masking: `events & ~EVENT_WRITE`.
    friend constexpr Events operator~(Events a) noexcept { return Events{~a.bits_}; }
    /// Adds the bits of `o`.
    constexpr Events& operator|=(Events o) noexcept {
        bits_ |= o.bits_;
        return *this;
    }
    /// Keeps only the bits also in `o`.
    constexpr Events& operator&=(Events o) noexcept {
        bits_ &= o.bits_;
        return *this;
    }
    /// Same bits.
    friend constexpr bool operator==(Events, Events) noexcept = default;

private:
    constexpr explicit Events(std::uint32_t bits) noexcept : bits_{bits} {}
    std::uint32_t bits_ = 0;
};

/// The file descriptor is readable (or at end of file, or in error).
inline constexpr Events EVENT_READ = Events::from_bits(1);
/// The file descriptor is writable (or hung up, or in error).
inline constexpr Events EVENT_WRITE = Events::from_bits(2);
/// Both conditions.
inline constexpr Events EVENT_READ_WRITE = EVENT_READ | EVENT_WRITE;

constexpr bool Events::is_valid() const noexcept {
    return bits_ != 0 && (bits_ & ~EVENT_READ_WRITE.bits_) == 0;
}

}  // namespace muxio

// Formats as `READ`, `WRITE`, `READ|WRITE`, `0` for none; unknown bits as hex.
// Out of the API reference: Doxygen cannot place a specialization of
// fmt's template, and the format is documented on Events.
/// \cond
template <>
struct fmt::formatter<muxio::Events> : fmt::formatter<fmt::string_view> {
    template <class FormatContext>
    auto format(muxio::Events events, FormatContext& ctx) const -> decltype(ctx.out()) {
        auto out = ctx.out();
        if (events.empty()) {
            return fmt::format_to(out, "0");
        }
        const char* sep = "";
        if (events.contains(muxio::EVENT_READ)) {
            out = fmt::format_to(out, "READ");
            sep = "|";
        }
        if (events.contains(muxio::EVENT_WRITE)) {
            out = fmt::format_to(out, "{}WRITE", sep);
            sep = "|";
        }
        if (const auto rest = (events & ~muxio::EVENT_READ_WRITE).bits(); rest != 0) {
            out = fmt::format_to(out, "{}{:#x}", sep, rest);
        }
        return out;
    }
};
/// \endcond
