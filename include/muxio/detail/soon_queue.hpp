// The reactor's queue of call_soon() callbacks.
#pragma once

#include <cstddef>

#include "muxio/detail/ring_queue.hpp"
#include "muxio/detail/unique_function.hpp"

namespace muxio::detail {

/// call_soon() callbacks waiting for the next iteration. A callback lives in
/// the queue itself, named by its position, and is cancelled by emptying it
/// in place (asyncio's handle with a cancelled flag): no record to allocate
/// and free. The Reactor holds it directly, not behind its implementation
/// pointer, because call_soon() is a template and builds the callback in
/// place from the header.
struct SoonQueue {
    RingQueue<UniqueFunction<void()>> queue;
    std::size_t live = 0;  // queued callbacks not yet run or cancelled
};

}  // namespace muxio::detail
