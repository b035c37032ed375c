// The keyspace: string keys to string values, each with an optional
// deadline, and the timer that removes keys whose deadline has passed.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "muxio/reactor.hpp"

namespace resp {

/// Deadlines and times, in milliseconds since the clock's epoch. 64-bit
/// milliseconds reach far beyond any expire time a client can ask for, where
/// the reactor's nanosecond time points would overflow after 292 years.
using Millis = std::chrono::milliseconds;

/// A key's value and its deadline (none: the key does not expire).
struct Entry {
    std::string value;
    std::optional<Millis> deadline;
};

/// The keyspace with Redis's expiry semantics: a key whose deadline is now
/// or past no longer exists for any command (it is removed when next
/// touched: the lazy check), and expire_due() removes such keys in deadline
/// order (the active check, which ExpiryTimer drives from the reactor).
class Store {
public:
    using TimeSource = std::function<std::chrono::steady_clock::time_point()>;

    /// `clock` tells the time; tests inject a manual one, the server passes
    /// the reactor's, so that timers and deadlines agree.
    explicit Store(TimeSource clock);
    ~Store() = default;
    // The expiry index points into the map's nodes: no copies, no moves.
    Store(const Store&) = delete;
    Store& operator=(const Store&) = delete;
    Store(Store&&) = delete;
    Store& operator=(Store&&) = delete;

    /// The clock now, rounded down to milliseconds.
    [[nodiscard]] Millis now() const;

    /// The live entry of `key`, or nullptr (an expired key is removed here).
    /// The pointer is valid until the keyspace next changes. Change the
    /// deadline through set_deadline(), never directly.
    [[nodiscard]] Entry* find(std::string_view key);
    /// Sets `key` to `value` with `deadline`; a deadline already past removes
    /// the key instead.
    void set(std::string_view key, std::string value, std::optional<Millis> deadline);
    /// Sets `key` to `value`, keeping its deadline if it has one.
    void set_keep_ttl(std::string_view key, std::string value);
    /// Changes the deadline of a live key (removing the key if the deadline
    /// is past); false if there is no such key.
    bool set_deadline(std::string_view key, std::optional<Millis> deadline);
    /// Removes `key`; false if it was not there (or had expired).
    bool erase(std::string_view key);
    /// Number of live keys.
    [[nodiscard]] std::size_t size();
    /// Number of keys held, expired ones not yet removed included.
    [[nodiscard]] std::size_t stored_count() const noexcept { return map_.size(); }
    void clear() noexcept;

    /// The earliest deadline of any key, expired or not.
    [[nodiscard]] std::optional<Millis> next_deadline() const noexcept;
    /// Removes up to `budget` keys whose deadline has come, earliest first;
    /// returns how many it removed.
    std::size_t expire_due(std::size_t budget);
    /// Called with the new earliest deadline whenever a key gets a deadline
    /// earlier than every other: the timer must then be set sooner.
    void on_earlier_deadline(std::function<void(Millis)> listener) { listener_ = std::move(listener); }

private:
    struct Hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view key) const noexcept { return std::hash<std::string_view>{}(key); }
    };
    using Map = std::unordered_map<std::string, Entry, Hash, std::equal_to<>>;

    // The expiry index orders keys by deadline. Its string_views name the
    // keys inside the map's nodes, which never move while the key exists.
    using Index = std::set<std::pair<Millis, std::string_view>>;

    // The iterator of a key, removed if it is expired; end() if absent.
    Map::iterator lookup(std::string_view key);
    void change_deadline(Map::iterator it, std::optional<Millis> deadline);
    void remove(Map::iterator it);

    TimeSource clock_;
    Map map_;
    Index index_;
    std::function<void(Millis)> listener_;
};

/// Removes expired keys of a Store through one reactor timer.
///
/// Why one timer for the whole keyspace and not one per key: the store keeps
/// its keys in deadline order anyway (it must, to expire them in order and
/// to find the next one), so a single timer set at the earliest deadline is
/// enough. One reactor timer per key would cost a scheduler slot and a
/// callback per expiring key, a cancel and reschedule on every SET EX of an
/// existing key, and a callback run per key where one run can remove many.
/// The timer removes at most `budget` keys per run and comes back in the next
/// iteration for the rest, so a mass expiry cannot starve clients' I/O.
///
/// Threads: with a `store_guard`, the store is shared by threads that each
/// lock the guard around every use of it (Dispatcher's store_guard). The
/// timer then runs on `reactor` only, under the guard: a key given an
/// earlier deadline on another thread has the timer moved through
/// call_soon_threadsafe(), never from that thread. Meanwhile the lazy check
/// keeps an expired key invisible to every command. Without a guard, all is
/// on `reactor`'s thread and nothing is locked. stop() and the destructor
/// belong to `reactor`'s thread, or to any thread while it does not run.
class ExpiryTimer {
public:
    static constexpr std::size_t default_budget = 1000;

    ExpiryTimer(muxio::Reactor& reactor, Store& store, std::size_t budget = default_budget,
                std::mutex* store_guard = nullptr);
    ~ExpiryTimer();
    ExpiryTimer(const ExpiryTimer&) = delete;
    ExpiryTimer& operator=(const ExpiryTimer&) = delete;

    /// Cancels the timer and detaches from the store.
    void stop() noexcept;
    /// Keys removed by the timer so far.
    [[nodiscard]] std::uint64_t expired_count() const noexcept { return expired_; }

private:
    void arm(Millis deadline);
    void fire();
    void earlier_deadline(Millis deadline);
    void rearm();
    [[nodiscard]] std::unique_lock<std::mutex> lock_store() const;

    muxio::Reactor& reactor_;
    Store& store_;
    std::size_t budget_;
    std::mutex* store_guard_;
    bool rearm_posted_ = false;  // under the guard: a rearm() is on its way to the reactor
    muxio::TimerHandle timer_;
    std::optional<Millis> armed_;  // the deadline the timer is set for
    std::uint64_t expired_ = 0;
    bool stopped_ = false;
};

/// The reactor time at which `deadline` comes, saturated at the largest
/// representable time point.
[[nodiscard]] std::chrono::steady_clock::time_point to_time_point(Millis deadline) noexcept;

}  // namespace resp
