// reactor_echo_server --impl NAME --port PORT
//
// One of the echo servers the echo benchmark compares (see bench_common.hpp
// for the behaviour they share): five callback servers, three coroutine
// servers (muxio-coro, muxio-coro-perconn, asio-coro), and muxio-coro-raw (raw
// fds, a reader added and removed per await). Runs until killed; the load
// generator reads its CPU time from /proc.
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>

#include "bench_common.hpp"

namespace {

void usage() {
    std::fputs(
        "usage: reactor_echo_server --impl epoll|muxio|libuv|libevent|asio|muxio-coro|muxio-coro-perconn|asio-coro|"
        "muxio-coro-raw "
        "--port PORT\n",
        stderr);
}

}  // namespace

int main(int argc, char** argv) {
    std::string_view impl;
    bench::EchoConfig config;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string_view option{argv[i]};
        if (option == "--impl") {
            impl = argv[i + 1];
        } else if (option == "--port") {
            config.port = static_cast<std::uint16_t>(std::stoul(argv[i + 1]));
        } else {
            usage();
            return 2;
        }
    }
    try {
        if (impl == "epoll") {
            bench::echo_epoll(config);
        } else if (impl == "muxio") {
            bench::echo_muxio(config);
        } else if (impl == "libuv") {
            bench::echo_libuv(config);
        } else if (impl == "libevent") {
            bench::echo_libevent(config);
        } else if (impl == "asio") {
            bench::echo_asio(config);
        } else if (impl == "muxio-coro") {
            bench::echo_muxio_coro(config);
        } else if (impl == "muxio-coro-perconn") {
            bench::echo_muxio_coro_perconn(config);
        } else if (impl == "asio-coro") {
            bench::echo_asio_coro(config);
        } else if (impl == "muxio-coro-raw") {
            bench::echo_muxio_coro_raw(config);
        }
    } catch (const std::exception& error) {
        std::fprintf(stderr, "reactor_echo_server: %s\n", error.what());
        return 1;
    }
    usage();
    return 2;
}
