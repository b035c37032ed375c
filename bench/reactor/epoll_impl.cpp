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

struct Connection {
    int fd;
    std::vector<char> pending;  // what the socket did not take yet
    std::size_t written = 0;
};

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
        const ssize_t got = ::read(connection->fd, echo_buffer, sizeof echo_buffer);
        if (got <= 0) {
            if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(connection);
            }
            return;
        }
        const ssize_t sent = ::write(connection->fd, echo_buffer, static_cast<std::size_t>(got));
        if (sent == got) {
            return;
        }
        if (sent < 0 && errno != EAGAIN) {
            close(connection);
            return;
        }
        const auto taken = static_cast<std::size_t>(std::max<ssize_t>(sent, 0));
        connection->pending.assign(echo_buffer + taken, echo_buffer + got);
        connection->written = 0;
        control(EPOLL_CTL_MOD, connection, EPOLLOUT);
    }

    void on_writable(Connection* connection) {
        const std::size_t left = connection->pending.size() - connection->written;
        const ssize_t sent = ::write(connection->fd, connection->pending.data() + connection->written, left);
        if (sent < 0) {
            if (errno != EAGAIN) {
                close(connection);
            }
            return;
        }
        connection->written += static_cast<std::size_t>(sent);
        if (connection->written == connection->pending.size()) {
            connection->pending.clear();
            control(EPOLL_CTL_MOD, connection, EPOLLIN);
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
