// The floor of the HTTP hello benchmark: a level-triggered epoll loop,
// data.ptr to the connection, the steps of hello_common.hpp.
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>

#include "bench_common.hpp"
#include "hello_common.hpp"

namespace hello {

namespace {

class EpollHello {
public:
    explicit EpollHello(int listener) : listener_{listener}, epfd_{::epoll_create1(EPOLL_CLOEXEC)} {
        if (epfd_ < 0) {
            bench::fail_errno("epoll_create1");
        }
        epoll_event event{};
        event.events = EPOLLIN;
        event.data.ptr = nullptr;  // the listener
        if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, listener_, &event) == -1) {
            bench::fail_errno("epoll_ctl(ADD listener)");
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
                bench::fail_errno("epoll_wait");
            }
            for (int i = 0; i < count; ++i) {
                auto* connection = static_cast<Connection*>(events[static_cast<std::size_t>(i)].data.ptr);
                if (connection == nullptr) {
                    accept_all();
                } else if (connection->pending.empty()) {
                    apply(connection, on_readable(*connection, scratch_));
                } else {
                    apply(connection, on_writable(*connection));
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
            bench::fail_errno("epoll_ctl");
        }
    }

    void accept_all() {
        for (;;) {
            const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                return;
            }
            bench::set_nodelay(fd);
            auto* connection = new Connection{};
            connection->fd = fd;
            control(EPOLL_CTL_ADD, connection, EPOLLIN);
        }
    }

    void apply(Connection* connection, Next next) {
        switch (next) {
            case Next::nothing:
                break;
            case Next::watch_writable:
                control(EPOLL_CTL_MOD, connection, EPOLLOUT);
                break;
            case Next::watch_readable:
                control(EPOLL_CTL_MOD, connection, EPOLLIN);
                break;
            case Next::close:
                ::close(connection->fd);  // the last reference: it leaves the epoll set
                delete connection;
                break;
        }
    }

    int listener_;
    int epfd_;
    Scratch scratch_;
};

}  // namespace

void serve_epoll(std::uint16_t port) {
    static EpollHello server{bench::make_listener(port)};
    server.run();
}

}  // namespace hello
