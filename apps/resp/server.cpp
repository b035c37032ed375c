#include "server.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "muxio/net.hpp"

namespace resp {

spdlog::logger& logger() {
    static const std::shared_ptr<spdlog::logger> instance = [] {
        if (auto existing = spdlog::get("muxio-resp")) {
            return existing;
        }
        auto made = spdlog::stderr_color_mt("muxio-resp");
        made->set_level(spdlog::level::warn);
        if (const char* level = std::getenv("MUXIO_LOG_LEVEL"); level != nullptr && *level != '\0') {
            made->set_level(spdlog::level::from_str(level));
        }
        return made;
    }();
    return *instance;
}

namespace {

// accept() errors that lose only the connection being accepted. try_accept
// already skips most of them (see accept(2), "Error handling"), but reports
// these two: retrying at once is right, pausing would delay every client.
bool is_lost_connection(int error) noexcept {
    return error == EPERM || error == EOPNOTSUPP;
}

// Bytes asked of the kernel per read: like Redis's 16 KiB, a bit larger; a
// large bulk string in progress reads up to what it still lacks, capped.
constexpr std::size_t read_chunk = std::size_t{64} << 10U;
constexpr std::size_t max_read_chunk = std::size_t{4} << 20U;
// Most connections a single readiness of the listener accepts, so a connect
// storm shares the loop with the connected clients.
constexpr int accepts_per_wakeup = 64;
// Buffers grown past this for one large request or reply are given back
// once empty, so an idle connection does not keep a large one.
constexpr std::size_t keep_buffer = std::size_t{1} << 20U;

}  // namespace

struct Server::Connection {
    Connection(muxio::TcpStream accepted, std::uint64_t number, const ParserLimits& limits)
        : stream{std::move(accepted)}, id{number}, parser{limits} {}

    [[nodiscard]] std::size_t pending() const noexcept { return out.size() - out_head; }
    [[nodiscard]] std::size_t unparsed_size() const noexcept { return in_used - in_head; }
    [[nodiscard]] std::string_view unparsed() const noexcept { return {in.data() + in_head, in_used - in_head}; }

    // The server adds its own reader and writer on stream.fileno(), so the
    // stream's awaits (readable(), read_some(), ...) must never be used.
    // Destroying it removes those registrations, then closes the descriptor.
    muxio::TcpStream stream;
    std::uint64_t id;
    Parser parser;
    // Input: bytes [in_head, in_used) of `in` are received and not yet
    // consumed by the parser; `in` beyond in_used is room for the next read.
    std::string in;
    std::size_t in_head = 0;
    std::size_t in_used = 0;
    // Output: bytes [out_head, size) of `out` are replies not yet sent.
    std::string out;
    std::size_t out_head = 0;
    bool reading = false;  // a reader is registered
    bool writing = false;  // a writer is registered
    bool paused = false;   // replies over the high-water mark: requests wait
    bool eof = false;      // the client shut down its side
    bool closing = false;  // close once the replies are out (QUIT, protocol error)
};

Server::Server(muxio::Reactor& reactor, Dispatcher& dispatcher, ServerOptions options)
    : reactor_{reactor}, dispatcher_{dispatcher}, options_{std::move(options)} {
    options_.max_query_buffer = std::max(options_.max_query_buffer, options_.limits.max_bulk + max_read_chunk);
    options_.output_high_water = std::max<std::size_t>(options_.output_high_water, 1);
}

Server::~Server() {
    close();
}

std::uint16_t Server::start() {
    const std::optional<muxio::SocketAddress> address = muxio::SocketAddress::ip(options_.bind, options_.port);
    if (!address) {
        throw std::invalid_argument(fmt::format(
            "bind address '{}' is not a numeric IPv4 or IPv6 address (such as 127.0.0.1 or ::1); host names are not "
            "resolved",
            options_.bind));
    }
    muxio::ListenOptions listen;
    // Restarting while old connections linger in TIME_WAIT must work.
    listen.reuse_address = true;
    listener_ = muxio::TcpListener::bind(reactor_, *address, listen);
    port_ = listener_.local_address().port();
    try {
        resume_accepting();
    } catch (...) {
        listener_.close();
        throw;
    }
    dispatcher_.set_port(port_);
    logger().info("listening on {}:{}", options_.bind, port_);
    return port_;
}

void Server::close() noexcept {
    accept_timer_.cancel();
    accepting_ = false;
    listener_.close();  // removes its reader first
    while (!connections_.empty()) {
        drop(*connections_.begin()->second);
    }
}

void Server::resume_accepting() {
    if (!listener_.is_open()) {
        return;
    }
    reactor_.add_reader(listener_.fileno(), [this] { on_acceptable(); });
    accepting_ = true;
}

void Server::pause_accepting(int error) {
    ++stats_.accept_pauses;
    logger().warn("accept: {}; not accepting for {} ms", std::strerror(error), options_.accept_pause.count());
    reactor_.remove_reader(listener_.fileno());
    accepting_ = false;
    accept_timer_ = reactor_.call_later(options_.accept_pause, [this] {
        try {
            resume_accepting();
        } catch (const std::exception& failure) {
            logger().error("cannot watch the listener again: {}", failure.what());
        }
    });
}

void Server::on_acceptable() {
    // The socket calls report errno values in std::system_category; they are
    // logged with strerror(), not error.message(). That keeps every virtual
    // call on the category out of this path, where descriptors may have run
    // out: UBSan's vptr check needs a pipe() of its own and misfires on EMFILE.
    for (int i = 0; i < accepts_per_wakeup; ++i) {
        std::error_code error;
        std::optional<muxio::TcpStream> accepted = listener_.try_accept(error);
        if (accepted) {
            add_connection(std::move(*accepted));
            continue;
        }
        if (!error) {
            return;  // none queued
        }
        if (is_lost_connection(error.value())) {
            logger().debug("accept: {}", std::strerror(error.value()));
            continue;
        }
        // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), or
        // worse: the connection stays queued and the listener readable, so
        // watching it now would only spin. Wait a little instead.
        pause_accepting(error.value());
        return;
    }
}

void Server::add_connection(muxio::TcpStream stream) {
    try {
        // Replies go out at once instead of waiting for the client's next
        // request under Nagle's algorithm; failing is harmless.
        stream.set_nodelay(true);
    } catch (const std::system_error& error) {
        logger().debug("{}", error.what());
    }
    const int fd = stream.fileno();
    // Out of memory here closes the stream as the exception unwinds.
    auto owned = std::make_unique<Connection>(std::move(stream), next_id_++, options_.limits);
    Connection* const connection = owned.get();
    connections_[fd] = std::move(owned);
    ++stats_.accepted;
    logger().debug("connection {} accepted (fd {})", connection->id, fd);
    try {
        update_interest(*connection);
    } catch (const std::exception& error) {
        // E.g. select's FD_SETSIZE: refuse this client, keep the others.
        logger().warn("cannot watch a new connection (fd {}): {}", fd, error.what());
        drop(*connection);
    }
}

template <class F>
void Server::guarded(Connection* connection, F&& body) noexcept {
    const int fd = connection->stream.fileno();
    const std::uint64_t id = connection->id;
    try {
        body();
    } catch (const std::exception& error) {
        // std::bad_alloc for a request too large for the memory left, or the
        // reactor refusing the descriptor: this client goes, the server stays.
        logger().warn("connection {} closed: {}", id, error.what());
        const auto it = connections_.find(fd);
        if (it != connections_.end() && it->second->id == id) {
            drop(*it->second);
        }
    }
}

void Server::on_readable(Connection& c) {
    std::size_t want = read_chunk;
    if (const std::size_t wanted = c.parser.bytes_wanted(); wanted > c.unparsed_size()) {
        want = std::clamp(wanted - c.unparsed_size(), read_chunk, max_read_chunk);
    }
    if (c.in_head == c.in_used) {
        c.in_head = c.in_used = 0;
    }
    if (c.in.size() - c.in_used < want) {
        if (c.in_head > 0) {
            // The parser's offsets are relative to in_head: moving the
            // unparsed bytes to the front keeps them right.
            std::memmove(c.in.data(), c.in.data() + c.in_head, c.unparsed_size());
            c.in_used -= c.in_head;
            c.in_head = 0;
        }
        if (c.in.size() - c.in_used < want) {
            c.in.resize(c.in_used + want);
        }
    }
    std::error_code error;
    const std::optional<std::size_t> got =
        c.stream.try_read(std::as_writable_bytes(std::span{c.in.data() + c.in_used, want}), error);
    if (!got) {
        if (error) {
            logger().debug("connection {}: read: {}", c.id, std::strerror(error.value()));
            drop(c);
        }
        return;
    }
    if (*got == 0) {
        c.eof = true;  // answer what was sent, then close
    }
    c.in_used += *got;
    if (c.unparsed_size() > options_.max_query_buffer) {
        logger().warn("connection {} closed: its request exceeds {} bytes", c.id, options_.max_query_buffer);
        drop(c);
        return;
    }
    pump(c);
}

void Server::run_requests(Connection& c) {
    while (!c.closing && c.pending() < options_.output_high_water) {
        const Parser::Result result = c.parser.parse(c.unparsed());
        if (result.status == Parser::Status::need_more) {
            c.in_head += result.consumed;
            break;
        }
        if (result.status == Parser::Status::error) {
            ++stats_.protocol_errors;
            logger().info("connection {}: {}", c.id, c.parser.error());
            reply::error(c.out, fmt::format("ERR {}", c.parser.error()));
            c.closing = true;
            break;
        }
        // The arguments view the input: run the command before consuming it.
        if (dispatcher_.execute(c.parser.args(), c.out) == After::close) {
            c.closing = true;
        }
        c.in_head += result.consumed;
    }
    if (!c.closing && c.pending() >= options_.output_high_water && !c.paused) {
        c.paused = true;
        ++stats_.read_pauses;
    }
    if (c.in_head == c.in_used) {
        c.in_head = c.in_used = 0;
        if (c.in.size() > keep_buffer) {
            std::string{}.swap(c.in);
        }
    }
}

bool Server::flush(Connection& c) {
    while (c.pending() > 0) {
        std::error_code error;
        const std::optional<std::size_t> sent =
            c.stream.try_write(std::as_bytes(std::span{c.out.data() + c.out_head, c.pending()}), error);
        if (!sent) {
            if (!error) {
                return true;  // the kernel's buffer is full
            }
            logger().debug("connection {}: write: {}", c.id, std::strerror(error.value()));
            return false;
        }
        c.out_head += *sent;
    }
    c.out.clear();
    c.out_head = 0;
    if (c.out.capacity() > keep_buffer) {
        std::string{}.swap(c.out);
    }
    return true;
}

// After anything happened on a connection: answer the complete requests
// buffered (as many as the output bound allows), send the replies with as
// few writes as the kernel permits, and watch for what comes next.
void Server::pump(Connection& c) {
    if (!c.paused) {
        run_requests(c);
    }
    // Paused requests resume once the replies drain below a quarter of the
    // high-water mark; the kernel may take a whole batch of replies at once,
    // so this repeats until the output stays full or the requests run out.
    for (;;) {
        if (!flush(c)) {
            drop(c);
            return;
        }
        if (!c.paused || c.pending() > options_.output_high_water / 4) {
            break;
        }
        c.paused = false;
        run_requests(c);
    }
    // Not paused means every complete request is answered; after the
    // client's EOF whatever remains is a fragment that will never complete.
    if (c.pending() == 0 && (c.closing || (c.eof && !c.paused))) {
        drop(c);
        return;
    }
    update_interest(c);
}

void Server::update_interest(Connection& c) {
    const bool want_read = !c.closing && !c.eof && !c.paused;
    const bool want_write = c.pending() > 0;
    Connection* const connection = &c;
    const int fd = c.stream.fileno();
    if (want_read && !c.reading) {
        reactor_.add_reader(fd, [this, connection] { guarded(connection, [&] { on_readable(*connection); }); });
        c.reading = true;
    } else if (!want_read && c.reading) {
        reactor_.remove_reader(fd);
        c.reading = false;
    }
    if (want_write && !c.writing) {
        reactor_.add_writer(fd, [this, connection] { guarded(connection, [&] { pump(*connection); }); });
        c.writing = true;
    } else if (!want_write && c.writing) {
        reactor_.remove_writer(fd);
        c.writing = false;
    }
}

void Server::drop(Connection& c) noexcept {
    const int fd = c.stream.fileno();
    logger().debug("connection {} closed", c.id);
    // Destroys c; its stream unregisters the descriptor, then closes it.
    connections_.erase(fd);
}

}  // namespace resp
