// How the socket layer reaches a reactor's completion ring. Private to lib/.
#pragma once

#include <cstddef>

#include "muxio/reactor.hpp"
#include "selector/completion_ring.hpp"

namespace muxio::detail {

struct ReactorCompletions {
    /// The ring the reactor's sockets run their operations on, or nullptr
    /// when they use readiness: a selector other than io_uring, a kernel
    /// without the operations (CompletionRing::features()), MUXIO_COMPLETIONS=off,
    /// or a reactor closed or in a forked child. Call it where the reactor
    /// is usable (its thread); the pointer is valid until the reactor closes,
    /// which a socket learns through its CloseHook.
    static CompletionRing* ring(Reactor& reactor) noexcept;
    /// Runs the completions the last wait reaped (CompletionRing::dispatch),
    /// reporting what a target throws as its reader's exception.
    static std::size_t dispatch(Reactor& reactor, CompletionRing& ring);
};

}  // namespace muxio::detail
