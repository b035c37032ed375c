// The muxio side of every reactor benchmark: muxio::Reactor with its default
// selector (epoll here), callbacks capturing one or two pointers (stored
// inline, no allocation).
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "bench_common.hpp"
#include "muxio/reactor.hpp"

namespace bench {

// ----- Echo server -------------------------------------------------------------------

namespace {

char echo_buffer[echo_buffer_size];

class MuxioEcho {
public:
    explicit MuxioEcho(muxio::Reactor& reactor) : reactor_{reactor} {}

    void listen(int fd) {
        reactor_.add_reader(fd, [this, fd] { accept_all(fd); });
    }

private:
    using Connection = EchoConnection;

    void accept_all(int listener) {
        for (;;) {
            const int fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                return;  // EAGAIN: accepted them all (other errors: the client retries)
            }
            set_nodelay(fd);
            auto* connection = new Connection{fd, {}, 0};
            reactor_.add_reader(fd, [this, connection] { on_readable(connection); });
        }
    }

    void on_readable(Connection* connection) {
        apply(connection, echo_on_readable(*connection, echo_buffer, sizeof echo_buffer));
    }

    void on_writable(Connection* connection) { apply(connection, echo_on_writable(*connection)); }

    void apply(Connection* connection, EchoNext next) {
        switch (next) {
            case EchoNext::nothing:
                break;
            case EchoNext::watch_writable:
                reactor_.add_writer(connection->fd, [this, connection] { on_writable(connection); });
                reactor_.remove_reader(connection->fd);
                break;
            case EchoNext::watch_readable:
                reactor_.add_reader(connection->fd, [this, connection] { on_readable(connection); });
                reactor_.remove_writer(connection->fd);
                break;
            case EchoNext::close:
                close(connection);
                break;
        }
    }

    void close(Connection* connection) {
        reactor_.remove_reader(connection->fd);
        reactor_.remove_writer(connection->fd);
        ::close(connection->fd);
        delete connection;
    }

    muxio::Reactor& reactor_;
};

}  // namespace

void echo_muxio(const EchoConfig& config) {
    muxio::Reactor reactor;
    MuxioEcho server{reactor};
    server.listen(make_listener(config.port));
    for (;;) {
        reactor.run();
    }
}

// ----- Timers ------------------------------------------------------------------------------

namespace {

struct TimerState {
    muxio::Reactor* reactor;
    std::size_t fired = 0;
    std::size_t expected = 0;
};

}  // namespace

Measurement timers_muxio(const TimerWorkload& workload) {
    muxio::Reactor reactor;
    TimerState state{&reactor, 0, workload.expected_fires()};
    std::vector<muxio::TimerHandle> handles;
    handles.reserve(workload.delays_ms.size());

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    for (const std::uint32_t ms : workload.delays_ms) {
        handles.push_back(reactor.call_later(std::chrono::milliseconds{ms}, [s = &state] {
            if (++s->fired == s->expected) {
                s->reactor->stop();
            }
        }));
    }
    for (const std::uint32_t index : workload.cancel_order) {
        handles[index].cancel();
    }
    if (state.expected > 0) {
        reactor.run();
    }
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.fired};
}

// ----- call_soon -----------------------------------------------------------------------------

namespace {

struct SoonState {
    muxio::Reactor* reactor;
    std::size_t scheduled = 0;
    std::size_t ran = 0;
    std::size_t total = 0;

    void step() {
        ++ran;
        if (scheduled < total) {
            ++scheduled;
            reactor->call_soon([this] { step(); });
        } else if (ran == total) {
            reactor->stop();
        }
    }
};

}  // namespace

Measurement soon_muxio(const SoonWorkload& workload) {
    const IdlePair pair;
    muxio::Reactor reactor;
    reactor.add_reader(pair.idle(), [] {});
    SoonState state{&reactor, 0, 0, workload.total};

    const std::int64_t wall_start = wall_ns();
    const std::int64_t cpu_start = process_cpu_ns();
    for (std::size_t i = 0; i < workload.chains; ++i) {
        ++state.scheduled;
        reactor.call_soon([s = &state] { s->step(); });
    }
    reactor.run();
    return {wall_ns() - wall_start, process_cpu_ns() - cpu_start, state.ran};
}

// ----- call_soon_threadsafe -------------------------------------------------------------------

namespace {

// What each cross-thread callback captures: one pointer, as with the peers.
struct ThreadsafeState {
    muxio::Reactor* reactor;
    std::size_t total = 0;
    std::size_t ran = 0;
    std::int64_t last_ns = 0;

    void step() {
        if (++ran == total) {
            last_ns = wall_ns();
            reactor->stop();
        }
    }
};

}  // namespace

Measurement threadsafe_muxio(const ThreadsafeWorkload& workload) {
    pin_this_thread(workload.loop_core);
    const IdlePair pair;
    muxio::Reactor reactor;
    reactor.add_reader(pair.idle(), [] {});
    ThreadsafeState state{&reactor, workload.total};
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
            reactor.call_soon_threadsafe([s = &state] { s->step(); });
        }
    }};
    reactor.call_soon([&running] { running.store(true, std::memory_order_release); });
    reactor.run();
    const std::int64_t cpu_end = process_cpu_ns();
    producer.join();
    return {state.last_ns - first_ns, cpu_end - cpu_start, state.ran};
}

std::vector<std::int64_t> latency_muxio(const LatencyWorkload& workload) {
    pin_this_thread(workload.loop_core);
    const IdlePair pair;
    muxio::Reactor reactor;
    reactor.add_reader(pair.idle(), [] {});
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
            reactor.call_soon_threadsafe([s = &state, sent] { s->record(sent); });
            state.wait();
            spin_until(wall_ns() + workload.gap_ns);
        }
        reactor.stop_threadsafe();
    }};
    reactor.call_soon([&running] { running.store(true, std::memory_order_release); });
    reactor.run();
    producer.join();
    return std::move(state.latencies);
}

}  // namespace bench
