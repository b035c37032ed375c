// libuv: uv_tcp for the servers (uv_try_write first, uv_write for what is
// left, reading stopped meanwhile), uv_timer for timers. libuv has no
// call_soon: its equivalent is built the way uvloop builds one (a queue
// drained by a uv_idle handle); call_soon_threadsafe is a locked queue plus
// uv_async_send, which coalesces wakeups by itself.
#include <uv.h>

#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "common.hpp"

namespace bench {
namespace {

void check(int status, const char* what) {
    if (status < 0) {
        throw std::runtime_error(std::string{what} + ": " + uv_strerror(status));
    }
}

Mode mode = Mode::echo;

struct UvConnection {
    uv_tcp_t tcp;  // first member: the handle's address is the connection's
    uv_write_t write_request;
    std::string carry;
    std::string pending;
};

void on_alloc(uv_handle_t* /*handle*/, std::size_t /*suggested*/, uv_buf_t* buf) {
    // One buffer for every connection: on_read consumes it before returning.
    *buf = uv_buf_init(scratch.input.data(), static_cast<unsigned>(scratch.input.size()));
}

void close_connection(UvConnection* connection) {
    uv_close(reinterpret_cast<uv_handle_t*>(&connection->tcp),
             [](uv_handle_t* handle) { delete reinterpret_cast<UvConnection*>(handle); });
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* connection = reinterpret_cast<UvConnection*>(stream);
    if (nread <= 0) {
        if (nread < 0) {
            close_connection(connection);
        }
        return;
    }
    const auto answer = respond(mode, connection->carry, {buf->base, static_cast<std::size_t>(nread)}, scratch.output);
    if (!answer || answer->empty()) {
        if (!answer) {
            close_connection(connection);
        }
        return;
    }
    uv_buf_t out = uv_buf_init(const_cast<char*>(answer->data()), static_cast<unsigned>(answer->size()));
    const int sent = uv_try_write(stream, &out, 1);
    if (sent == static_cast<int>(answer->size())) {
        return;
    }
    if (sent < 0 && sent != UV_EAGAIN) {
        close_connection(connection);
        return;
    }
    connection->pending.assign(answer->substr(static_cast<std::size_t>(std::max(sent, 0))));
    uv_read_stop(stream);
    uv_buf_t rest = uv_buf_init(connection->pending.data(), static_cast<unsigned>(connection->pending.size()));
    connection->write_request.data = connection;
    check(uv_write(&connection->write_request, stream, &rest, 1,
                   [](uv_write_t* request, int status) {
                       auto* self = static_cast<UvConnection*>(request->data);
                       self->pending.clear();
                       if (status < 0) {
                           close_connection(self);
                       } else {
                           uv_read_start(reinterpret_cast<uv_stream_t*>(&self->tcp), on_alloc, on_read);
                       }
                   }),
          "uv_write");
}

void serve(Mode served, const Options& options) {
    mode = served;
    uv_loop_t* loop = uv_default_loop();
    static uv_tcp_t server;
    check(uv_tcp_init(loop, &server), "uv_tcp_init");
    sockaddr_in address{};
    check(uv_ip4_addr("127.0.0.1", options.port, &address), "uv_ip4_addr");
    check(uv_tcp_bind(&server, reinterpret_cast<const sockaddr*>(&address), 0), "uv_tcp_bind");
    check(uv_listen(reinterpret_cast<uv_stream_t*>(&server), backlog,
                    [](uv_stream_t* listener, int status) {
                        if (status < 0) {
                            return;
                        }
                        auto* connection = new UvConnection{};
                        uv_tcp_init(listener->loop, &connection->tcp);
                        if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(&connection->tcp)) != 0) {
                            close_connection(connection);
                            return;
                        }
                        uv_tcp_nodelay(&connection->tcp, 1);
                        uv_read_start(reinterpret_cast<uv_stream_t*>(&connection->tcp), on_alloc, on_read);
                    }),
          "uv_listen");
    for (;;) {
        uv_run(loop, UV_RUN_DEFAULT);
    }
}

// A loop of its own watching the idle end of a socket pair. finish() closes
// every handle still in it (their memory must still be alive then) and the
// loop itself.
struct OwnedLoop {
    SocketPair pair;
    uv_loop_t loop{};
    uv_poll_t idle{};
    bool finished = false;

    explicit OwnedLoop(bool watch_idle = true) {
        check(uv_loop_init(&loop), "uv_loop_init");
        if (watch_idle) {
            check(uv_poll_init(&loop, &idle, pair.first()), "uv_poll_init");
            check(uv_poll_start(&idle, UV_READABLE, [](uv_poll_t*, int, int) {}), "uv_poll_start");
        }
    }
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

Measurement timers(const TimerWorkload& workload) {
    // The handles are the caller's memory in libuv: allocated (not touched)
    // before the clock starts, as the other libraries' per-timer objects are.
    const std::size_t count = workload.delays_ms.size();
    const std::unique_ptr<uv_timer_t[]> handles{new uv_timer_t[count]};
    std::size_t fired = 0;
    OwnedLoop owned{false};
    const Timing timing;
    for (std::size_t i = 0; i < count; ++i) {
        uv_timer_init(&owned.loop, &handles[i]);
        handles[i].data = &fired;
        uv_timer_start(
            &handles[i], [](uv_timer_t* timer) { ++*static_cast<std::size_t*>(timer->data); }, workload.delays_ms[i],
            0);
    }
    for (const std::uint32_t index : workload.cancel_order) {
        uv_timer_stop(&handles[index]);
    }
    uv_run(&owned.loop, UV_RUN_DEFAULT);
    const Measurement measured = timing.stop(fired);
    owned.finish();
    return measured;
}

// uvloop's call_soon: a FIFO, and a uv_idle handle started while it is not
// empty, so the loop polls without blocking and drains it once per iteration.
class SoonQueue {
public:
    explicit SoonQueue(uv_loop_t* loop) {
        uv_idle_init(loop, &idle_);
        idle_.data = this;
    }
    void call_soon(std::function<void()> callback) {
        ready_.push_back(std::move(callback));
        if (uv_is_active(reinterpret_cast<uv_handle_t*>(&idle_)) == 0) {
            uv_idle_start(&idle_, [](uv_idle_t* idle) {
                auto* self = static_cast<SoonQueue*>(idle->data);
                self->running_.swap(self->ready_);
                for (auto& queued : self->running_) {
                    queued();
                }
                self->running_.clear();
                if (self->ready_.empty()) {
                    uv_idle_stop(idle);
                }
            });
        }
    }

private:
    uv_idle_t idle_{};
    std::vector<std::function<void()>> ready_;
    std::vector<std::function<void()>> running_;
};

Measurement soon(const SoonWorkload& workload) {
    OwnedLoop owned;
    SoonQueue queue{&owned.loop};
    const Measurement measured = soon_chains(
        workload, [&](auto&& callback) { queue.call_soon(std::forward<decltype(callback)>(callback)); },
        [&] { uv_stop(&owned.loop); }, [&] { uv_run(&owned.loop, UV_RUN_DEFAULT); });
    owned.finish();
    return measured;
}

// uvloop's call_soon_threadsafe.
struct Loop {
    OwnedLoop owned;
    uv_async_t async{};
    std::mutex mutex;
    std::vector<std::function<void()>> incoming;
    std::vector<std::function<void()>> running;

    Loop() {
        check(uv_async_init(&owned.loop, &async,
                            [](uv_async_t* handle) {
                                auto* self = static_cast<Loop*>(handle->data);
                                {
                                    const std::lock_guard lock{self->mutex};
                                    self->running.swap(self->incoming);
                                }
                                for (auto& callback : self->running) {
                                    callback();
                                }
                                self->running.clear();
                            }),
              "uv_async_init");
        async.data = this;
    }
    ~Loop() { owned.finish(); }
    Loop(const Loop&) = delete;
    Loop& operator=(const Loop&) = delete;
    void post(std::function<void()> callback) {
        {
            const std::lock_guard lock{mutex};
            incoming.push_back(std::move(callback));
        }
        uv_async_send(&async);
    }
    void run() { uv_run(&owned.loop, UV_RUN_DEFAULT); }
    void stop() { uv_stop(&owned.loop); }
};

}  // namespace

const Library library{.name = "libuv",
                      .variants = "",
                      .serve = serve,
                      .timers = timers,
                      .soon = soon,
                      .threadsafe = threadsafe_throughput<Loop>,
                      .latency = threadsafe_latency<Loop>};

}  // namespace bench
