// The libevent side: plain events (event_assign into the caller's memory, no
// bufferevents) on an event_base with default settings (epoll here). call_soon
// is event_active() on a callback's own event; call_soon_threadsafe is a
// locked queue plus event_active() from the producer, on a base made
// thread-safe with evthread_use_pthreads().
#include <event2/event.h>
#include <event2/thread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.hpp"

namespace bench {

namespace {

void check(int status, const char* what) {
    if (status < 0) {
        throw std::runtime_error(std::string{what} + " failed");
    }
}

// An event_base that is freed when it goes.
struct OwnedBase {
    event_base* base = nullptr;
    OwnedBase() : base{event_base_new()} {
        if (base == nullptr) {
            throw std::runtime_error("event_base_new failed");
        }
    }
    ~OwnedBase() { event_base_free(base); }
    OwnedBase(const OwnedBase&) = delete;
    OwnedBase& operator=(const OwnedBase&) = delete;
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

void on_nothing(evutil_socket_t /*fd*/, short /*what*/, void* /*arg*/) {}

// Watches the idle descriptor (see IdlePair) for reading while it lives.
class IdleWatch {
public:
    IdleWatch(event_base* base, int fd) : event_{event_new(base, fd, EV_READ | EV_PERSIST, on_nothing, nullptr)} {
        check(event_add(event_, nullptr), "event_add");
    }
    ~IdleWatch() { event_free(event_); }
    IdleWatch(const IdleWatch&) = delete;
    IdleWatch& operator=(const IdleWatch&) = delete;

private:
    event* event_;
};

// ----- Echo server ---------------------------------------------------------------------

char echo_buffer[echo_buffer_size];

struct Connection {
    int fd;
    event* reader;
    event* writer;
    std::vector<char> pending;
    std::size_t written = 0;
};

void close_connection(Connection* connection) {
    event_free(connection->reader);
    event_free(connection->writer);
    ::close(connection->fd);
    delete connection;
}

void on_readable(evutil_socket_t fd, short /*what*/, void* arg) {
    auto* connection = static_cast<Connection*>(arg);
    const ssize_t got = ::read(fd, echo_buffer, sizeof echo_buffer);
    if (got <= 0) {
        if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
            close_connection(connection);
        }
        return;
    }
    const ssize_t sent = ::write(fd, echo_buffer, static_cast<std::size_t>(got));
    if (sent == got) {
        return;
    }
    if (sent < 0 && errno != EAGAIN) {
        close_connection(connection);
        return;
    }
    const auto taken = static_cast<std::size_t>(std::max<ssize_t>(sent, 0));
    connection->pending.assign(echo_buffer + taken, echo_buffer + got);
    connection->written = 0;
    event_del(connection->reader);
    event_add(connection->writer, nullptr);
}

void on_writable(evutil_socket_t fd, short /*what*/, void* arg) {
    auto* connection = static_cast<Connection*>(arg);
    const std::size_t left = connection->pending.size() - connection->written;
    const ssize_t sent = ::write(fd, connection->pending.data() + connection->written, left);
    if (sent < 0) {
        if (errno != EAGAIN) {
            close_connection(connection);
        }
        return;
    }
    connection->written += static_cast<std::size_t>(sent);
    if (connection->written == connection->pending.size()) {
        connection->pending.clear();
        event_del(connection->writer);
        event_add(connection->reader, nullptr);
    }
}

void on_acceptable(evutil_socket_t listener, short /*what*/, void* arg) {
    auto* base = static_cast<event_base*>(arg);
    for (;;) {
        const int fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return;
        }
        set_nodelay(fd);
        auto* connection = new Connection{fd, nullptr, nullptr, {}, 0};
        connection->reader = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, connection);
        connection->writer = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, connection);
        event_add(connection->reader, nullptr);
    }
}

}  // namespace

void echo_libevent(const EchoConfig& config) {
    OwnedBase owned;
    const int listener = make_listener(config.port);
    event* accept_event = event_new(owned.base, listener, EV_READ | EV_PERSIST, on_acceptable, owned.base);
    check(event_add(accept_event, nullptr), "event_add");
    for (;;) {
        event_base_dispatch(owned.base);
    }
}

// ----- Timers --------------------------------------------------------------------------

namespace {

struct TimerState {
    std::size_t fired = 0;
};

void on_timer(evutil_socket_t /*fd*/, short /*what*/, void* arg) {
    ++static_cast<TimerState*>(arg)->fired;
}

}  // namespace

Measurement timers_libevent(const TimerWorkload& workload) {
    const std::size_t count = workload.delays_ms.size();
    EventArray events{count};
    TimerState state;
    OwnedBase owned;

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    for (std::size_t i = 0; i < count; ++i) {
        evtimer_assign(events[i], owned.base, on_timer, &state);
        const timeval delay{static_cast<time_t>(workload.delays_ms[i] / 1000),
                            static_cast<suseconds_t>(workload.delays_ms[i] % 1000) * 1000};
        evtimer_add(events[i], &delay);
    }
    for (const std::uint32_t index : workload.cancel_order) {
        evtimer_del(events[index]);
    }
    event_base_dispatch(owned.base);  // returns when no event is pending
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.fired};
}

// ----- call_soon ----------------------------------------------------------------------------

namespace {

// Each chain owns one event and re-activates it from its callback. libevent
// runs an event activated during dispatch in the same pass, without polling
// in between.
struct SoonState {
    event_base* base;
    std::size_t scheduled = 0;
    std::size_t ran = 0;
    std::size_t total = 0;
};

struct Chain {
    SoonState* state;
    event* self;
};

void on_soon(evutil_socket_t /*fd*/, short /*what*/, void* arg) {
    auto* chain = static_cast<Chain*>(arg);
    SoonState& state = *chain->state;
    ++state.ran;
    if (state.scheduled < state.total) {
        ++state.scheduled;
        event_active(chain->self, EV_TIMEOUT, 0);
    } else if (state.ran == state.total) {
        event_base_loopbreak(state.base);
    }
}

}  // namespace

Measurement soon_libevent(const SoonWorkload& workload) {
    const IdlePair pair;
    EventArray events{workload.chains};
    std::vector<Chain> chains(workload.chains);
    OwnedBase owned;
    const IdleWatch idle{owned.base, pair.idle()};
    SoonState state{owned.base, 0, 0, workload.total};

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    for (std::size_t i = 0; i < workload.chains; ++i) {
        chains[i] = {&state, events[i]};
        event_assign(events[i], owned.base, -1, 0, on_soon, &chains[i]);
        ++state.scheduled;
        event_active(events[i], EV_TIMEOUT, 0);
    }
    event_base_dispatch(owned.base);
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.ran};
}

// ----- call_soon_threadsafe -------------------------------------------------------------------

namespace {

void use_threads() {
    static const int once = evthread_use_pthreads();
    check(once, "evthread_use_pthreads");
}

// A locked queue and one event the producer activates (event_active takes the
// base's lock and wakes the loop through its notification descriptor). The
// producer activates only when the queue was empty: a careful user's
// coalescing, the same rule muxio applies inside.
class ThreadsafeQueue {
public:
    explicit ThreadsafeQueue(event_base* base) : event_{event_new(base, -1, 0, on_wakeup, this)} {}
    ~ThreadsafeQueue() { event_free(event_); }
    ThreadsafeQueue(const ThreadsafeQueue&) = delete;
    ThreadsafeQueue& operator=(const ThreadsafeQueue&) = delete;

    void call_soon_threadsafe(std::function<void()> callback) {
        bool wake = false;
        {
            std::lock_guard lock{mutex_};
            wake = incoming_.empty();
            incoming_.push_back(std::move(callback));
        }
        if (wake) {
            event_active(event_, EV_TIMEOUT, 0);
        }
    }

private:
    static void on_wakeup(evutil_socket_t /*fd*/, short /*what*/, void* arg) {
        auto* self = static_cast<ThreadsafeQueue*>(arg);
        {
            std::lock_guard lock{self->mutex_};
            self->running_.swap(self->incoming_);
        }
        for (auto& callback : self->running_) {
            callback();
        }
        self->running_.clear();
    }

    event* event_;
    std::mutex mutex_;
    std::vector<std::function<void()>> incoming_;
    std::vector<std::function<void()>> running_;
};

struct ThreadsafeState {
    event_base* base;
    std::size_t total = 0;
    std::size_t ran = 0;
    std::int64_t last_ns = 0;

    void step() {
        if (++ran == total) {
            last_ns = wall_ns();
            event_base_loopbreak(base);
        }
    }
};

void on_running(evutil_socket_t /*fd*/, short /*what*/, void* arg) {
    static_cast<std::atomic<bool>*>(arg)->store(true, std::memory_order_release);
}

}  // namespace

Measurement threadsafe_libevent(const ThreadsafeWorkload& workload) {
    use_threads();
    pin_this_thread(workload.loop_core);
    const IdlePair pair;
    OwnedBase owned;
    const IdleWatch idle{owned.base, pair.idle()};
    ThreadsafeQueue queue{owned.base};
    ThreadsafeState state{owned.base, workload.total};
    std::atomic<bool> running{false};
    std::int64_t first_ns = 0;
    std::int64_t cpu_start = 0;

    std::thread producer{[&] {
        pin_this_thread(workload.producer_core);
        while (!running.load(std::memory_order_acquire)) {
        }
        cpu_start = process_cpu_ns();
        first_ns = wall_ns();
        for (std::size_t i = 0; i < workload.total; ++i) {
            queue.call_soon_threadsafe([s = &state] { s->step(); });
        }
    }};
    check(event_base_once(owned.base, -1, EV_TIMEOUT, on_running, &running, nullptr), "event_base_once");
    event_base_loop(owned.base, EVLOOP_NO_EXIT_ON_EMPTY);
    const std::int64_t cpu_end = process_cpu_ns();
    producer.join();
    return {state.last_ns - first_ns, cpu_end - cpu_start, state.ran};
}

std::vector<std::int64_t> latency_libevent(const LatencyWorkload& workload) {
    use_threads();
    pin_this_thread(workload.loop_core);
    const IdlePair pair;
    OwnedBase owned;
    const IdleWatch idle{owned.base, pair.idle()};
    ThreadsafeQueue queue{owned.base};
    LatencyState state;
    state.latencies.reserve(workload.samples);
    std::atomic<bool> running{false};

    std::thread producer{[&] {
        pin_this_thread(workload.producer_core);
        while (!running.load(std::memory_order_acquire)) {
        }
        for (std::size_t i = 0; i < workload.samples; ++i) {
            state.done.store(false, std::memory_order_relaxed);
            const std::int64_t sent = wall_ns();
            queue.call_soon_threadsafe([s = &state, sent] { s->record(sent); });
            state.wait();
            spin_until(wall_ns() + workload.gap_ns);
        }
        queue.call_soon_threadsafe([base = owned.base] { event_base_loopbreak(base); });
    }};
    check(event_base_once(owned.base, -1, EV_TIMEOUT, on_running, &running, nullptr), "event_base_once");
    event_base_loop(owned.base, EVLOOP_NO_EXIT_ON_EMPTY);
    producer.join();
    return std::move(state.latencies);
}

}  // namespace bench
