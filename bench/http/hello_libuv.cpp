// The HTTP hello server on libuv: uv_tcp, one shared read buffer (the read
// callback consumes it before returning), uv_try_write of the responses and
// uv_write for whatever the socket did not take (reading stops meanwhile).
#include <uv.h>

#include <stdexcept>
#include <string>

#include "hello_common.hpp"

namespace hello {

namespace {

void check(int status, const char* what) {
    if (status < 0) {
        throw std::runtime_error(std::string{what} + ": " + uv_strerror(status));
    }
}

Scratch scratch;

struct UvConnection {
    uv_tcp_t tcp;  // first member: the handle's address is the connection's
    uv_write_t write_request;
    std::string carry;
    std::string pending;
};

void on_alloc(uv_handle_t* /*handle*/, std::size_t /*suggested*/, uv_buf_t* buf) {
    *buf = uv_buf_init(scratch.input.data(), static_cast<unsigned>(scratch.input.size()));
}

void on_closed(uv_handle_t* handle) {
    delete reinterpret_cast<UvConnection*>(handle);
}

void close_connection(UvConnection* connection) {
    uv_close(reinterpret_cast<uv_handle_t*>(&connection->tcp), on_closed);
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);

void on_written(uv_write_t* request, int status) {
    auto* connection = static_cast<UvConnection*>(request->data);
    connection->pending.clear();
    if (status < 0) {
        close_connection(connection);
        return;
    }
    uv_read_start(reinterpret_cast<uv_stream_t*>(&connection->tcp), on_alloc, on_read);
}

void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
    auto* connection = reinterpret_cast<UvConnection*>(stream);
    if (nread <= 0) {
        if (nread < 0) {
            close_connection(connection);
        }
        return;
    }
    const long count = frame_requests(connection->carry, std::string_view{buf->base, static_cast<std::size_t>(nread)});
    if (count <= 0) {
        if (count < 0) {
            close_connection(connection);
        }
        return;
    }
    scratch.output.clear();
    append_responses(scratch.output, scratch.response, count);
    uv_buf_t out = uv_buf_init(scratch.output.data(), static_cast<unsigned>(scratch.output.size()));
    const int sent = uv_try_write(stream, &out, 1);
    if (sent == static_cast<int>(scratch.output.size())) {
        return;
    }
    if (sent < 0 && sent != UV_EAGAIN) {
        close_connection(connection);
        return;
    }
    const auto taken = static_cast<std::size_t>(sent < 0 ? 0 : sent);
    connection->pending.assign(scratch.output, taken);
    uv_read_stop(stream);
    uv_buf_t rest = uv_buf_init(connection->pending.data(), static_cast<unsigned>(connection->pending.size()));
    connection->write_request.data = connection;
    check(uv_write(&connection->write_request, stream, &rest, 1, on_written), "uv_write");
}

void on_connection(uv_stream_t* server, int status) {
    if (status < 0) {
        return;
    }
    auto* connection = new UvConnection{};
    uv_tcp_init(server->loop, &connection->tcp);
    if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&connection->tcp)) != 0) {
        close_connection(connection);
        return;
    }
    uv_tcp_nodelay(&connection->tcp, 1);
    uv_read_start(reinterpret_cast<uv_stream_t*>(&connection->tcp), on_alloc, on_read);
}

}  // namespace

void serve_libuv(std::uint16_t port) {
    uv_loop_t* loop = uv_default_loop();
    static uv_tcp_t server;
    check(uv_tcp_init(loop, &server), "uv_tcp_init");
    sockaddr_in address{};
    check(uv_ip4_addr("127.0.0.1", port, &address), "uv_ip4_addr");
    check(uv_tcp_bind(&server, reinterpret_cast<const sockaddr*>(&address), 0), "uv_tcp_bind");
    check(uv_listen(reinterpret_cast<uv_stream_t*>(&server), 4096, on_connection), "uv_listen");
    for (;;) {
        uv_run(loop, UV_RUN_DEFAULT);
    }
}

}  // namespace hello
