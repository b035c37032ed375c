#include "server.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
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

// Bytes asked of the kernel per read into the shared buffer: like Redis's
// 16 KiB, a bit larger. A connection holding at least this much of a request
// reads straight into its own buffer, up to what the request still lacks,
// but never more than it holds already: the buffer at most doubles per
// read, so it grows with the data that arrives, whatever was announced.
constexpr std::size_t read_chunk = std::size_t{64} << 10U;
constexpr std::size_t max_read_chunk = std::size_t{4} << 20U;
// Most connections a single readiness of the listener accepts, so a connect
// storm shares the loop with the connected clients.
constexpr int accepts_per_wakeup = 64;
// Buffers grown past these for a large request or reply are given back once
// empty, so an idle connection does not keep much.
constexpr std::size_t keep_input = read_chunk;
constexpr std::size_t keep_output = std::size_t{1} << 20U;

constexpr std::string_view max_clients_reply = "-ERR max number of clients reached\r\n";

}  // namespace

std::string check_options(const ServerOptions& options) {
    if (options.limits.max_bulk == 0) {
        return "--max-bulk must be at least 1";
    }
    if (options.max_query_buffer < options.limits.max_bulk) {
        return fmt::format("--max-query-buffer ({}) must be at least --max-bulk ({})", options.max_query_buffer,
                           options.limits.max_bulk);
    }
    if (options.max_output_buffer < bulk_reply_size(options.limits.max_bulk)) {
        return fmt::format(
            "--max-output-buffer ({}) must be at least {}: the reply carrying one value of --max-bulk ({}) bytes",
            options.max_output_buffer, bulk_reply_size(options.limits.max_bulk), options.limits.max_bulk);
    }
    if (options.max_clients == 0) {
        return "--max-clients must be at least 1";
    }
    return {};
}

struct Server::Connection {
    Connection(muxio::TcpStream accepted, std::uint64_t number, const ParserLimits& limits)
        : stream{std::move(accepted)}, id{number}, parser{limits} {}
    ~Connection() { soft_limit_timer.cancel(); }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    [[nodiscard]] std::size_t pending() const noexcept { return out.size() - out_head; }
    [[nodiscard]] std::size_t unparsed_size() const noexcept { return in.size() - in_head; }
    [[nodiscard]] std::string_view unparsed() const noexcept { return std::string_view{in}.substr(in_head); }

    // The server adds its own reader and writer on stream.fileno(), so the
    // stream's awaits (readable(), read_some(), ...) must never be used.
    // Destroying it removes those registrations, then closes the descriptor.
    muxio::TcpStream stream;
    std::uint64_t id;
    Parser parser;
    // Input: bytes [in_head, size) of `in` are received and not yet
    // consumed by the parser.
    std::string in;
    std::size_t in_head = 0;
    // Output: bytes [out_head, size) of `out` are replies not yet sent.
    std::string out;
    std::size_t out_head = 0;
    // Armed while the unsent replies are over the soft limit.
    muxio::TimerHandle soft_limit_timer;
    bool reading = false;  // a reader is registered
    bool writing = false;  // a writer is registered
    bool paused = false;   // replies over the high-water mark: requests wait
    bool eof = false;      // the client shut down its side
    bool closing = false;  // close once the replies are out (QUIT, protocol error)
    bool doomed = false;   // over a limit: close at once, unsent replies and all
};

Server::Server(muxio::Reactor& reactor, Dispatcher& dispatcher, ServerOptions options)
    : reactor_{reactor}, dispatcher_{dispatcher}, options_{std::move(options)} {
    if (std::string problem = check_options(options_); !problem.empty()) {
        throw std::invalid_argument(problem);
    }
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
    scratch_.resize(read_chunk);
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

std::size_t Server::buffer_capacity() const noexcept {
    std::size_t total = 0;
    for (const auto& [fd, connection] : connections_) {
        total += connection->in.capacity() + connection->out.capacity();
    }
    return total;
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
            if (connections_.size() >= options_.max_clients) {
                refuse(std::move(*accepted));
            } else {
                add_connection(std::move(*accepted));
            }
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

void Server::refuse(muxio::TcpStream stream) noexcept {
    ++stats_.rejected_connections;
    // One write on a fresh socket: its send buffer is empty, so the line
    // goes whole or (the client already gone) not at all. Then the stream
    // closes as it goes out of scope.
    try {
        std::error_code error;
        (void)stream.try_write(std::as_bytes(std::span{max_clients_reply.data(), max_clients_reply.size()}), error);
        logger().info("connection refused: max number of clients ({}) reached", options_.max_clients);
    } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): the client is refused either way
    }
}

void Server::add_connection(muxio::TcpStream stream) {
    const int fd = stream.fileno();
    try {
        try {
            // Replies go out at once instead of waiting for the client's next
            // request under Nagle's algorithm; failing is harmless.
            stream.set_nodelay(true);
        } catch (const std::system_error& error) {
            logger().debug("{}", error.what());
        }
        // Until the reactor watches it, the connection belongs to `owned`:
        // any failure below closes it as the exception unwinds.
        auto owned = std::make_unique<Connection>(std::move(stream), next_id_++, options_.limits);
        Connection& connection = *owned;
        update_interest(connection);
        connections_.emplace(fd, std::move(owned));
        ++stats_.accepted;
        logger().debug("connection {} accepted (fd {})", connection.id, fd);
    } catch (const std::exception& error) {
        // E.g. select's FD_SETSIZE, or no memory left: refuse this client,
        // keep the others and the listener.
        ++stats_.registration_failures;
        logger().warn("connection refused: cannot serve fd {}: {}", fd, error.what());
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
    if (c.in_head == c.in.size()) {
        c.in.clear();
        c.in_head = 0;
    }
    const std::size_t held = c.unparsed_size();
    const bool direct = held >= read_chunk;
    std::span<char> room{scratch_};
    if (direct) {
        const std::size_t wanted = c.parser.bytes_wanted();
        std::size_t want = read_chunk;
        if (wanted > held) {
            want = std::clamp(wanted - held, read_chunk, std::min(held, max_read_chunk));
        }
        // One byte past the limit is enough to know the limit is passed.
        want = std::min(want, options_.max_query_buffer - std::min(held, options_.max_query_buffer) + 1);
        make_room(c, held + want, wanted);
        c.in.resize(held + want);
        room = std::span{c.in.data() + held, want};
    }
    std::error_code error;
    const std::optional<std::size_t> got = c.stream.try_read(std::as_writable_bytes(room), error);
    if (direct) {
        c.in.resize(held + got.value_or(0));
    }
    if (!got) {
        if (error) {
            logger().debug("connection {}: read: {}", c.id, std::strerror(error.value()));
            drop(c);
        }
        return;
    }
    stats_.bytes_received += *got;
    if (*got == 0) {
        c.eof = true;  // answer what was sent, then close
    }
    const std::string_view fresh{scratch_.data(), *got};
    if (!direct && held > 0) {
        c.in.erase(0, c.in_head);  // less than a read: a cheap move
        c.in_head = 0;
        c.in.append(fresh);
    } else if (!direct) {
        // Nothing buffered: the requests run from the shared buffer, and
        // only an unfinished rest (or requests held back by the output
        // bound) is copied to the connection.
        const std::size_t done = c.paused ? 0 : run_requests(c, fresh);
        if (done < fresh.size()) {
            c.in.assign(fresh.substr(done));
            c.in_head = 0;
        }
        settle(c);
        return;
    }
    note_buffers(c);
    pump(c);
}

// Makes `c.in` hold `size` bytes from its unparsed front without moving them
// again soon: capacity grows geometrically, as a string's does, but not
// past `ceiling` (the end of the request in progress, where known), so a
// large request does not end up with twice its size.
void Server::make_room(Connection& c, std::size_t size, std::size_t ceiling) {
    if (c.in_head > 0) {
        // The parser's offsets are relative to in_head: moving the unparsed
        // bytes to the front keeps them right.
        c.in.erase(0, c.in_head);
        c.in_head = 0;
    }
    if (size <= c.in.capacity()) {
        return;
    }
    // reserve() on a non-empty string may double whatever it is asked;
    // an empty one takes the capacity given.
    std::string bigger;
    bigger.reserve(std::min(std::max(size, 2 * c.in.capacity()), std::max(size, ceiling)));
    bigger.append(c.in);
    c.in.swap(bigger);
}

std::size_t Server::run_requests(Connection& c, std::string_view input) {
    std::size_t done = 0;
    while (!c.closing && !c.doomed && c.pending() < options_.output_high_water) {
        const Parser::Result result = c.parser.parse(input.substr(done));
        if (result.status == Parser::Status::need_more) {
            done += result.consumed;
            // Nothing held: nothing announced either.
            if (const std::size_t held = input.size() - done; held > 0) {
                const std::size_t wanted = c.parser.bytes_wanted();
                if (held > options_.max_query_buffer || wanted > options_.max_query_buffer) {
                    refuse_request(c, std::max(held, wanted), wanted > held);
                }
            }
            break;
        }
        if (result.status == Parser::Status::error) {
            ++stats_.protocol_errors;
            logger().info("connection {}: {}", c.id, c.parser.error());
            reply::error(c.out, fmt::format("ERR {}", c.parser.error()));
            c.closing = true;
            break;
        }
        if (c.parser.request_size() > options_.max_query_buffer) {
            // Arrived within one read: refused all the same, so that the
            // outcome does not depend on how the request was split.
            refuse_request(c, c.parser.request_size(), false);
            break;
        }
        // The arguments view the input: run the command before consuming it.
        // `out` holds sent bytes before out_head; the limit is on the rest.
        const std::size_t out_limit =
            c.out_head + std::min(options_.max_output_buffer, std::numeric_limits<std::size_t>::max() - c.out_head);
        const After after = dispatcher_.execute(c.parser.args(), c.out, out_limit);
        done += result.consumed;
        if (after == After::over_limit) {
            ++stats_.output_limit_disconnects;
            logger().warn("connection {} closed: its replies would exceed the output buffer limit of {} bytes", c.id,
                          options_.max_output_buffer);
            c.doomed = true;
        } else if (after == After::close) {
            c.closing = true;
        }
    }
    if (!c.closing && !c.doomed && c.pending() >= options_.output_high_water && !c.paused) {
        c.paused = true;
        ++stats_.read_pauses;
    }
    return done;
}

void Server::refuse_request(Connection& c, std::size_t size, bool announced) {
    ++stats_.query_limit_disconnects;
    logger().warn("connection {} closed: its request ({} bytes{}) exceeds the query buffer limit of {} bytes", c.id,
                  size, announced ? " at least, as announced" : "", options_.max_query_buffer);
    c.doomed = true;
}

void Server::run_buffered(Connection& c) {
    c.in_head += run_requests(c, c.unparsed());
    if (c.in_head == c.in.size()) {
        c.in_head = 0;
        if (c.in.capacity() > keep_input) {
            std::string{}.swap(c.in);
        } else {
            c.in.clear();
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
    if (c.out.capacity() > keep_output) {
        std::string{}.swap(c.out);
    }
    return true;
}

// After anything happened on a connection: answer the complete requests
// buffered (as many as the output bound allows), then settle().
void Server::pump(Connection& c) {
    if (!c.paused) {
        run_buffered(c);
    }
    settle(c);
}

// Sends the replies with as few writes as the kernel permits, runs requests
// held back as the replies drain, enforces the limits, and watches for what
// comes next.
void Server::settle(Connection& c) {
    note_buffers(c);
    if (c.doomed) {
        drop(c);
        return;
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
        run_buffered(c);
        note_buffers(c);
        if (c.doomed) {
            drop(c);
            return;
        }
    }
    // Not paused means every complete request is answered; after the
    // client's EOF whatever remains is a fragment that will never complete.
    if (c.pending() == 0 && (c.closing || (c.eof && !c.paused))) {
        drop(c);
        return;
    }
    if (options_.output_soft_limit > 0) {
        watch_soft_limit(c);
        if (c.doomed) {
            drop(c);
            return;
        }
    }
    update_interest(c);
}

void Server::watch_soft_limit(Connection& c) {
    if (c.pending() <= options_.output_soft_limit) {
        c.soft_limit_timer.cancel();
        return;
    }
    if (c.soft_limit_timer.pending()) {
        return;
    }
    const auto over = [this](Connection& connection) {
        ++stats_.output_limit_disconnects;
        logger().warn("connection {} closed: its unsent replies stayed over the soft limit of {} bytes for {} ms",
                      connection.id, options_.output_soft_limit, options_.output_soft_time.count());
    };
    if (options_.output_soft_time.count() <= 0) {
        over(c);
        c.doomed = true;
        return;
    }
    Connection* const connection = &c;
    c.soft_limit_timer = reactor_.call_later(options_.output_soft_time, [this, connection, over] {
        // Cancelled whenever the replies drain below the limit, and when the
        // connection goes: still over it.
        guarded(connection, [&] {
            over(*connection);
            drop(*connection);
        });
    });
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

void Server::note_buffers(const Connection& c) noexcept {
    stats_.peak_input_buffer = std::max(stats_.peak_input_buffer, c.in.capacity());
    stats_.peak_output_buffer = std::max(stats_.peak_output_buffer, c.out.capacity());
}

void Server::drop(Connection& c) noexcept {
    const int fd = c.stream.fileno();
    logger().debug("connection {} closed", c.id);
    // Destroys c; its stream unregisters the descriptor, then closes it.
    connections_.erase(fd);
}

}  // namespace resp
