// Translation between muxio's Events and poll(2)'s masks, shared by the
// poll and /dev/poll pollers (struct pollfd) and io_uring (POLL_ADD results).
#pragma once

#include <poll.h>

#include "muxio/events.hpp"

namespace muxio::detail {

inline short to_poll_mask(Events events) noexcept {
    short mask = 0;
    if (events.contains(EVENT_READ)) {
        mask |= POLLIN;
    }
    if (events.contains(EVENT_WRITE)) {
        mask |= POLLOUT;
    }
    return mask;
}

// Errors, hang-ups and a descriptor closed while watched (POLLNVAL) are
// ready for both directions, as the backend contract requires.
inline Events from_poll_mask(int revents) noexcept {
    Events events;
    if ((revents & POLLIN) != 0) {
        events |= EVENT_READ;
    }
    if ((revents & POLLOUT) != 0) {
        events |= EVENT_WRITE;
    }
    if ((revents & (POLLERR | POLLHUP | POLLNVAL)) != 0) {
        events |= EVENT_READ_WRITE;
    }
    return events;
}

}  // namespace muxio::detail
