// The HTTP hello server on muxio's reactor: the steps of hello_common.hpp
// (the peers' minimal framing, not muxio-http's parser), a reader or a
// writer callback per connection, capturing two pointers. Next to
// muxio-http in the suite, it separates the event loop's cost from the
// application's.
#include <sys/socket.h>
#include <unistd.h>

#include "bench_common.hpp"
#include "hello_common.hpp"
#include "muxio/reactor.hpp"

namespace hello {

namespace {

Scratch scratch;

class MuxioHello {
public:
    explicit MuxioHello(muxio::Reactor& reactor) : reactor_{reactor} {}

    void listen(int listener) {
        reactor_.add_reader(listener, [this, listener] { accept_all(listener); });
    }

private:
    void accept_all(int listener) {
        for (;;) {
            const int fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                return;  // EAGAIN: accepted them all (other errors: the client retries)
            }
            bench::set_nodelay(fd);
            auto* connection = new Connection{};
            connection->fd = fd;
            reactor_.add_reader(fd, [this, connection] { apply(connection, on_readable(*connection, scratch)); });
        }
    }

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
                                    [this, connection] { apply(connection, on_readable(*connection, scratch)); });
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
};

}  // namespace

void serve_muxio(std::uint16_t port) {
    muxio::Reactor reactor;
    MuxioHello server{reactor};
    server.listen(bench::make_listener(port));
    for (;;) {
        reactor.run();
    }
}

}  // namespace hello
