// The selector as an event loop drives it: the fast paths the reactor takes
// around select(), kept out of BaseSelector's public interface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include <fmt/format.h>

#include "muxio/detail/poller.hpp"
#include "muxio/detail/prefetch.hpp"
#include "muxio/detail/registration_token.hpp"
#include "muxio/error.hpp"
#include "muxio/events.hpp"
#include "muxio/selector.hpp"

namespace muxio::detail {

/// The one friend of BaseSelector that the fast paths below go through.
template <class Data>
class SelectorLoopAccess {
public:
    using Selector = BaseSelector<Data>;
    using Key = SelectorKey<Data>;

    static std::span<const PollEvent> select_tokens(Selector& selector, Timeout timeout) {
        return selector.select_tokens(timeout);
    }
    static const Key* find_current(const Selector& selector, std::uint64_t token) noexcept {
        return selector.find_current(token);
    }
    static std::uint64_t token_of(const Selector& selector, const Key& key) noexcept { return selector.token_of(key); }
    static Events watched(const Key* key, Events events) noexcept { return Selector::watched(key, events); }
    static void modify_or_keep(Selector& selector, int fd, Events events) {
        selector.ensure_open("modify");
        Selector::check_events(events);
        auto* slot = selector.slot_of(fd);
        if (slot == nullptr) {
            throw KeyError(fmt::format("fd {} is not registered", fd));
        }
        Key& key = *slot->key;
        if (events != key.events) {
            selector.poller_->modify(fd, key.events, events, Selector::make_token(fd, slot->generation));
            key.events = events;
        }
    }
    static void prefetch(const Selector& selector, std::uint64_t token) noexcept {
        const std::size_t slot = RegistrationToken::slot(token);
        if (slot < selector.slots_.size()) {
            const auto* first = reinterpret_cast<const char*>(&selector.slots_[slot]);
            for (std::size_t offset = 0; offset < sizeof(typename Selector::Slot); offset += 64) {
                detail::prefetch(first + offset);
            }
        }
    }
};

/// select() for an event loop that looks each entry up itself anyway (the
/// reactor does, before every callback): the kernel's readiness as (token,
/// events) pairs, neither filtered nor masked. An entry may name a
/// registration that is gone (find_current() returns nullptr) and carry
/// events its key does not watch (watched() masks them); errors and
/// hang-ups set both events (select(2)'s hang-up without an error: READ
/// only). Waits as select() does: an answer of stale entries only does not
/// end it. Saves select()'s per-entry lookup and copy. The span is valid
/// until the next select() or select_tokens().
template <class Data>
std::span<const PollEvent> select_tokens(BaseSelector<Data>& selector, Timeout timeout) {
    return SelectorLoopAccess<Data>::select_tokens(selector, timeout);
}

/// The key of the registration `token` names, or nullptr once that
/// registration is gone: how an event loop re-checks an entry before each
/// callback without a lookup by file object.
template <class Data>
const SelectorKey<Data>* find_current(const BaseSelector<Data>& selector, std::uint64_t token) noexcept {
    return SelectorLoopAccess<Data>::find_current(selector, token);
}

/// The token of `key`'s registration now, as select_tokens() reports it and
/// find_current() resolves it; it changes with reregister().
template <class Data>
std::uint64_t token_of(const BaseSelector<Data>& selector, const SelectorKey<Data>& key) noexcept {
    return SelectorLoopAccess<Data>::token_of(selector, key);
}

/// The events of a select_tokens() entry that its registration watches:
/// none once the registration is gone (`key` null). select() masks with it
/// too, so both paths drop the same stale events.
template <class Data>
Events watched(const SelectorKey<Data>* key, Events events) noexcept {
    return SelectorLoopAccess<Data>::watched(key, events);
}

/// BaseSelector::modify() of the events only, without Python's rule: when
/// the kernel refuses, `fd` stays registered as it was (its key, events and
/// token; what the kernel watches for it, Poller::modify()) and the error is
/// rethrown. For an event loop whose key holds more than the refused change
/// (the reactor: a reader and a writer), which must not lose the rest. Only
/// for epoll, io_uring, poll and select, whose modify() promises that.
template <class Data>
void modify_or_keep(BaseSelector<Data>& selector, int fd, Events events) {
    SelectorLoopAccess<Data>::modify_or_keep(selector, fd, events);
}

/// Asks the CPU to start loading the slot `token` names, for an event loop
/// that will call find_current(token) a little later: with many descriptors
/// the slot is a cache miss. A hint only; any token is safe.
template <class Data>
void prefetch_slot(const BaseSelector<Data>& selector, std::uint64_t token) noexcept {
    SelectorLoopAccess<Data>::prefetch(selector, token);
}

}  // namespace muxio::detail
