// http_hello_server --impl epoll|libuv|libevent|asio|muxio --port PORT
//
// The minimal keep-alive HTTP/1.1 hello servers that bench/run_app_bench.sh
// measures next to muxio-http: every request (everything up to a blank
// line) is answered with the bytes muxio-http sends for `GET /`. Listens on
// 127.0.0.1:PORT and runs until killed. See hello_common.hpp.
#include <csignal>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include "hello_common.hpp"

int main(int argc, char** argv) {
    std::string_view impl;
    unsigned long port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string_view option{argv[i]};
        if (option == "--impl") {
            impl = argv[i + 1];
        } else if (option == "--port") {
            port = std::stoul(argv[i + 1]);
        } else {
            impl = {};
            break;
        }
    }
    if (port == 0 || port > 65535) {
        impl = {};
    }
    (void)std::signal(SIGPIPE, SIG_IGN);
    const auto p = static_cast<std::uint16_t>(port);
    try {
        if (impl == "epoll") {
            hello::serve_epoll(p);
        } else if (impl == "libuv") {
            hello::serve_libuv(p);
        } else if (impl == "libevent") {
            hello::serve_libevent(p);
        } else if (impl == "asio") {
            hello::serve_asio(p);
        } else if (impl == "muxio") {
            hello::serve_muxio(p);
        }
    } catch (const std::exception& error) {
        std::fprintf(stderr, "http_hello_server: %s\n", error.what());
        return 1;
    }
    std::fputs("usage: http_hello_server --impl epoll|libuv|libevent|asio|muxio --port PORT\n", stderr);
    return 2;
}
