// muxio::Reactor with its default selector (epoll here), callbacks capturing
// one or two pointers (stored inline, no allocation).
#include <chrono>
#include <cstdlib>
#include <exception>
#include <stdexcept>

#include "common.hpp"
#include "muxio/reactor.hpp"

namespace bench {
namespace {

class Server {
public:
    Server(muxio::Reactor& reactor, Mode mode) : reactor_{reactor}, mode_{mode} {}

    void listen(int listener) {
        reactor_.add_reader(listener, [this, listener] {
            for (int fd; (fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
                set_nodelay(fd);
                auto* connection = new Connection{fd, {}, {}, 0};
                reactor_.add_reader(fd, [this, connection] { apply(connection, on_readable(*connection, mode_)); });
            }
        });
    }

private:
    void apply(Connection* connection, Next next) {
        switch (next) {
            case Next::nothing:
                break;
            case Next::watch_writable:
                reactor_.add_writer(connection->fd,
                                    [this, connection] { apply(connection, on_writable(*connection)); });
                reactor_.remove_reader(connection->fd);
                break;
            case Next::watch_readable:
                reactor_.add_reader(connection->fd,
                                    [this, connection] { apply(connection, on_readable(*connection, mode_)); });
                reactor_.remove_writer(connection->fd);
                break;
            case Next::close:
                reactor_.remove_reader(connection->fd);
                reactor_.remove_writer(connection->fd);
                ::close(connection->fd);
                delete connection;
                break;
        }
    }

    muxio::Reactor& reactor_;
    Mode mode_;
};

void serve(Mode mode, const Options& options) {
    muxio::Reactor reactor;
    Server server{reactor, mode};
    server.listen(make_listener(options.port));
    for (;;) {
        reactor.run();
    }
}

Measurement timers(const TimerWorkload& workload) {
    muxio::Reactor reactor;
    struct State {
        muxio::Reactor* reactor;
        std::size_t fired = 0;
        std::size_t expected = 0;
    } state{&reactor, 0, workload.expected_fires()};
    std::vector<muxio::TimerHandle> handles;
    handles.reserve(workload.delays_ms.size());
    const Timing timing;
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
    return timing.stop(state.fired);
}

Measurement soon(const SoonWorkload& workload) {
    const SocketPair pair;
    muxio::Reactor reactor;
    reactor.add_reader(pair.first(), [] {});
    return soon_chains(
        workload, [&](auto&& callback) { reactor.call_soon(std::forward<decltype(callback)>(callback)); },
        [&] { reactor.stop(); }, [&] { reactor.run(); });
}

struct Loop {
    SocketPair pair;
    muxio::Reactor reactor;
    Loop() {
        reactor.add_reader(pair.first(), [] {});
    }
    template <class F>
    void post(F f) {
        reactor.call_soon_threadsafe(std::move(f));
    }
    void run() { reactor.run(); }
    void stop() { reactor.stop(); }
};

// The callback reference of the coroutine ping-pong: both readers stay
// registered for the whole run.
Measurement readable(std::size_t round_trips, const Options& /*options*/) {
    const SocketPair pair;
    muxio::Reactor reactor;
    reactor.set_exception_handler([](const std::exception_ptr&) { std::abort(); });  // else the ping-pong hangs
    std::size_t completed = 0;
    const Timing timing;
    reactor.add_reader(pair.second(), [fd = pair.second()] { write_byte(fd, read_byte(fd)); });
    reactor.add_reader(pair.first(), [&] {
        if (read_byte(pair.first()) != static_cast<char>(completed)) {
            throw std::runtime_error("ping: wrong byte echoed");
        }
        if (++completed == round_trips) {
            reactor.stop();
        } else {
            write_byte(pair.first(), static_cast<char>(completed));
        }
    });
    write_byte(pair.first(), 0);
    reactor.run();
    const Measurement measured = timing.stop(completed);
    reactor.remove_reader(pair.first());
    reactor.remove_reader(pair.second());
    return measured;
}

}  // namespace

const Library library{.name = "muxio",
                      .variants = "",
                      .serve = serve,
                      .timers = timers,
                      .soon = soon,
                      .threadsafe = threadsafe_throughput<Loop>,
                      .latency = threadsafe_latency<Loop>,
                      .readable = readable};

}  // namespace bench
