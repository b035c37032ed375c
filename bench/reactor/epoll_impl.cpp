// The floor: a hand-written level-triggered epoll echo server. Per message it
// makes the system calls every other server makes (epoll_wait, read, write)
// and nothing else: data.ptr points at the connection, no lookup, no queue.
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <vector>

#include "bench_common.hpp"

namespace bench {

namespace {

char echo_buffer[echo_buffer_size];

using Connection = EchoConnection;

class EpollEcho {
public:
    explicit EpollEcho(int listener) : listener_{listener}, epfd_{::epoll_create1(EPOLL_CLOEXEC)} {
        if (epfd_ < 0) {
            fail_errno("epoll_create1");
        }
        epoll_event event{};
        event.events = EPOLLIN;
        event.data.ptr = nullptr;  // the listener
        if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, listener_, &event) == -1) {
            fail_errno("epoll_ctl(ADD listener)");
        }
    }

    [[noreturn]] void run() {
        std::array<epoll_event, 1024> events{};
        for (;;) {
            const int count = ::epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), -1);
            if (count < 0) {
                if (errno == EINTR) {
                    continue;
                }
                fail_errno("epoll_wait");
            }
            for (int i = 0; i < count; ++i) {
                const epoll_event& event = events[static_cast<std::size_t>(i)];
                auto* connection = static_cast<Connection*>(event.data.ptr);
                if (connection == nullptr) {
                    accept_all();
                } else if (connection->pending.empty()) {
                    on_readable(connection);
                } else {
                    on_writable(connection);
                }
            }
        }
    }

private:
    void control(int op, Connection* connection, std::uint32_t mask) {
        epoll_event event{};
        event.events = mask;
        event.data.ptr = connection;
        if (::epoll_ctl(epfd_, op, connection->fd, &event) == -1) {
            fail_errno("epoll_ctl");
        }
    }

    void accept_all() {
        for (;;) {
            const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                return;
            }
            set_nodelay(fd);
            control(EPOLL_CTL_ADD, new Connection{fd, {}, 0}, EPOLLIN);
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
                control(EPOLL_CTL_MOD, connection, EPOLLOUT);
                break;
            case EchoNext::watch_readable:
                control(EPOLL_CTL_MOD, connection, EPOLLIN);
                break;
            case EchoNext::close:
                close(connection);
                break;
        }
    }

    static void close(Connection* connection) {
        ::close(connection->fd);  // closing the last reference removes it from the epoll set
        delete connection;
    }

    int listener_;
    int epfd_;
};

}  // namespace

void echo_epoll(const EchoConfig& config) {
    EpollEcho server{make_listener(config.port)};
    server.run();
}

}  // namespace bench
