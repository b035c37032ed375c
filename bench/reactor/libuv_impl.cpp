// The libuv side: uv_tcp for the echo server (uv_try_write first, uv_write
// for what is left), uv_timer for timers. libuv has no call_soon: its
// equivalent is built the way uvloop builds one (a queue drained by a uv_idle
// handle); call_soon_threadsafe is a locked queue plus uv_async_send.
#include <uv.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench_common.hpp"

namespace bench {

namespace {

void check(int status, const char* what) {
    if (status < 0) {
        throw std::runtime_error(std::string{what} + ": " + uv_strerror(status));
    }
}

// ----- Echo server ------------------------------------------------------------------

char echo_buffer[echo_buffer_size];

struct Connection {
    uv_tcp_t tcp;  // first member: the handle's address is the connection's
    uv_write_t write_request;
    std::vector<char> pending;
};

void on_alloc(uv_handle_t* /*handle*/, std::size_t /*suggested*/, uv_buf_t* buf) {
    // One buffer for every connection: on_read consumes it before returning.
    *buf = uv_buf_init(echo_buffer, sizeof echo_buffer);
}

void on_closed(uv_handle_t* handle) {
    delete reinterpret_cast<Connection*>(handle);
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);

void on_written(uv_write_t* request, int status) {
    auto* connection = static_cast<Connection*>(request->data);
    connection->pending.clear();
    if (status < 0) {
        uv_close(reinterpret_cast<uv_handle_t*>(&connection->tcp), on_closed);
        return;
    }
    uv_read_start(reinterpret_cast<uv_stream_t*>(&connection->tcp), on_alloc, on_read);
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* connection = reinterpret_cast<Connection*>(stream);
    if (nread <= 0) {
        if (nread < 0) {
            uv_close(reinterpret_cast<uv_handle_t*>(stream), on_closed);
        }
        return;
    }
    uv_buf_t out = uv_buf_init(buf->base, static_cast<unsigned>(nread));
    const int sent = uv_try_write(stream, &out, 1);
    if (sent == nread) {
        return;
    }
    if (sent < 0 && sent != UV_EAGAIN) {
        uv_close(reinterpret_cast<uv_handle_t*>(stream), on_closed);
        return;
    }
    const auto taken = static_cast<std::size_t>(std::max(sent, 0));
    connection->pending.assign(buf->base + taken, buf->base + nread);
    uv_read_stop(stream);
    uv_buf_t rest = uv_buf_init(connection->pending.data(), static_cast<unsigned>(connection->pending.size()));
    connection->write_request.data = connection;
    check(uv_write(&connection->write_request, stream, &rest, 1, on_written), "uv_write");
}

void on_connection(uv_stream_t* server, int status) {
    if (status < 0) {
        return;
    }
    auto* connection = new Connection{};
    uv_tcp_init(server->loop, &connection->tcp);
    if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&connection->tcp)) != 0) {
        uv_close(reinterpret_cast<uv_handle_t*>(&connection->tcp), on_closed);
        return;
    }
    uv_tcp_nodelay(&connection->tcp, 1);
    uv_read_start(reinterpret_cast<uv_stream_t*>(&connection->tcp), on_alloc, on_read);
}

}  // namespace

void echo_libuv(const EchoConfig& config) {
    uv_loop_t* loop = uv_default_loop();
    uv_tcp_t server;
    check(uv_tcp_init(loop, &server), "uv_tcp_init");
    sockaddr_in address{};
    check(uv_ip4_addr("127.0.0.1", config.port, &address), "uv_ip4_addr");
    check(uv_tcp_bind(&server, reinterpret_cast<const sockaddr*>(&address), 0), "uv_tcp_bind");
    check(uv_listen(reinterpret_cast<uv_stream_t*>(&server), echo_backlog, on_connection), "uv_listen");
    for (;;) {
        uv_run(loop, UV_RUN_DEFAULT);
    }
}

// ----- Timers ---------------------------------------------------------------------------

namespace {

struct TimerState {
    std::size_t fired = 0;
};

void on_timer(uv_timer_t* timer) {
    ++static_cast<TimerState*>(timer->data)->fired;
}

// A loop of its own. finish() closes every handle still in it (their memory
// must still be alive then) and the loop itself.
struct OwnedLoop {
    uv_loop_t loop{};
    bool finished = false;

    OwnedLoop() { check(uv_loop_init(&loop), "uv_loop_init"); }
    ~OwnedLoop() { finish(); }
    OwnedLoop(const OwnedLoop&) = delete;
    OwnedLoop& operator=(const OwnedLoop&) = delete;

    void finish() {
        if (std::exchange(finished, true)) {
            return;
        }
        uv_walk(
            &loop,
            [](uv_handle_t* handle, void*) {
                if (uv_is_closing(handle) == 0) {
                    uv_close(handle, nullptr);
                }
            },
            nullptr);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
    }
};

// Watches the idle descriptor (see IdlePair) for reading.
void watch_idle(uv_loop_t* loop, uv_poll_t& poll, int fd) {
    check(uv_poll_init(loop, &poll, fd), "uv_poll_init");
    check(uv_poll_start(&poll, UV_READABLE, [](uv_poll_t*, int, int) {}), "uv_poll_start");
}

// Makes `flag` true from inside the loop once it runs.
void signal_running(uv_loop_t* loop, uv_timer_t& timer, std::atomic<bool>& flag) {
    uv_timer_init(loop, &timer);
    timer.data = &flag;
    uv_timer_start(
        &timer,
        [](uv_timer_t* self) { static_cast<std::atomic<bool>*>(self->data)->store(true, std::memory_order_release); },
        0, 0);
}

}  // namespace

Measurement timers_libuv(const TimerWorkload& workload) {
    // The handles are the caller's memory in libuv: allocated (not touched)
    // before the clock starts, as the other libraries' per-timer objects are.
    const std::size_t count = workload.delays_ms.size();
    std::unique_ptr<uv_timer_t[]> timers{new uv_timer_t[count]};
    TimerState state;
    Measurement result;
    {
        OwnedLoop owned;
        uv_loop_t* loop = &owned.loop;
        const std::int64_t wall_start = wall_ns();
        const std::int64_t cpu_start = process_cpu_ns();
        for (std::size_t i = 0; i < count; ++i) {
            uv_timer_init(loop, &timers[i]);
            timers[i].data = &state;
            uv_timer_start(&timers[i], on_timer, workload.delays_ms[i], 0);
        }
        for (const std::uint32_t index : workload.cancel_order) {
            uv_timer_stop(&timers[index]);
        }
        uv_run(loop, UV_RUN_DEFAULT);
        result = {wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.fired};
        owned.finish();
    }
    return result;
}

// ----- call_soon ------------------------------------------------------------------------------

namespace {

// uvloop's call_soon: a FIFO of callbacks, and a uv_idle handle started while
// it is not empty so the loop polls without blocking and drains it once per
// iteration (callbacks queued meanwhile wait for the next one).
class SoonQueue {
public:
    explicit SoonQueue(uv_loop_t* loop) {
        uv_idle_init(loop, &idle_);
        idle_.data = this;
    }

    void call_soon(std::function<void()> callback) {
        ready_.push_back(std::move(callback));
        if (uv_is_active(reinterpret_cast<uv_handle_t*>(&idle_)) == 0) {
            uv_idle_start(&idle_, on_idle);
        }
    }

private:
    static void on_idle(uv_idle_t* idle) {
        auto* self = static_cast<SoonQueue*>(idle->data);
        self->running_.swap(self->ready_);
        for (auto& callback : self->running_) {
            callback();
        }
        self->running_.clear();
        if (self->ready_.empty()) {
            uv_idle_stop(idle);
        }
    }

    uv_idle_t idle_{};
    std::vector<std::function<void()>> ready_;
    std::vector<std::function<void()>> running_;
};

struct SoonState {
    SoonQueue* queue;
    uv_loop_t* loop;
    std::size_t scheduled = 0;
    std::size_t ran = 0;
    std::size_t total = 0;

    void step() {
        ++ran;
        if (scheduled < total) {
            ++scheduled;
            queue->call_soon([this] { step(); });
        } else if (ran == total) {
            uv_stop(loop);
        }
    }
};

}  // namespace

Measurement soon_libuv(const SoonWorkload& workload) {
    const IdlePair pair;
    OwnedLoop owned;
    uv_poll_t idle{};
    watch_idle(&owned.loop, idle, pair.idle());
    SoonQueue queue{&owned.loop};
    SoonState state{&queue, &owned.loop, 0, 0, workload.total};

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    for (std::size_t i = 0; i < workload.chains; ++i) {
        ++state.scheduled;
        queue.call_soon([s = &state] { s->step(); });
    }
    uv_run(&owned.loop, UV_RUN_DEFAULT);
    const Measurement result{wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.ran};
    owned.finish();
    return result;
}

// ----- call_soon_threadsafe -------------------------------------------------------------------

namespace {

// uvloop's call_soon_threadsafe: a locked queue and uv_async_send, which
// coalesces wakeups by itself.
class ThreadsafeQueue {
public:
    explicit ThreadsafeQueue(uv_loop_t* loop) {
        check(uv_async_init(loop, &async_, on_async), "uv_async_init");
        async_.data = this;
    }

    void call_soon_threadsafe(std::function<void()> callback) {
        {
            std::lock_guard lock{mutex_};
            incoming_.push_back(std::move(callback));
        }
        uv_async_send(&async_);
    }

private:
    static void on_async(uv_async_t* async) {
        auto* self = static_cast<ThreadsafeQueue*>(async->data);
        {
            std::lock_guard lock{self->mutex_};
            self->running_.swap(self->incoming_);
        }
        for (auto& callback : self->running_) {
            callback();
        }
        self->running_.clear();
    }

    uv_async_t async_{};
    std::mutex mutex_;
    std::vector<std::function<void()>> incoming_;
    std::vector<std::function<void()>> running_;
};

struct ThreadsafeState {
    uv_loop_t* loop;
    std::size_t total = 0;
    std::size_t ran = 0;
    std::int64_t last_ns = 0;

    void step() {
        if (++ran == total) {
            last_ns = wall_ns();
            uv_stop(loop);
        }
    }
};

}  // namespace

Measurement threadsafe_libuv(const ThreadsafeWorkload& workload) {
    pin_this_thread(workload.loop_core);
    const IdlePair pair;
    OwnedLoop owned;
    uv_poll_t idle{};
    watch_idle(&owned.loop, idle, pair.idle());
    ThreadsafeQueue queue{&owned.loop};
    ThreadsafeState state{&owned.loop, workload.total};
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
    uv_timer_t start{};
    signal_running(&owned.loop, start, running);
    uv_run(&owned.loop, UV_RUN_DEFAULT);
    const std::int64_t cpu_end = process_cpu_ns();
    producer.join();
    owned.finish();
    return {state.last_ns - first_ns, cpu_end - cpu_start, state.ran};
}

std::vector<std::int64_t> latency_libuv(const LatencyWorkload& workload) {
    pin_this_thread(workload.loop_core);
    const IdlePair pair;
    OwnedLoop owned;
    uv_poll_t idle{};
    watch_idle(&owned.loop, idle, pair.idle());
    ThreadsafeQueue queue{&owned.loop};
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
        queue.call_soon_threadsafe([loop = &owned.loop] { uv_stop(loop); });
    }};
    uv_timer_t start{};
    signal_running(&owned.loop, start, running);
    uv_run(&owned.loop, UV_RUN_DEFAULT);
    producer.join();
    owned.finish();
    return std::move(state.latencies);
}

}  // namespace bench
