// Which path a transport test runs on; needs lib/ on the include path.
#pragma once

#include "muxio/reactor.hpp"
#include "reactor/completions.hpp"

namespace muxio::test {

/// Whether the transports of `reactor` run on the io_uring completion path
/// (MUXIO_SELECTOR=io_uring on a kernel with multishot receive): their
/// writes are queued until the loop's next wait carries the send.
inline bool on_completion_path(Reactor& reactor) {
    detail::CompletionRing* ring = detail::ReactorCompletions::ring(reactor);
    return ring != nullptr && ring->features().receive;
}

}  // namespace muxio::test
