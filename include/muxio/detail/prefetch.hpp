// prefetch(): a cache hint that the optimizer cannot drop.
#pragma once

namespace muxio::detail {

/// Starts loading the cache line at `address` for a read soon after. A hint:
/// any address is safe, nothing is dereferenced.
///
/// Not __builtin_prefetch: g++ 12 at -O2 deletes it when it sits in a small
/// function it analyses as having no side effects (modref), which is every
/// helper that only prefetches: the timer heap's and the selector's hints
/// were all compiled away. An asm volatile statement is kept where written.
inline void prefetch(const void* address) noexcept {
#if defined(__x86_64__) || defined(__i386__)
    asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(address)));
#elif defined(__aarch64__)
    asm volatile("prfm pldl1keep, %0" : : "Q"(*static_cast<const char*>(address)));
#else
    __builtin_prefetch(address);
#endif
}

}  // namespace muxio::detail
