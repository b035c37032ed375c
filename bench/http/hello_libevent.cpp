// The HTTP hello server on libevent: plain events (no bufferevents, no
// evhttp), a reader and a writer event per connection, default event_base
// (epoll), the steps of hello_common.hpp.
#include <event2/event.h>
#include <sys/socket.h>
#include <unistd.h>

#include <stdexcept>

#include "bench_common.hpp"
#include "hello_common.hpp"

namespace hello {

namespace {

Scratch scratch;

struct EventConnection {
    Connection state;
    event* reader = nullptr;
    event* writer = nullptr;
};

void close_connection(EventConnection* connection) {
    event_free(connection->reader);
    event_free(connection->writer);
    ::close(connection->state.fd);
    delete connection;
}

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
            close_connection(connection);
            break;
    }
}

void on_read_event(evutil_socket_t /*fd*/, short /*what*/, void* arg) {
    auto* connection = static_cast<EventConnection*>(arg);
    apply(connection, on_readable(connection->state, scratch));
}

void on_write_event(evutil_socket_t /*fd*/, short /*what*/, void* arg) {
    auto* connection = static_cast<EventConnection*>(arg);
    apply(connection, on_writable(connection->state));
}

void on_acceptable(evutil_socket_t listener, short /*what*/, void* arg) {
    auto* base = static_cast<event_base*>(arg);
    for (;;) {
        const int fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return;
        }
        bench::set_nodelay(fd);
        auto* connection = new EventConnection{};
        connection->state.fd = fd;
        connection->reader = event_new(base, fd, EV_READ | EV_PERSIST, on_read_event, connection);
        connection->writer = event_new(base, fd, EV_WRITE | EV_PERSIST, on_write_event, connection);
        event_add(connection->reader, nullptr);
    }
}

}  // namespace

void serve_libevent(std::uint16_t port) {
    event_base* base = event_base_new();
    if (base == nullptr) {
        throw std::runtime_error("event_base_new failed");
    }
    const int listener = bench::make_listener(port);
    event* accept_event = event_new(base, listener, EV_READ | EV_PERSIST, on_acceptable, base);
    if (accept_event == nullptr || event_add(accept_event, nullptr) != 0) {
        throw std::runtime_error("event_add(listener) failed");
    }
    for (;;) {
        event_base_dispatch(base);
    }
}

}  // namespace hello
