// SelectorKey, ReadyKey, SelectorMap and BaseSelector: Python's selectors, in C++.
#pragma once

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <ratio>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "muxio/detail/chunked_table.hpp"
#include "muxio/detail/poller.hpp"
#include "muxio/detail/registration_token.hpp"
#include "muxio/error.hpp"
#include "muxio/events.hpp"
#include "muxio/file_object.hpp"

namespace muxio {

/// What a selector knows of one registration: the file object as registered,
/// its descriptor, the events watched and the caller's data.
///
/// Keys live at stable addresses inside their selector from register_() to
/// unregister(). The selector never reads `data`, so it stays yours to change
/// in place, even through the const keys that select() and get_key() return;
/// change `events` only through modify().
///
/// fmt formats it as `SelectorKey(fd=5, events=READ)`, with `data=...` when
/// Data is formattable.
template <class Data>
struct SelectorKey {
    /// What was registered, compared by identity (see FileObject).
    FileObject fileobj;
    /// The descriptor at registration: `fileobj.fileno()` then. Kept, so an
    /// object closed since can still be unregistered.
    int fd = -1;
    /// The events watched: always a valid mask.
    Events events;
    /// The caller's data, never read by the selector. unregister() hands it
    /// back in the key it returns; close() destroys it.
    mutable Data data;
};

/// One entry of select()'s result: a key and the subset of its events that
/// is ready. Destructures like Python's tuple: `for (auto [key, events] : s.select())`.
template <class Data>
class ReadyKey {
public:
    /// Made by select(): `events` ready for `key`, whose registration `token`
    /// names (BaseSelector::token_of()).
    ReadyKey(const SelectorKey<Data>& key, Events events, std::uint64_t token) noexcept
        : key_{&key}, events_{events}, token_{token} {}

    /// The key, owned by the selector. Precondition: still registered (see
    /// BaseSelector::is_current()); a key unregistered since dangles.
    [[nodiscard]] const SelectorKey<Data>& key() const noexcept { return *key_; }
    /// The ready events: never empty, always within key().events.
    [[nodiscard]] Events events() const noexcept { return events_; }
    /// Identifies the registration this readiness belongs to; see
    /// BaseSelector::is_current().
    [[nodiscard]] std::uint64_t token() const noexcept { return token_; }

    /// key() for `I == 0`, events() for `I == 1`: the structured binding.
    template <std::size_t I>
    [[nodiscard]] decltype(auto) get() const noexcept {
        static_assert(I < 2);
        if constexpr (I == 0) {
            return key();
        } else {
            return events();
        }
    }

private:
    const SelectorKey<Data>* key_;
    Events events_;
    std::uint64_t token_;
};

template <class Data>
class BaseSelector;

namespace detail {
template <class Data>
class SelectorLoopAccess;
}  // namespace detail

/// A read-only view of a selector's registrations (Python's `get_map()`):
/// size, lookup by file object, iteration in descriptor order.
///
/// Valid while its selector is alive and open; iterators are invalidated by
/// register_() and unregister().
template <class Data>
class SelectorMap {
public:
    /// A forward iterator over the keys, in descriptor order. Invalidated by
    /// register_(), unregister() and the selector's close().
    class iterator {
    public:
        using iterator_category = std::forward_iterator_tag;  ///< A forward iterator.
        using value_type = SelectorKey<Data>;                 ///< The keys.
        using difference_type = std::ptrdiff_t;               ///< Distance between iterators.
        using pointer = const SelectorKey<Data>*;             ///< Keys are read-only.
        using reference = const SelectorKey<Data>&;           ///< Keys are read-only.

        /// A singular iterator: only assignment and comparison are valid.
        iterator() = default;
        /// The key. Precondition: dereferenceable (not end()).
        reference operator*() const { return *(*slot_).key; }
        /// The key's address. Precondition: dereferenceable (not end()).
        pointer operator->() const { return &*(*slot_).key; }
        /// Moves to the next registered descriptor. Precondition: not end().
        iterator& operator++() {
            ++slot_;
            skip_empty();
            return *this;
        }
        /// Post-increment.
        iterator operator++(int) {
            auto before = *this;
            ++*this;
            return before;
        }
        /// Same position in the same map.
        friend bool operator==(const iterator& a, const iterator& b) noexcept { return a.slot_ == b.slot_; }

    private:
        friend class SelectorMap;
        using SlotIterator = typename BaseSelector<Data>::SlotTable::const_iterator;
        iterator(SlotIterator slot, SlotIterator end) : slot_{slot}, end_{end} { skip_empty(); }
        void skip_empty() {
            while (slot_ != end_ && !(*slot_).key) {
                ++slot_;
            }
        }
        SlotIterator slot_{};
        SlotIterator end_{};
    };

    /// Number of registrations.
    [[nodiscard]] std::size_t size() const noexcept { return selector_->size_; }
    /// True when nothing is registered.
    [[nodiscard]] bool empty() const noexcept { return size() == 0; }
    /// True when `fileobj` is registered. Never throws for an invalid file
    /// object: it is simply not there.
    [[nodiscard]] bool contains(const FileObject& fileobj) const noexcept { return find(fileobj) != nullptr; }
    /// The key of `fileobj`, or nullptr.
    [[nodiscard]] const SelectorKey<Data>* find(const FileObject& fileobj) const noexcept {
        return selector_->find_key(fileobj);
    }
    /// The key of `fileobj`; KeyError if it is not registered.
    [[nodiscard]] const SelectorKey<Data>& at(const FileObject& fileobj) const {
        if (const auto* key = find(fileobj)) {
            return *key;
        }
        throw KeyError(fmt::format("{} is not registered", BaseSelector<Data>::describe(fileobj)));
    }
    /// at(): KeyError if `fileobj` is not registered (Python's `map[fileobj]`).
    [[nodiscard]] const SelectorKey<Data>& operator[](const FileObject& fileobj) const { return at(fileobj); }

    /// The key of the lowest registered descriptor.
    [[nodiscard]] iterator begin() const { return {selector_->slots_.begin(), selector_->slots_.end()}; }
    /// Past the last key.
    [[nodiscard]] iterator end() const { return {selector_->slots_.end(), selector_->slots_.end()}; }

private:
    friend class BaseSelector<Data>;
    explicit SelectorMap(const BaseSelector<Data>& selector) noexcept : selector_{&selector} {}
    const BaseSelector<Data>* selector_;
};

/// The selector: register file objects with the events to watch and some data,
/// then select() the ready ones. The contract of Python's `selectors`, with
/// C++ errors:
///  - `std::invalid_argument`: an empty events mask or one with bits other
///    than EVENT_READ | EVENT_WRITE; a negative descriptor; an object whose
///    fileno() fails and which is not registered; a descriptor the mechanism
///    cannot represent (select: FD_SETSIZE and above).
///  - `KeyError`: not registered, or already registered.
///  - `std::system_error`: the kernel refused; the message names the call and fd.
///  - `std::logic_error`: any use after close(), except close() itself.
///
/// register_() and modify() also come as `noexcept` overloads taking a
/// `std::error_code&` (asio's convention; the throwing forms stay the
/// default), for paths where a refusal is expected: they return the key, or
/// nullptr with the error set, and never throw. Every failure the throwing
/// form reports comes as a code, a closed selector included (a `noexcept`
/// function cannot throw, and a closed object is asio's bad_descriptor):
///  - the kernel's refusal: its errno (e.g. EBADF for a closed descriptor,
///    EPERM for a regular file on epoll);
///  - `std::errc::file_exists`: already registered (KeyError), epoll's EEXIST;
///  - `std::errc::no_such_file_or_directory`: not registered (KeyError),
///    epoll's ENOENT;
///  - `std::errc::bad_file_descriptor`: a negative descriptor, an object
///    whose fileno() fails and that is not registered, or a closed selector
///    (is_closed() tells these apart);
///  - `std::errc::invalid_argument`: an empty or unknown events mask, or a
///    descriptor the mechanism cannot represent (select: FD_SETSIZE);
///  - `std::errc::not_enough_memory`: the descriptor table could not grow.
///
/// A failed register_() leaves the selector exactly as it was; so does a
/// failed modify(), except when the kernel refuses the new events, which
/// unregisters the key as the throwing form does (Python's rule).
///
/// A registration names a descriptor number; what the kernel watches behind
/// it differs per mechanism, and these rules make them agree
/// (docs/ARCHITECTURE.md, "Contracts under misuse"):
///  - Unregister before closing. A descriptor found closed while registered
///    (at once by select and poll, by epoll and io_uring when a call meets
///    it) is reported by every select() as an error condition, ready for its
///    events, until it is unregistered. unregister() and modify() still
///    succeed on it; register_() and reregister() throw EBADF.
///  - A duplicate (dup, dup2, fork, SCM_RIGHTS) shares the open file, not the
///    registration: to watch it, register its own number. Close a registered
///    number while a duplicate keeps the file open, and epoll and io_uring
///    go on reporting that file under the closed number until it is
///    unregistered; epoll may report it even after (EPOLL_CTL_DEL can no
///    longer name it). Such stale events never end a select() early: they
///    are dropped, the wait goes on for the time left, and the epoll set is
///    rebuilt without them.
///  - A number closed and given to another file without unregister:
///    reregister() watches the new file, under a new token.
///
/// Not thread-safe: one selector belongs to one thread at a time.
/// Not copyable or movable: keys and views point into it.
template <class Data>
class BaseSelector {
public:
    using Key = SelectorKey<Data>;  ///< What register_() returns.
    using Ready = ReadyKey<Data>;   ///< One entry of select()'s result.
    using Map = SelectorMap<Data>;  ///< What get_map() returns.

    BaseSelector(const BaseSelector&) = delete;
    BaseSelector& operator=(const BaseSelector&) = delete;
    /// Closes the selector (see close()).
    virtual ~BaseSelector() { close(); }

    /// Registers `fileobj` for `events` with `data`; returns the new key.
    /// Throws as listed above; when the kernel refuses, the selector is left
    /// exactly as it was.
    const Key& register_(const FileObject& fileobj, Events events, Data data) {
        ensure_open("register_");
        check_events(events);
        const int fd = fd_of(fileobj);
        if (slot_of(fd) != nullptr) {
            throw KeyError(fmt::format("{} (fd {}) is already registered", describe(fileobj), fd));
        }
        const auto index = static_cast<std::size_t>(fd);
        const std::uint32_t generation = next_generation(index < slots_.size() ? slots_[index].generation : 0U);
        // The kernel is asked before anything is recorded, so a refusal leaves
        // no trace, and an absurd descriptor number is refused (EBADF) before
        // the table grows to reach it.
        poller_->add(fd, events, make_token(fd, generation));
        try {
            grow_to(fd);
            Slot& slot = slots_[index];
            slot.key.emplace(Key{fileobj, fd, events, std::move(data)});
            slot.generation = generation;
        } catch (...) {
            (void)poller_->remove(fd, events);
            throw;
        }
        ++size_;
        return *slots_[index].key;
    }

    /// Registers with a value-initialized `Data`.
    const Key& register_(const FileObject& fileobj, Events events) requires std::default_initializable<Data> {
        return register_(fileobj, events, Data{});
    }

    /// register_() reporting failures in `error` (see the class comment):
    /// the new key, or nullptr with `error` set and the selector exactly as
    /// it was. `error` is cleared on success.
    const Key* register_(const FileObject& fileobj, Events events, Data data,
                         std::error_code& error) noexcept requires std::is_nothrow_move_constructible_v<Data> {
        error.clear();
        if (closed_) {
            error = std::make_error_code(std::errc::bad_file_descriptor);
            return nullptr;
        }
        if (!events.is_valid()) {
            error = std::make_error_code(std::errc::invalid_argument);
            return nullptr;
        }
        const int fd = try_fd_of(fileobj);
        if (fd < 0) {
            error = std::make_error_code(std::errc::bad_file_descriptor);
            return nullptr;
        }
        if (slot_of(fd) != nullptr) {
            error = std::make_error_code(std::errc::file_exists);
            return nullptr;
        }
        const auto index = static_cast<std::size_t>(fd);
        const std::uint32_t generation = next_generation(index < slots_.size() ? slots_[index].generation : 0U);
        poller_->try_add(fd, events, make_token(fd, generation), error);
        if (error) {
            return nullptr;
        }
        try {
            grow_to(fd);
        } catch (...) {
            (void)poller_->remove(fd, events);
            error = std::make_error_code(std::errc::not_enough_memory);
            return nullptr;
        }
        Slot& slot = slots_[index];
        slot.key.emplace(Key{fileobj, fd, events, std::move(data)});
        slot.generation = generation;
        ++size_;
        return &*slot.key;
    }

    /// The same with a value-initialized `Data`.
    const Key* register_(const FileObject& fileobj, Events events, std::error_code& error) noexcept requires
        std::is_nothrow_default_constructible_v<Data> && std::is_nothrow_move_constructible_v<Data> {
        return register_(fileobj, events, Data{}, error);
    }

    /// Unregisters `fileobj` and returns its key, data included. KeyError if it
    /// is not registered. Succeeds when the descriptor was closed since it was
    /// registered, also for an object whose fileno() now fails: it is found by
    /// identity.
    Key unregister(const FileObject& fileobj) {
        ensure_open("unregister");
        const int fd = fd_of(fileobj);
        Slot* slot = slot_of(fd);
        if (slot == nullptr) {
            throw KeyError(fmt::format("{} is not registered", describe(fileobj)));
        }
        // The descriptor may already be closed; the kernel forgot it then.
        (void)poller_->remove(fd, slot->key->events);
        Key removed = std::move(*slot->key);
        forget(*slot);
        return removed;
    }

    /// Changes the events and data of a registered file object. Only what
    /// changed is changed: new data with the same events makes no system
    /// call. If the kernel refuses the new events, the file object is
    /// unregistered and the error rethrown (Python's rule: the key would
    /// otherwise claim events the kernel does not watch). A descriptor closed
    /// since it was registered is not refused: the key takes the new events
    /// and select() reports it as an error condition, ready for them, until
    /// it is unregistered (select, poll, epoll and io_uring alike).
    const Key& modify(const FileObject& fileobj, Events events, Data data) {
        const Key& key = modify(fileobj, events);
        key.data = std::move(data);
        return key;
    }

    /// Changes only the events; the data stays. (C++ has no `None` to reset
    /// it to, so leaving `data` out keeps it rather than clearing it.)
    const Key& modify(const FileObject& fileobj, Events events) {
        ensure_open("modify");
        check_events(events);
        const int fd = fd_of(fileobj);
        Slot* slot = slot_of(fd);
        if (slot == nullptr) {
            throw KeyError(fmt::format("{} is not registered", describe(fileobj)));
        }
        Key& key = *slot->key;
        if (events != key.events) {
            try {
                poller_->modify(fd, key.events, events, make_token(fd, slot->generation));
            } catch (...) {
                (void)poller_->remove(fd, key.events);
                forget(*slot);
                throw;
            }
            key.events = events;
        }
        return key;
    }

    /// modify() reporting failures in `error` (see the class comment): the
    /// key, or nullptr with `error` set. Only a kernel refusing the new
    /// events changes the selector then: the key is unregistered, as
    /// modify() does. `error` is cleared on success.
    const Key* modify(const FileObject& fileobj, Events events, std::error_code& error) noexcept {
        error.clear();
        if (closed_) {
            error = std::make_error_code(std::errc::bad_file_descriptor);
            return nullptr;
        }
        if (!events.is_valid()) {
            error = std::make_error_code(std::errc::invalid_argument);
            return nullptr;
        }
        const int fd = try_fd_of(fileobj);
        if (fd < 0) {
            error = std::make_error_code(std::errc::bad_file_descriptor);
            return nullptr;
        }
        Slot* slot = slot_of(fd);
        if (slot == nullptr) {
            error = std::make_error_code(std::errc::no_such_file_or_directory);
            return nullptr;
        }
        Key& key = *slot->key;
        if (events != key.events) {
            poller_->try_modify(fd, key.events, events, make_token(fd, slot->generation), error);
            if (error) {
                (void)poller_->remove(fd, key.events);
                forget(*slot);
                return nullptr;
            }
            key.events = events;
        }
        return &key;
    }

    /// The same, also replacing the data (only if the events could be set).
    const Key* modify(const FileObject& fileobj, Events events, Data data,
                      std::error_code& error) noexcept requires std::is_nothrow_move_assignable_v<Data> {
        const Key* key = modify(fileobj, events, error);
        if (key != nullptr) {
            key->data = std::move(data);
        }
        return key;
    }

    /// Registers `fileobj` again in place, for an owner whose descriptor may
    /// have been closed and its number reused by another file without an
    /// unregister: the key stays where it is, with its data; `events`
    /// replace the events watched; and the kernel is asked to watch the open
    /// file the descriptor names now, under a new token, so that readiness
    /// of the registration before (the old file's included) is dropped
    /// (is_current() turns false for it). One system call on epoll and
    /// io_uring, one check (fcntl) on select and poll. Throws as modify()
    /// does for a bad mask or a file object not registered, and
    /// std::system_error when the descriptor is closed (EBADF) or the kernel
    /// refuses the file it names: the key then keeps its events and token,
    /// and if the kernel watches nothing for it now, select() reports it as
    /// an error condition until it is unregistered.
    const Key& reregister(const FileObject& fileobj, Events events) {
        ensure_open("reregister");
        check_events(events);
        const int fd = fd_of(fileobj);
        Slot* slot = slot_of(fd);
        if (slot == nullptr) {
            throw KeyError(fmt::format("{} is not registered", describe(fileobj)));
        }
        const std::uint32_t generation = next_generation(slot->generation);
        poller_->reregister(fd, slot->key->events, events, make_token(fd, generation));
        slot->generation = generation;
        slot->key->events = events;
        return *slot->key;
    }

    /// Waits until some registered file object is ready or the timeout expires.
    /// `std::nullopt` blocks; zero or negative polls; positive waits at least
    /// that long (rounded up to what the kernel can express). Neither a
    /// signal nor events of registrations that are gone end the wait early.
    /// Returns the ready keys, each with its ready
    /// events masked by the key's events; errors and hang-ups count as ready
    /// (under SelectSelector a hang-up without an error counts as readable
    /// only, as select(2) reports it).
    /// The span is reused: valid until the next select(), and an entry only
    /// while its key stays registered (see is_current()).
    std::span<const Ready> select(detail::Timeout timeout) {
        ensure_open("select");
        ready_.clear();
        for (const detail::PollEvent& event : poller_->wait(timeout, live_filter())) {
            // Drop events of a registration that no longer exists: the
            // descriptor was unregistered, or unregistered and registered
            // again (a new generation), after the kernel queued the event.
            const Key* key = find_current(event.token);
            if (const Events ready = watched(key, event.events)) {
                ready_.emplace_back(*key, ready, event.token);
            }
        }
        return ready_;
    }

    /// Blocks until something is ready.
    std::span<const Ready> select() { return select(detail::Timeout{}); }

    /// Any std::chrono duration; fractional durations round up.
    template <class Rep, class Period>
    std::span<const Ready> select(std::chrono::duration<Rep, Period> timeout) {
        return select(detail::Timeout{ceil_nanoseconds(timeout)});
    }

    /// True while the registration `ready` came from is still in place: a
    /// callback run for an earlier entry of the same select() result may have
    /// unregistered it, or replaced it with a new registration of the same
    /// descriptor. Does not touch the key, so it is safe to call for any entry.
    [[nodiscard]] bool is_current(const Ready& ready) const noexcept { return find_current(ready.token()) != nullptr; }

    /// The key of a registered file object; KeyError if it is not registered.
    [[nodiscard]] const Key& get_key(const FileObject& fileobj) const {
        ensure_open("get_key");
        return get_map().at(fileobj);
    }

    /// A read-only view of all registrations.
    [[nodiscard]] Map get_map() const {
        ensure_open("get_map");
        return Map{*this};
    }

    /// Frees the kernel resources and forgets every key (their data is
    /// destroyed). Afterwards every call but close() throws std::logic_error.
    /// Closing twice is harmless; never throws.
    void close() noexcept {
        if (closed_) {
            return;
        }
        closed_ = true;
        poller_->close();
        slots_.clear();
        ready_.clear();
        size_ = 0;
    }

    /// close() for a child process forked after the selector was made, whose
    /// kernel object (epoll or io_uring instance, kqueue, /dev/poll) is
    /// shared with the parent: releases this process's own descriptor and
    /// memory and forgets every key, without a single request to the kernel
    /// object, so the parent's registrations stay as they are. Afterwards as
    /// after close(). Never throws.
    void abandon() noexcept {
        if (closed_) {
            return;
        }
        closed_ = true;
        poller_->abandon();
        slots_.clear();
        ready_.clear();
        size_ = 0;
    }

    /// True after close() or abandon().
    [[nodiscard]] bool is_closed() const noexcept { return closed_; }

    /// The kernel object behind the selector (epoll, io_uring, kqueue or
    /// /dev/poll descriptor), or -1 for select and poll, which own none.
    [[nodiscard]] int fileno() const noexcept { return closed_ ? -1 : poller_->fileno(); }

    /// The mechanism's name: "select", "poll", "epoll", "io_uring", "kqueue", "devpoll".
    [[nodiscard]] std::string_view name() const noexcept { return poller_->name(); }

protected:
    /// Takes the mechanism to drive; named selectors pass theirs, tests may
    /// pass a fake one.
    explicit BaseSelector(std::unique_ptr<detail::Poller> poller) : poller_{std::move(poller)} {
        if (!poller_) {
            throw std::invalid_argument("muxio: a selector needs a poller");
        }
    }

private:
    friend class SelectorMap<Data>;
    // The reactor's fast paths (detail/selector_loop.hpp).
    friend class detail::SelectorLoopAccess<Data>;

    // The generation changes when a registration begins and when it ends,
    // so a token whose generation matches names a registration in place:
    // find_current() then reads one word before the key, and the key's
    // events and callbacks follow it, instead of reaching for the optional's
    // flag two cache lines further (a miss per event with many connections).
    struct Slot {
        std::uint32_t generation = 0;
        std::optional<Key> key;
    };
    // Indexed by descriptor; grows without moving its elements, which keeps
    // keys at stable addresses.
    using SlotTable = detail::ChunkedTable<Slot>;

    // What the poller asks before it lets a kernel answer end a wait: events
    // of registrations that are gone only make it wait on (see Poller::wait).
    [[nodiscard]] detail::LiveFilter live_filter() const noexcept {
        return {this, [](const void* self, std::uint64_t token) noexcept {
                    return static_cast<const BaseSelector*>(self)->find_current(token) != nullptr;
                }};
    }

    // See detail::select_tokens().
    std::span<const detail::PollEvent> select_tokens(detail::Timeout timeout) {
        ensure_open("select");
        ready_.clear();
        return poller_->wait(timeout, live_filter());
    }

    // The key of the registration `token` names, or nullptr once it is gone.
    [[nodiscard]] const Key* find_current(std::uint64_t token) const noexcept {
        const std::size_t index = detail::RegistrationToken::slot(token);
        if (index >= slots_.size()) {
            return nullptr;
        }
        const Slot& slot = slots_[index];
        // A matching generation implies a key (see Slot). Tokens are never
        // made with generation 0, the generation of a slot never used.
        if (slot.generation != detail::RegistrationToken::generation(token)) {
            return nullptr;
        }
        return &*slot.key;
    }

    [[nodiscard]] std::uint64_t token_of(const Key& key) const noexcept {
        return make_token(key.fd, slots_[static_cast<std::size_t>(key.fd)].generation);
    }

    // The one place events of a kernel answer meet the key's: what the key
    // does not watch, and everything of a registration that is gone, is
    // dropped.
    static Events watched(const Key* key, Events events) noexcept {
        return key != nullptr ? events & key->events : Events{};
    }

    // Generation 0 stays the never-used slot's.
    static std::uint32_t next_generation(std::uint32_t generation) noexcept {
        return generation + 1U == 0U ? 1U : generation + 1U;
    }

    static std::uint64_t make_token(int fd, std::uint32_t generation) noexcept {
        return detail::RegistrationToken::make(fd, generation);
    }

    template <class Rep, class Period>
    static std::chrono::nanoseconds ceil_nanoseconds(std::chrono::duration<Rep, Period> timeout) {
        using std::chrono::nanoseconds;
        if constexpr (std::is_integral_v<Rep> && std::ratio_less_equal_v<std::nano, Period>) {
            // Whole units of a nanosecond or coarser: exact, saturating at the
            // largest nanosecond count instead of overflowing.
            using Input = std::chrono::duration<Rep, Period>;
            if (timeout <= Input::zero()) {
                return nanoseconds::zero();
            }
            if (timeout >= std::chrono::duration_cast<Input>(nanoseconds::max())) {
                return nanoseconds::max();
            }
            return std::chrono::duration_cast<nanoseconds>(timeout);
        }
        using Wide = std::chrono::duration<long double, std::nano>;
        const Wide wide{timeout};
        if (wide >= Wide{std::chrono::nanoseconds::max()}) {
            return std::chrono::nanoseconds::max();
        }
        if (wide <= Wide::zero()) {
            return std::chrono::nanoseconds::zero();
        }
        return std::chrono::ceil<std::chrono::nanoseconds>(wide);
    }

    static void check_events(Events events) {
        if (!events.is_valid()) {
            throw std::invalid_argument(fmt::format("invalid events: {}", events));
        }
    }

    static std::string describe(const FileObject& fileobj) {
        if (fileobj.is_descriptor()) {
            return fmt::format("fd {}", fileobj.fileno());
        }
        return "file object";
    }

    void ensure_open(std::string_view operation) const {
        if (closed_) {
            throw std::logic_error(fmt::format("{}: selector is closed", operation));
        }
    }

    const Slot* slot_of(int fd) const noexcept {
        if (fd < 0 || static_cast<std::size_t>(fd) >= slots_.size()) {
            return nullptr;
        }
        const Slot& slot = slots_[static_cast<std::size_t>(fd)];
        return slot.key ? &slot : nullptr;
    }
    Slot* slot_of(int fd) noexcept { return const_cast<Slot*>(std::as_const(*this).slot_of(fd)); }

    void grow_to(int fd) { slots_.grow_to(static_cast<std::size_t>(fd)); }

    // Ends the slot's registration. The generation moves on with it, which
    // find_current() relies on (see Slot).
    void forget(Slot& slot) noexcept {
        slot.key.reset();
        ++slot.generation;
        --size_;
    }

    // The descriptor behind `fileobj`. A bare descriptor must not be negative.
    // For an object, fileno() is asked first; if it fails (throws or returns a
    // negative number, as a closed socket object does) the object may still be
    // registered, so it is searched for by identity, as Python does.
    int fd_of(const FileObject& fileobj) const {
        const int fd = try_fd_of(fileobj);
        if (fd >= 0) {
            return fd;
        }
        if (fileobj.is_descriptor()) {
            throw std::invalid_argument(fmt::format("invalid file descriptor: {}", fileobj.fileno()));
        }
        throw std::invalid_argument("invalid file object: its fileno() failed and it is not registered");
    }

    // fd_of() answering -1 where it throws.
    int try_fd_of(const FileObject& fileobj) const noexcept {
        if (fileobj.is_descriptor()) {
            const int fd = fileobj.fileno();  // a stored number: cannot throw
            return fd < 0 ? -1 : fd;
        }
        int fd = -1;
        try {
            fd = fileobj.fileno();
        } catch (...) {
            fd = -1;
        }
        if (fd >= 0) {
            return fd;
        }
        for (const Key& key : Map{*this}) {
            if (key.fileobj == fileobj) {
                return key.fd;
            }
        }
        return -1;
    }

    const Key* find_key(const FileObject& fileobj) const noexcept {
        const Slot* slot = slot_of(try_fd_of(fileobj));
        return slot != nullptr ? &*slot->key : nullptr;
    }

    std::unique_ptr<detail::Poller> poller_;
    SlotTable slots_;
    std::vector<Ready> ready_;
    std::size_t size_ = 0;
    bool closed_ = false;
};

}  // namespace muxio

template <class Data>
struct std::tuple_size<muxio::ReadyKey<Data>> : std::integral_constant<std::size_t, 2> {};
template <class Data>
struct std::tuple_element<0, muxio::ReadyKey<Data>> {
    using type = const muxio::SelectorKey<Data>&;
};
template <class Data>
struct std::tuple_element<1, muxio::ReadyKey<Data>> {
    using type = muxio::Events;
};

// Formats as `SelectorKey(fd=5, events=READ)`, with `data=...` when Data is
// formattable. Out of the API reference, as Events' formatter is.
/// \cond
template <class Data>
struct fmt::formatter<muxio::SelectorKey<Data>> : fmt::formatter<fmt::string_view> {
    template <class FormatContext>
    auto format(const muxio::SelectorKey<Data>& key, FormatContext& ctx) const -> decltype(ctx.out()) {
        if constexpr (fmt::is_formattable<Data>::value) {
            return fmt::format_to(ctx.out(), "SelectorKey(fd={}, events={}, data={})", key.fd, key.events, key.data);
        } else {
            return fmt::format_to(ctx.out(), "SelectorKey(fd={}, events={})", key.fd, key.events);
        }
    }
};
/// \endcond
