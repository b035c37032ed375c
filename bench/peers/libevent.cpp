// libevent: plain events (no bufferevents, no evhttp) on an event_base with
// default settings (epoll here), a reader and a writer event per connection.
// call_soon is event_active() on a callback's own event; call_soon_threadsafe
// is a locked queue plus event_active() from the producer, on a base made
// thread-safe with evthread_use_pthreads().
#include <event2/event.h>
#include <event2/thread.h>

#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "common.hpp"

namespace bench {
namespace {

void check(int status, const char* what) {
    if (status < 0) {
        throw std::runtime_error(std::string{what} + " failed");
    }
}

// An event_base that is freed when it goes, watching the idle end of a socket pair.
struct Base {
    SocketPair pair;
    event_base* base = event_base_new();
    event* idle = nullptr;

    explicit Base(bool watch_idle = true) {
        if (base == nullptr) {
            throw std::runtime_error("event_base_new failed");
        }
        if (watch_idle) {
            idle = event_new(
                base, pair.first(), EV_READ | EV_PERSIST, [](evutil_socket_t, short, void*) {}, nullptr);
            check(event_add(idle, nullptr), "event_add");
        }
    }
    ~Base() {
        if (idle != nullptr) {
            event_free(idle);
        }
        event_base_free(base);
    }
    Base(const Base&) = delete;
    Base& operator=(const Base&) = delete;
};

// Storage for `count` events, allocated but not touched (libevent tells the
// size of struct event at run time).
class EventArray {
public:
    explicit EventArray(std::size_t count)
        : size_{event_get_struct_event_size()}, storage_{new unsigned char[count * size_]} {}
    event* operator[](std::size_t index) { return reinterpret_cast<event*>(storage_.get() + index * size_); }

private:
    std::size_t size_;
    std::unique_ptr<unsigned char[]> storage_;
};

Mode mode = Mode::echo;

struct EventConnection {
    Connection state;
    event* reader = nullptr;
    event* writer = nullptr;
};

void apply(EventConnection* connection, Next next) {
    switch (next) {
        case Next::nothing:
            break;
        case Next::watch_writable:
            event_del(connection->reader);
            event_add(connection->writer, nullptr);
            break;
        case Next::watch_readable:
            event_del(connection->writer);
            event_add(connection->reader, nullptr);
            break;
        case Next::close:
            event_free(connection->reader);
            event_free(connection->writer);
            ::close(connection->state.fd);
            delete connection;
            break;
    }
}

void on_acceptable(evutil_socket_t listener, short /*what*/, void* base) {
    for (int fd; (fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
        set_nodelay(fd);
        auto* c = new EventConnection{{fd, {}, {}, 0}};
        c->reader = event_new(
            static_cast<event_base*>(base), fd, EV_READ | EV_PERSIST,
            [](evutil_socket_t, short, void* self) {
                auto* connection = static_cast<EventConnection*>(self);
                apply(connection, on_readable(connection->state, mode));
            },
            c);
        c->writer = event_new(
            static_cast<event_base*>(base), fd, EV_WRITE | EV_PERSIST,
            [](evutil_socket_t, short, void* self) {
                auto* connection = static_cast<EventConnection*>(self);
                apply(connection, on_writable(connection->state));
            },
            c);
        event_add(c->reader, nullptr);
    }
}

void serve(Mode served, const Options& options) {
    mode = served;
    const Base owned{false};
    event* accept_event =
        event_new(owned.base, make_listener(options.port), EV_READ | EV_PERSIST, on_acceptable, owned.base);
    check(event_add(accept_event, nullptr), "event_add");
    for (;;) {
        event_base_dispatch(owned.base);
    }
}

Measurement timers(const TimerWorkload& workload) {
    const std::size_t count = workload.delays_ms.size();
    EventArray events{count};
    std::size_t fired = 0;
    const Base owned{false};
    const Timing timing;
    for (std::size_t i = 0; i < count; ++i) {
        evtimer_assign(
            events[i], owned.base, [](evutil_socket_t, short, void* n) { ++*static_cast<std::size_t*>(n); }, &fired);
        const timeval delay{static_cast<time_t>(workload.delays_ms[i] / 1000),
                            static_cast<suseconds_t>(workload.delays_ms[i] % 1000) * 1000};
        evtimer_add(events[i], &delay);
    }
    for (const std::uint32_t index : workload.cancel_order) {
        evtimer_del(events[index]);
    }
    event_base_dispatch(owned.base);  // returns when no event is pending
    return timing.stop(fired);
}

// Each chain owns one event and re-activates it from its callback; libevent
// runs an event activated during dispatch in the same pass, without polling.
struct SoonState {
    event_base* base;
    std::size_t total;
    std::size_t scheduled = 0;
    std::size_t ran = 0;
};

struct Chain {
    SoonState* state;
    event* self;
};

Measurement soon(const SoonWorkload& workload) {
    EventArray events{workload.chains};
    std::vector<Chain> chains(workload.chains);
    const Base owned;
    SoonState state{owned.base, workload.total};
    const Timing timing;
    for (std::size_t i = 0; i < workload.chains; ++i) {
        chains[i] = {&state, events[i]};
        event_assign(
            events[i], owned.base, -1, 0,
            [](evutil_socket_t, short, void* arg) {
                auto* chain = static_cast<Chain*>(arg);
                SoonState& s = *chain->state;
                ++s.ran;
                if (s.scheduled < s.total) {
                    ++s.scheduled;
                    event_active(chain->self, EV_TIMEOUT, 0);
                } else if (s.ran == s.total) {
                    event_base_loopbreak(s.base);
                }
            },
            &chains[i]);
        ++state.scheduled;
        event_active(events[i], EV_TIMEOUT, 0);
    }
    event_base_dispatch(owned.base);
    return timing.stop(state.ran);
}

bool use_threads() {
    static const int once = evthread_use_pthreads();
    check(once, "evthread_use_pthreads");
    return true;
}

// A locked queue and one event the producer activates (event_active takes the
// base's lock and wakes the loop through its notification descriptor), only
// when the queue was empty: a careful user's coalescing, muxio's rule too.
struct Loop {
    Base owned;
    event* wakeup;
    std::mutex mutex;
    std::vector<std::function<void()>> incoming;
    std::vector<std::function<void()>> running;

    Loop()
        : owned{use_threads()},
          wakeup{event_new(
              owned.base, -1, 0,
              [](evutil_socket_t, short, void* arg) {
                  auto* self = static_cast<Loop*>(arg);
                  {
                      const std::lock_guard lock{self->mutex};
                      self->running.swap(self->incoming);
                  }
                  for (auto& callback : self->running) {
                      callback();
                  }
                  self->running.clear();
              },
              this)} {}
    ~Loop() { event_free(wakeup); }
    Loop(const Loop&) = delete;
    Loop& operator=(const Loop&) = delete;

    void post(std::function<void()> callback) {
        bool wake = false;
        {
            const std::lock_guard lock{mutex};
            wake = incoming.empty();
            incoming.push_back(std::move(callback));
        }
        if (wake) {
            event_active(wakeup, EV_TIMEOUT, 0);
        }
    }
    void run() { event_base_loop(owned.base, EVLOOP_NO_EXIT_ON_EMPTY); }
    void stop() { event_base_loopbreak(owned.base); }
};

}  // namespace

const Library library{.name = "libevent",
                      .variants = "",
                      .serve = serve,
                      .timers = timers,
                      .soon = soon,
                      .threadsafe = threadsafe_throughput<Loop>,
                      .latency = threadsafe_latency<Loop>};

}  // namespace bench
