#include "store.hpp"

#include <limits>
#include <mutex>

namespace resp {

std::chrono::steady_clock::time_point to_time_point(Millis deadline) noexcept {
    using TimePoint = std::chrono::steady_clock::time_point;
    using Duration = TimePoint::duration;
    constexpr Millis latest = std::chrono::duration_cast<Millis>(Duration::max());
    if (deadline >= latest) {
        return TimePoint::max();
    }
    if (deadline <= Millis::zero()) {
        return TimePoint{};
    }
    return TimePoint{std::chrono::duration_cast<Duration>(deadline)};
}

Store::Store(TimeSource clock) : clock_{std::move(clock)} {}

Millis Store::now() const {
    return std::chrono::floor<Millis>(clock_().time_since_epoch());
}

Store::Map::iterator Store::lookup(std::string_view key) {
    auto it = map_.find(key);
    if (it != map_.end() && it->second.deadline && *it->second.deadline <= now()) {
        remove(it);
        return map_.end();
    }
    return it;
}

Entry* Store::find(std::string_view key) {
    const auto it = lookup(key);
    return it == map_.end() ? nullptr : &it->second;
}

void Store::set(std::string_view key, std::string value, std::optional<Millis> deadline) {
    if (deadline && *deadline <= now()) {
        erase(key);
        return;
    }
    auto it = map_.find(key);
    if (it == map_.end()) {
        it = map_.emplace(std::string{key}, Entry{std::move(value), std::nullopt}).first;
    } else {
        it->second.value = std::move(value);
    }
    change_deadline(it, deadline);
}

void Store::set_keep_ttl(std::string_view key, std::string value) {
    auto it = lookup(key);
    if (it == map_.end()) {
        map_.emplace(std::string{key}, Entry{std::move(value), std::nullopt});
    } else {
        it->second.value = std::move(value);
    }
}

bool Store::set_deadline(std::string_view key, std::optional<Millis> deadline) {
    const auto it = lookup(key);
    if (it == map_.end()) {
        return false;
    }
    if (deadline && *deadline <= now()) {
        remove(it);
    } else {
        change_deadline(it, deadline);
    }
    return true;
}

bool Store::erase(std::string_view key) {
    const auto it = lookup(key);
    if (it == map_.end()) {
        return false;
    }
    remove(it);
    return true;
}

std::size_t Store::size() {
    // Keys past their deadline that the timer has not reached yet are gone
    // for every other command; DBSIZE should agree.
    expire_due(std::numeric_limits<std::size_t>::max());
    return map_.size();
}

void Store::clear() noexcept {
    index_.clear();
    map_.clear();
}

std::optional<Millis> Store::next_deadline() const noexcept {
    if (index_.empty()) {
        return std::nullopt;
    }
    return index_.begin()->first;
}

std::size_t Store::expire_due(std::size_t budget) {
    const Millis current = now();
    std::size_t removed = 0;
    while (removed < budget && !index_.empty() && index_.begin()->first <= current) {
        const auto it = map_.find(index_.begin()->second);
        index_.erase(index_.begin());
        map_.erase(it);
        ++removed;
    }
    return removed;
}

void Store::change_deadline(Map::iterator it, std::optional<Millis> deadline) {
    Entry& entry = it->second;
    if (entry.deadline == deadline) {
        return;
    }
    const std::string_view key = it->first;
    if (entry.deadline) {
        index_.erase({*entry.deadline, key});
    }
    entry.deadline = deadline;
    if (deadline) {
        index_.emplace(*deadline, key);
        if (listener_ && index_.begin()->first == *deadline) {
            listener_(*deadline);
        }
    }
}

void Store::remove(Map::iterator it) {
    if (it->second.deadline) {
        index_.erase({*it->second.deadline, std::string_view{it->first}});
    }
    map_.erase(it);
}

ExpiryTimer::ExpiryTimer(muxio::Reactor& reactor, Store& store, std::size_t budget, std::mutex* store_guard)
    : reactor_{reactor}, store_{store}, budget_{budget == 0 ? 1 : budget}, store_guard_{store_guard} {
    const std::unique_lock lock = lock_store();
    store_.on_earlier_deadline([this](Millis deadline) { earlier_deadline(deadline); });
    if (const auto next = store_.next_deadline()) {
        arm(*next);
    }
}

ExpiryTimer::~ExpiryTimer() {
    stop();
}

std::unique_lock<std::mutex> ExpiryTimer::lock_store() const {
    return store_guard_ == nullptr ? std::unique_lock<std::mutex>{} : std::unique_lock{*store_guard_};
}

void ExpiryTimer::stop() noexcept {
    const std::unique_lock lock = lock_store();
    if (stopped_) {
        return;
    }
    stopped_ = true;
    timer_.cancel();
    armed_.reset();
    store_.on_earlier_deadline({});
}

// The store's listener: on whatever thread changed the store, the guard held.
void ExpiryTimer::earlier_deadline(Millis deadline) {
    if (armed_ && deadline >= *armed_) {
        return;
    }
    if (store_guard_ == nullptr) {
        arm(deadline);
    } else if (!rearm_posted_) {
        rearm_posted_ = true;
        reactor_.call_soon_threadsafe([this] { rearm(); });
    }
}

// On the reactor's thread: sets the timer for the earliest deadline now.
void ExpiryTimer::rearm() {
    const std::unique_lock lock = lock_store();
    rearm_posted_ = false;
    if (stopped_) {
        return;
    }
    if (const auto next = store_.next_deadline(); next && (!armed_ || *next < *armed_)) {
        arm(*next);
    }
}

void ExpiryTimer::arm(Millis deadline) {
    timer_.cancel();
    armed_ = deadline;
    timer_ = reactor_.call_at(to_time_point(deadline), [this] { fire(); });
}

void ExpiryTimer::fire() {
    const std::unique_lock lock = lock_store();
    armed_.reset();
    expired_ += store_.expire_due(budget_);
    const auto next = store_.next_deadline();
    if (!next) {
        return;
    }
    if (*next <= store_.now()) {
        // The budget ran out with keys still due: finish in the next
        // iteration, after the I/O that is waiting.
        armed_ = *next;
        timer_ = reactor_.call_soon([this] { fire(); });
    } else {
        arm(*next);
    }
}

}  // namespace resp
