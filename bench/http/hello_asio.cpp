// The HTTP hello server on standalone asio, written the textbook way: per
// connection a session that async_read_some()s into its own buffer, frames
// the requests, async_write()s their responses from its own output string,
// then reads again. io_context{1}: asio's one-thread hint.
#include <asio.hpp>

#include <memory>
#include <string>

#include "hello_common.hpp"

namespace hello {

namespace {

using asio::ip::tcp;

Response response;

class Session : public std::enable_shared_from_this<Session> {
public:
    explicit Session(tcp::socket socket) : socket_{std::move(socket)}, input_{new char[read_size]} {}

    void start() { read(); }

private:
    void read() {
        socket_.async_read_some(asio::buffer(input_.get(), read_size),
                                [self = shared_from_this()](const std::error_code& error, std::size_t got) {
                                    if (!error) {
                                        self->on_read(got);
                                    }
                                });
    }

    void on_read(std::size_t got) {
        const long count = frame_requests(carry_, std::string_view{input_.get(), got});
        if (count < 0) {
            return;  // the session ends with the last reference
        }
        if (count == 0) {
            read();
            return;
        }
        output_.clear();
        append_responses(output_, response, count);
        asio::async_write(socket_, asio::buffer(output_),
                          [self = shared_from_this()](const std::error_code& error, std::size_t /*sent*/) {
                              if (!error) {
                                  self->read();
                              }
                          });
    }

    tcp::socket socket_;
    std::unique_ptr<char[]> input_;
    std::string carry_;
    std::string output_;
};

void accept(tcp::acceptor& acceptor) {
    acceptor.async_accept([&acceptor](const std::error_code& error, tcp::socket socket) {
        if (!error) {
            socket.set_option(tcp::no_delay{true});
            socket.non_blocking(true);
            std::make_shared<Session>(std::move(socket))->start();
        }
        accept(acceptor);
    });
}

}  // namespace

void serve_asio(std::uint16_t port) {
    asio::io_context context{1};
    tcp::acceptor acceptor{context};
    const tcp::endpoint endpoint{asio::ip::address_v4::loopback(), port};
    acceptor.open(endpoint.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address{true});
    acceptor.bind(endpoint);
    acceptor.listen(4096);
    accept(acceptor);
    for (;;) {
        context.run();
        context.restart();
    }
}

}  // namespace hello
