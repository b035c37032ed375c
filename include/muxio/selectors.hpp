// The named selectors, DefaultSelector and the selector factory.
#pragma once

#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "muxio/config.hpp"
#include "muxio/detail/poller.hpp"
#include "muxio/selector.hpp"

namespace muxio {

/// select(2). Portable; descriptors must be below FD_SETSIZE (register_
/// refuses others with std::invalid_argument); cost grows with the highest fd.
/// A hang-up without an error (a pipe's writer gone, a peer's shutdown of
/// both directions) is reported as ready for reading only, as select(2) has
/// it: a key registered for writing alone is not told of it, so watch for
/// reading too where a peer's hang-up matters.
template <class Data>
class SelectSelector final : public BaseSelector<Data> {
public:
    SelectSelector() : BaseSelector<Data>{detail::make_select_poller()} {}
};

/// poll(2). Portable, any descriptor number; cost grows with the number registered.
template <class Data>
class PollSelector final : public BaseSelector<Data> {
public:
    PollSelector() : BaseSelector<Data>{detail::make_poll_poller()} {}
};

#if MUXIO_HAS_EPOLL
/// epoll(7), Linux. Cost grows with the ready descriptors only; waits with
/// nanosecond resolution where the kernel has epoll_pwait2. Refuses
/// descriptors epoll cannot watch (regular files: EPERM) at register_.
template <class Data>
class EpollSelector final : public BaseSelector<Data> {
public:
    EpollSelector() : BaseSelector<Data>{detail::make_epoll_poller()} {}
};
#endif

#if MUXIO_HAS_IO_URING
/// io_uring(7) poll requests, Linux, with level-triggered meaning: one-shot
/// polls are re-armed for the descriptors that fired, batched with the wait
/// into one io_uring_enter per select() in steady state. Throws
/// std::system_error at construction when the kernel refuses io_uring.
template <class Data>
class IoUringSelector final : public BaseSelector<Data> {
public:
    IoUringSelector() : BaseSelector<Data>{detail::make_io_uring_poller()} {}
};
#endif

#if MUXIO_HAS_KQUEUE
/// kqueue(2), BSD and macOS.
template <class Data>
class KqueueSelector final : public BaseSelector<Data> {
public:
    KqueueSelector() : BaseSelector<Data>{detail::make_kqueue_poller()} {}
};
#endif

#if MUXIO_HAS_DEVPOLL
/// /dev/poll, Solaris and illumos.
template <class Data>
class DevpollSelector final : public BaseSelector<Data> {
public:
    DevpollSelector() : BaseSelector<Data>{detail::make_devpoll_poller()} {}
};
#endif

/// The best mechanism the running kernel accepts, chosen at construction:
/// the first of available_selectors() that does not refuse (io_uring or
/// epoll can be refused by seccomp or sysctl), logging each refusal on the
/// `muxio` logger. The environment variable `MUXIO_SELECTOR` (a name from
/// available_selectors()) forces one mechanism, without fallback; an unknown
/// name is std::invalid_argument.
template <class Data>
class DefaultSelector final : public BaseSelector<Data> {
public:
    DefaultSelector() : BaseSelector<Data>{detail::make_default_poller()} {}
};

/// The names of the mechanisms compiled into this build, best first.
[[nodiscard]] std::vector<std::string_view> available_selectors();

namespace detail {
template <class Data>
class NamedSelector final : public BaseSelector<Data> {
public:
    explicit NamedSelector(std::unique_ptr<Poller> poller) : BaseSelector<Data>{std::move(poller)} {}
};
}  // namespace detail

/// A selector by mechanism name ("select", "poll", "epoll", "io_uring",
/// "kqueue", "devpoll"). std::invalid_argument for a name not compiled in;
/// std::system_error when the kernel refuses the mechanism.
template <class Data>
[[nodiscard]] std::unique_ptr<BaseSelector<Data>> make_selector(std::string_view name) {
    return std::make_unique<detail::NamedSelector<Data>>(detail::make_poller(name));
}

}  // namespace muxio
