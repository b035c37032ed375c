// A test seam for the reactor's wakeup eventfd (lib/reactor/): a hook
// that makes its write(2) or read(2) fail as the kernel might, so tests can
// show that no failure loses a wakeup. Unset in production, where it costs
// one relaxed load and a predictable branch next to each of those system
// calls.
#pragma once

#include <atomic>
#include <cstdint>

namespace muxio::detail {

enum class WakeupCall : std::uint8_t {
    threadsafe_write,  ///< call_soon_threadsafe() waking the loop
    signal_write,      ///< the signal handler waking the loop
    drain_read,        ///< the loop emptying the eventfd
};

/// Called before the system call: returns 0 to let it go through, or the
/// errno value it fails with instead (the call is then not made). Runs on
/// the calling thread; for signal_write in signal context, so it must be
/// async-signal-safe.
using WakeupFault = int (*)(WakeupCall call, int fd) noexcept;

extern std::atomic<WakeupFault> wakeup_fault;

}  // namespace muxio::detail
