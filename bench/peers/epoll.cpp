// The floor: a hand-written level-triggered epoll server. Per message it
// makes the system calls every other server makes (epoll_wait, read, send)
// and nothing else: data.ptr points at the connection, no lookup, no queue.
#include <sys/epoll.h>

#include "common.hpp"

namespace bench {
namespace {

void control(int epfd, int op, Connection* connection, std::uint32_t mask) {
    epoll_event event{};
    event.events = mask;
    event.data.ptr = connection;
    if (::epoll_ctl(epfd, op, connection->fd, &event) == -1) {
        fail_errno("epoll_ctl");
    }
}

void serve(Mode mode, const Options& options) {
    const int listener = make_listener(options.port);
    const int epfd = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        fail_errno("epoll_create1");
    }
    Connection listening{listener, {}, {}, 0};  // the one record whose fd accepts
    control(epfd, EPOLL_CTL_ADD, &listening, EPOLLIN);
    std::array<epoll_event, 1024> events{};
    for (;;) {
        const int count = ::epoll_wait(epfd, events.data(), static_cast<int>(events.size()), -1);
        if (count < 0 && errno != EINTR) {
            fail_errno("epoll_wait");
        }
        for (int i = 0; i < count; ++i) {
            auto* connection = static_cast<Connection*>(events[static_cast<std::size_t>(i)].data.ptr);
            if (connection == &listening) {
                for (int fd; (fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
                    set_nodelay(fd);
                    control(epfd, EPOLL_CTL_ADD, new Connection{fd, {}, {}, 0}, EPOLLIN);
                }
                continue;
            }
            switch (connection->pending.empty() ? on_readable(*connection, mode) : on_writable(*connection)) {
                case Next::nothing:
                    break;
                case Next::watch_writable:
                    control(epfd, EPOLL_CTL_MOD, connection, EPOLLOUT);
                    break;
                case Next::watch_readable:
                    control(epfd, EPOLL_CTL_MOD, connection, EPOLLIN);
                    break;
                case Next::close:
                    ::close(connection->fd);  // the last reference: it leaves the epoll set
                    delete connection;
                    break;
            }
        }
    }
}

}  // namespace

const Library library{.name = "epoll", .variants = "", .serve = serve};

}  // namespace bench
