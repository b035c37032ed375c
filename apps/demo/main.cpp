// muxio-demo: a TCP echo server and its clients, all on one selector in one
// thread, in the spirit of the example in Python's selectors documentation.
//
// The server listens on 127.0.0.1 on a port the kernel picks. Each client
// connects, streams its messages with a few in flight, and compares every
// byte that comes back with what it sent. Each socket's key data is what to
// do when the socket is ready; every socket is non-blocking. The run ends by
// itself: when every client is done, or at a deadline, which counts as a
// failure. Exit status: 0 only if every byte came back intact.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "muxio/error.hpp"
#include "muxio/selectors.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using muxio::EVENT_READ;
using muxio::EVENT_WRITE;
using muxio::Events;

constexpr auto run_deadline = std::chrono::seconds{30};
// Messages a client keeps in flight, and the bytes that may take at most, so
// large messages do not multiply memory.
constexpr std::size_t max_messages_in_flight = 16;
constexpr std::size_t max_bytes_in_flight = std::size_t{256} << 10U;
// A server connection stops reading while this much echo waits to be sent: a
// client that does not read cannot make the server buffer without bound.
constexpr std::size_t server_high_water = std::size_t{1} << 20U;
constexpr std::size_t receive_buffer_size = std::size_t{64} << 10U;

// Exit statuses. 77 is what CTest's SKIP_RETURN_CODE is set to: a kernel that
// refuses a mechanism (io_uring under seccomp) is not a failure of the demo.
constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;
constexpr int exit_selector_refused = 77;

struct Options {
    std::string selector;  // empty: DefaultSelector's choice
    std::size_t clients = 8;
    std::size_t messages = 1000;
    std::size_t size = 64;
};

class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

void print_usage() {
    fmt::print(
        "usage: muxio-demo [--selector NAME] [--clients N] [--messages N] [--size BYTES]\n"
        "\n"
        "Runs a TCP echo server on 127.0.0.1 and N clients against it, all on one\n"
        "muxio selector, and checks that every byte sent comes back.\n"
        "\n"
        "  --selector NAME   mechanism to use: {}\n"
        "                    (default: the best the kernel accepts, or $MUXIO_SELECTOR)\n"
        "  --clients N       concurrent client connections (default 8)\n"
        "  --messages N      messages each client sends (default 1000)\n"
        "  --size BYTES      bytes per message (default 64)\n"
        "  --help            this text\n"
        "\n"
        "Exit status: 0 if every byte came back within {} s, 1 if not, 2 for a bad\n"
        "command line, {} if the kernel refused the selector.\n",
        fmt::join(muxio::available_selectors(), ", "), run_deadline.count(), exit_selector_refused);
}

std::size_t parse_count(std::string_view option, std::string_view text, std::size_t max) {
    std::size_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc{} || end != text.data() + text.size() || value == 0 || value > max) {
        throw UsageError(fmt::format("{} wants a whole number from 1 to {}, not '{}'", option, max, text));
    }
    return value;
}

// Returns nullopt when --help was asked for.
std::optional<Options> parse_options(std::span<char* const> args) {
    Options options;
    for (std::size_t i = 1; i < args.size(); ++i) {
        const std::string_view option = args[i];
        if (option == "--help" || option == "-h") {
            return std::nullopt;
        }
        if (i + 1 == args.size()) {
            throw UsageError(fmt::format("unknown option or missing value: '{}'", option));
        }
        const std::string_view value = args[++i];
        if (option == "--selector") {
            options.selector = value;
        } else if (option == "--clients") {
            options.clients = parse_count(option, value, 10'000);
        } else if (option == "--messages") {
            options.messages = parse_count(option, value, 100'000'000);
        } else if (option == "--size") {
            options.size = parse_count(option, value, std::size_t{16} << 20U);
        } else {
            throw UsageError(fmt::format("unknown option '{}'", option));
        }
    }
    return options;
}

// An owned descriptor, closed with its owner.
class Socket {
public:
    explicit Socket(int fd) noexcept : fd_{fd} {}
    Socket(Socket&& other) noexcept : fd_{std::exchange(other.fd_, -1)} {}
    Socket(const Socket&) = delete;
    Socket& operator=(const Socket&) = delete;
    Socket& operator=(Socket&&) = delete;
    ~Socket() {
        if (fd_ >= 0) {
            ::close(fd_);
        }
    }
    [[nodiscard]] int fileno() const noexcept { return fd_; }

private:
    int fd_;
};

Socket make_tcp_socket() {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        muxio::throw_system_error(errno, "socket");
    }
    return Socket{fd};
}

// Small messages go out at once instead of waiting, under Nagle's algorithm,
// for the echo of the previous ones.
void disable_nagle(const Socket& socket) {
    const int on = 1;
    if (::setsockopt(socket.fileno(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0) {
        muxio::throw_system_error(errno, "setsockopt(TCP_NODELAY)", socket.fileno());
    }
}

sockaddr_in loopback(std::uint16_t port) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return address;
}

// One recv() or send() on a non-blocking socket, EINTR already retried.
struct Transfer {
    std::size_t bytes = 0;  // from recv, 0 with no error means the peer closed
    int error = 0;          // an errno value; EAGAIN means "not now", not a failure

    [[nodiscard]] bool would_block() const noexcept { return error == EAGAIN || error == EWOULDBLOCK; }
};

Transfer receive(int fd, std::span<char> buffer) {
    for (;;) {
        const ssize_t got = ::recv(fd, buffer.data(), buffer.size(), 0);
        if (got >= 0) {
            return {static_cast<std::size_t>(got), 0};
        }
        if (errno != EINTR) {
            return {0, errno};
        }
    }
}

Transfer send_some(int fd, std::string_view bytes) {
    for (;;) {
        // MSG_NOSIGNAL: a peer that went away is an EPIPE to handle, not a
        // SIGPIPE that kills the process.
        const ssize_t sent = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (sent >= 0) {
            return {static_cast<std::size_t>(sent), 0};
        }
        if (errno != EINTR) {
            return {0, errno};
        }
    }
}

// The byte a client sends at `offset` of its stream and must get back there:
// the top byte of a multiplicative hash of (client, offset). Each client's
// stream differs from the others' and has no short period, so a byte sent
// back to the wrong client or at the wrong place counts as a mismatch.
char pattern_byte(std::size_t client, std::size_t offset) {
    const std::uint64_t mixed = (std::uint64_t{offset} ^ (std::uint64_t{client} << 50U)) * 0x9e37'79b9'7f4a'7c15U;
    return static_cast<char>(mixed >> 56U);
}

// A TCP socket with the bytes queued for it. The listener, the server's
// connections and the clients all are one; the client fields stay unused on
// the server side.
struct Connection {
    explicit Connection(Socket owned) : socket{std::move(owned)} {}

    [[nodiscard]] std::size_t pending() const noexcept { return outbox.size() - outbox_sent; }

    Socket socket;
    std::string outbox;
    std::size_t outbox_sent = 0;

    std::size_t client = 0;      // client number, for messages
    std::size_t queued = 0;      // messages put in the outbox
    std::size_t checked = 0;     // echoed bytes received and compared
    std::size_t mismatched = 0;  // of those, bytes that differed
    std::string failure;         // why this client gave up; empty if it did not
};

// What to do when a socket is ready: the data of its selector key.
enum class Step : std::uint8_t {
    accept,    // the listening socket: take the waiting connections
    echo,      // a server connection: send back what arrives
    connect,   // a client whose connect() is under way
    exchange,  // a connected client: send messages, check the echo
};

// Owns the connection (and so the socket): unregister() hands the key back,
// data included, and the socket closes when that key goes, after the kernel
// has stopped watching it. Behind a pointer so the connection stays put while
// modify() replaces the data around it.
struct Handler {
    Step step;
    std::unique_ptr<Connection> connection;
};

using Selector = muxio::BaseSelector<Handler>;
using Key = muxio::SelectorKey<Handler>;

class EchoDemo {
public:
    EchoDemo(Options options, std::unique_ptr<Selector> selector)
        : options_{std::move(options)},
          selector_{std::move(selector)},
          window_{std::clamp<std::size_t>(max_bytes_in_flight / options_.size, 1, max_messages_in_flight)},
          buffer_(receive_buffer_size) {}

    // Runs to completion or to the deadline; true if every byte came back.
    bool run() {
        const std::uint16_t port = listen();
        fmt::print("muxio-demo: echo server on 127.0.0.1:{}, selector {}\n", port, selector_->name());
        fmt::print("muxio-demo: {} clients, each sending {} messages of {} bytes\n", options_.clients,
                   options_.messages, options_.size);
        const Clock::time_point start = Clock::now();
        const Clock::time_point deadline = start + run_deadline;
        for (std::size_t client = 0; client < options_.clients; ++client) {
            start_client(client, port);
        }
        while (clients_open_ > 0 || server_connections_ > 0) {
            const Clock::duration left = deadline - Clock::now();
            if (left <= Clock::duration::zero()) {
                timed_out_ = true;
                break;
            }
            ++select_calls_;
            for (const auto& ready : selector_->select(left)) {
                // An earlier entry's handler may have closed this socket and
                // an accept() reused its number; such an entry is stale.
                if (!selector_->is_current(ready)) {
                    continue;
                }
                const auto& [key, events] = ready;
                switch (key.data.step) {
                    case Step::accept:
                        accept_all(key);
                        break;
                    case Step::echo:
                        echo(key, events);
                        break;
                    case Step::connect:
                        finish_connect(key);
                        break;
                    case Step::exchange:
                        exchange(key, events);
                        break;
                }
            }
        }
        elapsed_ = Clock::now() - start;
        close_all();
        return succeeded();
    }

    void print_summary() const {
        const double seconds = std::chrono::duration<double>(elapsed_).count();
        const std::size_t messages = checked_bytes_ / options_.size;
        const double rate = seconds > 0 ? static_cast<double>(messages) / seconds : 0.0;
        fmt::print("\n");
        fmt::print("  {:<16}{}\n", "selector", selector_->name());
        fmt::print("  {:<16}{} accepted, {} of {} clients done\n", "connections", accepted_, clients_ok_,
                   options_.clients);
        fmt::print("  {:<16}{} of {} x {} bytes\n", "messages", messages, options_.clients * options_.messages,
                   options_.size);
        fmt::print("  {:<16}{} echoed and checked\n", "bytes", checked_bytes_);
        fmt::print("  {:<16}{:.3f} s\n", "elapsed", seconds);
        fmt::print("  {:<16}{:.0f}\n", "messages/s", rate);
        fmt::print("  {:<16}{}\n", "select() calls", select_calls_);
        fmt::print("  {:<16}{}\n", "modify() calls", modify_calls_);
        fmt::print("  {:<16}{}\n", "partial writes", partial_writes_);
        fmt::print("  {:<16}{}\n", "mismatches", mismatched_bytes_);
        if (timed_out_) {
            fmt::print("\nFAILED: the {} s deadline passed first\n", run_deadline.count());
        } else if (succeeded()) {
            fmt::print("\nOK: every byte came back\n");
        } else {
            fmt::print("\nFAILED: see the client lines above\n");
        }
    }

private:
    // Opens the listening socket and registers it; returns the port.
    std::uint16_t listen() {
        Socket socket = make_tcp_socket();
        sockaddr_in address = loopback(0);
        const int fd = socket.fileno();
        if (::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
            muxio::throw_system_error(errno, "bind(127.0.0.1:0)", fd);
        }
        if (::listen(fd, SOMAXCONN) != 0) {
            muxio::throw_system_error(errno, "listen", fd);
        }
        socklen_t length = sizeof address;
        if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
            muxio::throw_system_error(errno, "getsockname", fd);
        }
        selector_->register_(fd, EVENT_READ, Handler{Step::accept, std::make_unique<Connection>(std::move(socket))});
        return ntohs(address.sin_port);
    }

    void start_client(std::size_t client, std::uint16_t port) {
        Socket socket = make_tcp_socket();
        disable_nagle(socket);
        const sockaddr_in address = loopback(port);
        const int fd = socket.fileno();
        // A non-blocking connect() usually answers EINPROGRESS; EINTR means
        // the same (the connection goes on). Either way the socket turns
        // writable when the handshake ends, and SO_ERROR tells how it ended.
        if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0 && errno != EINPROGRESS &&
            errno != EINTR) {
            muxio::throw_system_error(errno, "connect", fd);
        }
        auto connection = std::make_unique<Connection>(std::move(socket));
        connection->client = client;
        selector_->register_(fd, EVENT_WRITE, Handler{Step::connect, std::move(connection)});
        ++clients_open_;
    }

    void accept_all(const Key& listener) {
        // Level-triggered, so taking only one per select() would also work;
        // taking all that wait saves select() calls when clients arrive together.
        for (;;) {
            const int fd = ::accept4(listener.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) {
                    continue;
                }
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    return;
                }
                muxio::throw_system_error(errno, "accept4", listener.fd);
            }
            Socket socket{fd};
            disable_nagle(socket);
            selector_->register_(fd, EVENT_READ, Handler{Step::echo, std::make_unique<Connection>(std::move(socket))});
            ++accepted_;
            ++server_connections_;
        }
    }

    void echo(const Key& key, Events events) {
        Connection& connection = *key.data.connection;
        if (events.contains(EVENT_READ)) {
            const Transfer got = receive(key.fd, buffer_);
            // End of stream or a reset: the client is gone and the rest of
            // its echo has nowhere to go.
            if (got.bytes == 0 && !got.would_block()) {
                close_connection(key.fd);
                return;
            }
            connection.outbox.append(buffer_.data(), got.bytes);
        }
        if (flush(connection) != 0) {
            close_connection(key.fd);
            return;
        }
        Events wanted;
        if (connection.pending() < server_high_water) {
            wanted |= EVENT_READ;
        }
        if (connection.pending() > 0) {
            wanted |= EVENT_WRITE;
        }
        set_interest(key, wanted);
    }

    void finish_connect(const Key& key) {
        int error = 0;
        socklen_t length = sizeof error;
        if (::getsockopt(key.fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
            error = errno;
        }
        if (error != 0) {
            key.data.connection->failure = fmt::format("connect: {}", std::system_category().message(error));
            close_connection(key.fd);
            return;
        }
        // Same socket, next step: the data changes with the events. The
        // connection moves into the new data, so a refused modify() still
        // closes it (the key is unregistered and the argument destroyed).
        const Key& connected = modify(key.fd, EVENT_READ, Handler{Step::exchange, std::move(key.data.connection)});
        exchange(connected, Events{});
    }

    void exchange(const Key& key, Events events) {
        Connection& client = *key.data.connection;
        if (events.contains(EVENT_READ)) {
            const Transfer got = receive(key.fd, buffer_);
            if (got.error != 0 && !got.would_block()) {
                client.failure = fmt::format("recv: {}", std::system_category().message(got.error));
            } else if (got.bytes == 0 && got.error == 0) {
                client.failure = "the server closed the connection early";
            } else {
                check_echo(client, std::span<const char>{buffer_}.first(got.bytes));
            }
        }
        if (client.failure.empty() && client.checked == stream_size()) {
            close_connection(key.fd);
            return;
        }
        if (client.failure.empty()) {
            queue_messages(client);
            if (const int error = flush(client); error != 0) {
                client.failure = fmt::format("send: {}", std::system_category().message(error));
            }
        }
        if (!client.failure.empty()) {
            close_connection(key.fd);
            return;
        }
        set_interest(key, client.pending() > 0 ? EVENT_READ | EVENT_WRITE : EVENT_READ);
    }

    void check_echo(Connection& client, std::span<const char> echoed) {
        for (const char byte : echoed) {
            if (byte != pattern_byte(client.client, client.checked)) {
                ++client.mismatched;
            }
            ++client.checked;
        }
        if (client.checked > stream_size()) {
            client.failure = "the server sent back more than was sent";
        }
    }

    // Keeps up to window_ messages in flight: enough to keep the socket busy
    // without queueing the whole stream.
    void queue_messages(Connection& client) const {
        const std::size_t echoed = client.checked / options_.size;
        while (client.queued < options_.messages && client.queued - echoed < window_) {
            const std::size_t first = client.queued * options_.size;
            for (std::size_t offset = first; offset < first + options_.size; ++offset) {
                client.outbox.push_back(pattern_byte(client.client, offset));
            }
            ++client.queued;
        }
    }

    // Sends what the kernel takes now; the rest waits for EVENT_WRITE.
    // Returns 0, or the errno value of a failed send (the peer is gone).
    int flush(Connection& connection) {
        while (connection.pending() > 0) {
            const std::string_view rest = std::string_view{connection.outbox}.substr(connection.outbox_sent);
            const Transfer sent = send_some(connection.socket.fileno(), rest);
            if (sent.would_block()) {
                ++partial_writes_;
                break;
            }
            if (sent.error != 0) {
                return sent.error;
            }
            connection.outbox_sent += sent.bytes;
            if (sent.bytes < rest.size()) {
                ++partial_writes_;
                break;
            }
        }
        if (connection.pending() == 0) {
            connection.outbox.clear();
            connection.outbox_sent = 0;
        } else if (connection.outbox_sent > connection.outbox.size() / 2) {
            connection.outbox.erase(0, connection.outbox_sent);
            connection.outbox_sent = 0;
        }
        return 0;
    }

    // Asks the kernel only when the interest really changes: switching
    // EVENT_WRITE on while output waits and off once it is sent keeps
    // select() from reporting a writable socket with nothing to write.
    void set_interest(const Key& key, Events wanted) {
        if (key.events != wanted) {
            modify(key.fd, wanted);
        }
    }

    // The selector's two modify() calls, counted for the summary.
    const Key& modify(int fd, Events events) {
        ++modify_calls_;
        return selector_->modify(fd, events);
    }
    const Key& modify(int fd, Events events, Handler data) {
        ++modify_calls_;
        return selector_->modify(fd, events, std::move(data));
    }

    // Unregisters first: the key comes back with its data, which owns the
    // socket, so the descriptor is closed only once the kernel no longer
    // watches it.
    void close_connection(int fd) {
        const Key closed = selector_->unregister(fd);
        const Connection& connection = *closed.data.connection;
        switch (closed.data.step) {
            case Step::accept:
                break;
            case Step::echo:
                --server_connections_;
                break;
            case Step::connect:
            case Step::exchange:
                --clients_open_;
                record_client(connection);
                break;
        }
    }

    void record_client(const Connection& client) {
        checked_bytes_ += client.checked;
        mismatched_bytes_ += client.mismatched;
        const bool complete = client.failure.empty() && client.checked == stream_size();
        if (complete && client.mismatched == 0) {
            ++clients_ok_;
        }
        // One line per client while there are few; past that, failures only.
        if (options_.clients <= 16 || !complete || client.mismatched != 0) {
            fmt::print("client {:>3}: {} of {} bytes back, {} mismatched{}{}\n", client.client, client.checked,
                       stream_size(), client.mismatched, client.failure.empty() ? "" : " - ", client.failure);
        }
    }

    // Closes what is still registered: the listener, and at the deadline the
    // connections that did not finish. The map's iterators do not survive
    // unregister(), so the descriptors are collected first.
    void close_all() {
        std::vector<int> fds;
        for (const Key& key : selector_->get_map()) {
            if (key.data.step == Step::connect || key.data.step == Step::exchange) {
                key.data.connection->failure = "unfinished at the deadline";
            }
            fds.push_back(key.fd);
        }
        for (const int fd : fds) {
            close_connection(fd);
        }
    }

    [[nodiscard]] std::size_t stream_size() const noexcept { return options_.messages * options_.size; }

    [[nodiscard]] bool succeeded() const noexcept {
        return !timed_out_ && clients_ok_ == options_.clients && accepted_ == options_.clients &&
               mismatched_bytes_ == 0;
    }

    Options options_;
    std::unique_ptr<Selector> selector_;
    std::size_t window_;
    std::vector<char> buffer_;  // one receive buffer, reused by every socket

    std::size_t clients_open_ = 0;
    std::size_t server_connections_ = 0;
    std::size_t accepted_ = 0;
    std::size_t clients_ok_ = 0;
    std::size_t checked_bytes_ = 0;
    std::size_t mismatched_bytes_ = 0;
    std::size_t select_calls_ = 0;
    std::size_t modify_calls_ = 0;
    std::size_t partial_writes_ = 0;
    bool timed_out_ = false;
    Clock::duration elapsed_{};
};

std::unique_ptr<Selector> make_selector(const std::string& name) {
    if (name.empty()) {
        return std::make_unique<muxio::DefaultSelector<Handler>>();
    }
    return muxio::make_selector<Handler>(name);
}

int run(std::span<char* const> args) {
    std::optional<Options> options;
    try {
        options = parse_options(args);
    } catch (const UsageError& error) {
        fmt::print(stderr, "muxio-demo: {}\n(see muxio-demo --help)\n", error.what());
        return exit_usage;
    }
    if (!options) {
        print_usage();
        return exit_ok;
    }

    std::unique_ptr<Selector> selector;
    try {
        selector = make_selector(options->selector);
    } catch (const std::invalid_argument& error) {
        fmt::print(stderr, "muxio-demo: {}\n", error.what());
        return exit_usage;
    } catch (const std::system_error& error) {
        fmt::print(stderr, "muxio-demo: the kernel refused the selector: {}\n", error.what());
        return exit_selector_refused;
    }

    EchoDemo demo{std::move(*options), std::move(selector)};
    const bool ok = demo.run();
    demo.print_summary();
    return ok ? exit_ok : exit_failed;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(std::span<char* const>{argv, static_cast<std::size_t>(argc)});
    } catch (const std::system_error& error) {
        fmt::print(stderr, "muxio-demo: system error: {} (errno {})\n", error.what(), error.code().value());
    } catch (const std::exception& error) {
        fmt::print(stderr, "muxio-demo: error: {}\n", error.what());
    }
    return exit_failed;
}
