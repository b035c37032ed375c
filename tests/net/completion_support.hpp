// What the socket suites need to know about the io_uring completion path,
// which they run on too (muxio_add_completion_variant): whether a reactor's
// streams use it, and a reactor that does not, for the cases about a detail
// of the readiness path.
#pragma once

#include "muxio/reactor.hpp"
#include "reactor/completions.hpp"
#include "selector/completion_ring.hpp"

namespace muxio::net_test {

/// Whether the streams of `reactor` read through the completion ring.
inline bool reads_on_completions(Reactor& reactor) noexcept {
    const detail::CompletionRing* ring = detail::ReactorCompletions::ring(reactor);
    return ring != nullptr && ring->features().receive;
}

/// Whether the streams of `reactor` write through the completion ring.
inline bool writes_on_completions(Reactor& reactor) noexcept {
    return detail::ReactorCompletions::ring(reactor) != nullptr;
}

/// Whether a write of the socket `fd` waits for room: on readiness the
/// socket's writer is registered, on the completion path its send is in
/// flight (the reactor registers no writer).
inline bool write_waits(Reactor& reactor, int fd) {
    if (writes_on_completions(reactor)) {
        return !reactor.has_writer(fd) && detail::ReactorCompletions::ring(reactor)->operations_in_flight() > 0;
    }
    return reactor.has_writer(fd);
}

/// While alive, reactors made have no completion ring: their sockets use
/// readiness whatever the selector. For the cases about readiness's own
/// details (a lasting reader, a wakeup whose data is gone).
class ReadinessOnly {
public:
    ReadinessOnly() noexcept {
        static const detail::CompletionFeatures none{};
        detail::set_completion_features_for_testing(&none);
    }
    ~ReadinessOnly() { detail::set_completion_features_for_testing(nullptr); }
    ReadinessOnly(const ReadinessOnly&) = delete;
    ReadinessOnly& operator=(const ReadinessOnly&) = delete;
};

}  // namespace muxio::net_test
