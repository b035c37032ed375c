#include "server.hpp"

#include <sys/socket.h>

#include <algorithm>
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

#include "muxio/log.hpp"
#include "muxio/net.hpp"

namespace resp {

spdlog::logger& logger() {
    return muxio::logger();
}

namespace {

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
constexpr std::size_t no_direct_read = std::numeric_limits<std::size_t>::max();
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

// One client: its bytes go through the parser to the dispatcher, the replies
// of each batch into the server's out_ and out with one write. The
// transport queues what the kernel does not take; past output_high_water
// (the transport's high water mark) requests wait and reading stops until
// the replies drain to a quarter of it.
class Server::Connection final : public muxio::Protocol {
public:
    Connection(Server& server, std::uint64_t id) : server_{server}, id_{id}, parser_{server.options_.limits} {}

    void connection_made(muxio::Transport& transport) override {
        transport_ = &transport;
        // Watching the descriptor now, rather than once this returns, shows
        // here whether the reactor takes it (select does not past
        // FD_SETSIZE): such a connection was never served.
        transport.resume_reading();
        if (transport.is_closed()) {
            ++server_.setup_failures_;
            refused_ = true;
            logger().warn("connection refused: the reactor cannot watch its descriptor");
            return;
        }
        ++server_.stats_.accepted;
        logger().debug("connection {} accepted (fd {})", id_, transport.fileno());
    }

    std::span<std::byte> get_buffer(std::size_t size_hint) override {
        (void)size_hint;
        end_direct_read(0);
        if (in_head_ == in_.size()) {
            in_.clear();
            in_head_ = 0;
        }
        // Nothing much buffered: the transport reads into the server's
        // shared buffer, and only an unfinished rest is copied here.
        const std::size_t held = in_.size() - in_head_;
        if (held < read_chunk) {
            return {};
        }
        const std::size_t limit = server_.options_.max_query_buffer;
        const std::size_t wanted = parser_.bytes_wanted();
        std::size_t want = read_chunk;
        if (wanted > held) {
            want = std::clamp(wanted - held, read_chunk, std::min(held, max_read_chunk));
        }
        // One byte past the limit is enough to know the limit is passed.
        want = std::min(want, limit - std::min(held, limit) + 1);
        make_room(held + want, wanted);
        in_.resize(held + want);
        direct_held_ = held;
        return std::as_writable_bytes(std::span{in_.data() + held, want});
    }

    void data_received(std::span<const std::byte> data) override {
        guarded([&] {
            server_.stats_.bytes_received += data.size();
            if (direct_held_ != no_direct_read) {
                end_direct_read(data.size());
                server_.note_buffers(in_.capacity(), 0);
                serve_buffered();
                return;
            }
            const std::string_view fresh{reinterpret_cast<const char*>(data.data()), data.size()};
            if (in_head_ < in_.size()) {
                in_.erase(0, in_head_);  // less than a read: a cheap move
                in_head_ = 0;
                in_.append(fresh);
                server_.note_buffers(in_.capacity(), 0);
                serve_buffered();
                return;
            }
            serve_fresh(fresh);
        });
    }

    bool eof_received() override {
        end_direct_read(0);
        eof_ = true;
        // Every complete request is answered unless some wait for the
        // replies to drain; whatever remains then is a fragment that will
        // never complete. The transport closes once the replies are out.
        return held_back_;
    }

    void pause_writing() override {
        ++server_.stats_.read_pauses;
        transport_->pause_reading();
    }

    void resume_writing() override {
        if (transport_->is_closing()) {
            return;
        }
        guarded([&] {
            serve_buffered();
            if (!transport_->is_closing() && !transport_->writing_paused()) {
                transport_->resume_reading();
            }
        });
    }

    bool timed_out(muxio::TimeoutKind kind) override {
        if (kind == muxio::TimeoutKind::deadline &&
            transport_->write_buffer_size() <= server_.options_.output_soft_limit) {
            return true;  // drained below the soft limit meanwhile
        }
        if (kind == muxio::TimeoutKind::deadline) {
            ++server_.stats_.output_limit_disconnects;
            logger().warn("connection {} closed: its unsent replies stayed over the soft limit of {} bytes for {} ms",
                          id_, server_.options_.output_soft_limit, server_.options_.output_soft_time.count());
        }
        return false;
    }

    void connection_lost(std::error_code reason) override {
        if (!refused_) {
            if (reason) {
                logger().debug("connection {} closed: {}", id_, reason.message());
            } else {
                logger().debug("connection {} closed", id_);
            }
        }
        transport_ = nullptr;
    }

    [[nodiscard]] std::size_t input_capacity() const noexcept { return in_.capacity(); }

private:
    [[nodiscard]] std::string_view unparsed() const noexcept { return std::string_view{in_}.substr(in_head_); }

    // After a read into in_'s tail (get_buffer()): only `got` bytes came.
    void end_direct_read(std::size_t got) {
        if (direct_held_ != no_direct_read) {
            in_.resize(direct_held_ + got);
            direct_held_ = no_direct_read;
        }
    }

    // std::bad_alloc for a request too large for the memory left, say:
    // this client goes, the server stays.
    template <class F>
    void guarded(F&& body) {
        try {
            body();
        } catch (const std::exception& error) {
            logger().warn("connection {} closed: {}", id_, error.what());
            server_.out_.clear();
            if (transport_ != nullptr) {
                transport_->abort();
            }
        }
    }

    // Makes in_ hold `size` bytes from its unparsed front without moving
    // them again soon: capacity grows geometrically, as a string's does,
    // but not past `ceiling` (the end of the request in progress, where
    // known), so a large request does not end up with twice its size.
    void make_room(std::size_t size, std::size_t ceiling) {
        if (in_head_ > 0) {
            // The parser's offsets are relative to in_head_: moving the
            // unparsed bytes to the front keeps them right.
            in_.erase(0, in_head_);
            in_head_ = 0;
        }
        if (size <= in_.capacity()) {
            return;
        }
        // reserve() on a non-empty string may double whatever it is asked;
        // an empty one takes the capacity given.
        std::string bigger;
        bigger.reserve(std::min(std::max(size, 2 * in_.capacity()), std::max(size, ceiling)));
        bigger.append(in_);
        in_.swap(bigger);
    }

    // Requests straight from a read into the server's shared buffer, with
    // nothing buffered before: only an unfinished rest (or requests held
    // back by the output bound) is copied to in_.
    void serve_fresh(std::string_view fresh) {
        held_back_ = false;
        const std::size_t done = run_requests(fresh);
        if (!closing_ && !doomed_ && done < fresh.size()) {
            in_.assign(fresh.substr(done));
            in_head_ = 0;
            server_.note_buffers(in_.capacity(), 0);
        }
        send_replies();
        if (closing_ || doomed_) {
            return;
        }
        if (held_back_ && !transport_->writing_paused()) {
            serve_buffered();
            return;
        }
        after_batch();
    }

    // Answers the complete requests buffered, a batch at a time while the
    // kernel takes the replies, until they run out or the output is full.
    void serve_buffered() {
        for (;;) {
            held_back_ = false;
            in_head_ += run_requests(unparsed());
            send_replies();
            if (closing_ || doomed_) {
                return;
            }
            if (!held_back_ || transport_->writing_paused()) {
                break;
            }
        }
        if (in_head_ == in_.size()) {
            in_head_ = 0;
            if (in_.capacity() > keep_input) {
                std::string{}.swap(in_);
            } else {
                in_.clear();
            }
        }
        after_batch();
    }

    std::size_t run_requests(std::string_view input) {
        const ServerOptions& options = server_.options_;
        std::string& out = server_.out_;
        std::size_t done = 0;
        while (!closing_ && !doomed_) {
            const std::size_t queued = transport_->write_buffer_size();
            if (transport_->writing_paused() || out.size() + queued >= options.output_high_water) {
                held_back_ = true;
                break;
            }
            const Parser::Result result = parser_.parse(input.substr(done));
            if (result.status == Parser::Status::need_more) {
                done += result.consumed;
                // Nothing held: nothing announced either.
                if (const std::size_t held = input.size() - done; held > 0) {
                    const std::size_t wanted = parser_.bytes_wanted();
                    if (held > options.max_query_buffer || wanted > options.max_query_buffer) {
                        refuse_request(std::max(held, wanted), wanted > held);
                    }
                }
                break;
            }
            if (result.status == Parser::Status::error) {
                ++server_.stats_.protocol_errors;
                logger().info("connection {}: {}", id_, parser_.error());
                reply::error(out, fmt::format("ERR {}", parser_.error()));
                closing_ = true;
                break;
            }
            if (parser_.request_size() > options.max_query_buffer) {
                // Arrived within one read: refused all the same, so that the
                // outcome does not depend on how the request was split.
                refuse_request(parser_.request_size(), false);
                break;
            }
            // The arguments view the input: run the command before consuming
            // it. The limit is on the unsent replies: queued, then built.
            const std::size_t out_limit = options.max_output_buffer - std::min(queued, options.max_output_buffer);
            const After after = server_.dispatcher_.execute(parser_.args(), out, out_limit);
            done += result.consumed;
            if (after == After::over_limit) {
                ++server_.stats_.output_limit_disconnects;
                logger().warn("connection {} closed: its replies would exceed the output buffer limit of {} bytes", id_,
                              options.max_output_buffer);
                doomed_ = true;
            } else if (after == After::close) {
                closing_ = true;
            }
        }
        return done;
    }

    void refuse_request(std::size_t size, bool announced) {
        ++server_.stats_.query_limit_disconnects;
        logger().warn("connection {} closed: its request ({} bytes{}) exceeds the query buffer limit of {} bytes", id_,
                      size, announced ? " at least, as announced" : "", server_.options_.max_query_buffer);
        doomed_ = true;
    }

    // The batch's replies in one write; a connection over a limit goes at
    // once, unsent replies and all.
    void send_replies() {
        std::string& out = server_.out_;
        if (doomed_) {
            out.clear();
            transport_->abort();
            return;
        }
        if (!out.empty()) {
            server_.note_buffers(0, out.capacity());
            transport_->write(std::string_view{out});
            out.clear();
            if (out.capacity() > keep_output) {
                std::string{}.swap(out);
            }
            server_.note_buffers(0, transport_->write_buffer_size());
        }
        if (closing_) {
            transport_->close();
        }
    }

    void after_batch() {
        if (eof_ && !held_back_) {
            transport_->close();
            return;
        }
        watch_soft_limit();
    }

    // client-output-buffer-limit's soft limit, on the transport's deadline:
    // set when the unsent replies go over it, looked at when it passes
    // (timed_out()), cleared when they are seen below it.
    void watch_soft_limit() {
        const ServerOptions& options = server_.options_;
        if (options.output_soft_limit == 0) {
            return;
        }
        if (transport_->write_buffer_size() <= options.output_soft_limit) {
            transport_->clear_deadline();
            return;
        }
        if (transport_->deadline() != muxio::Transport::TimePoint::max()) {
            return;
        }
        if (options.output_soft_time.count() <= 0) {
            ++server_.stats_.output_limit_disconnects;
            logger().warn("connection {} closed: its unsent replies went over the soft limit of {} bytes", id_,
                          options.output_soft_limit);
            transport_->abort();
            return;
        }
        transport_->set_deadline_after(options.output_soft_time);
    }

    Server& server_;
    muxio::Transport* transport_ = nullptr;
    std::uint64_t id_;
    Parser parser_;
    // Bytes [in_head_, size) of in_ are received and not yet consumed by
    // the parser.
    std::string in_;
    std::size_t in_head_ = 0;
    // get_buffer() handed out in_'s tail after this many bytes.
    std::size_t direct_held_ = no_direct_read;
    bool held_back_ = false;  // complete requests wait for the replies to drain
    bool eof_ = false;        // the client shut down its side
    bool closing_ = false;    // close once the replies are out (QUIT, protocol error)
    bool doomed_ = false;     // over a limit: closed at once, unsent replies and all
    bool refused_ = false;    // the reactor refused the descriptor
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
    muxio::ServerOptions serving;
    serving.transport.high_water = options_.output_high_water;
    serving.transport.low_water = options_.output_high_water / 4;
    serving.transport.read_size = read_chunk;
    serving.max_connections = options_.max_clients;
    serving.over_limit = muxio::OverLimit::refuse;
    serving.accepts_per_wakeup = accepts_per_wakeup;
    serving.accept_retry = options_.accept_pause;
    // Replies go out at once instead of waiting for the client's next
    // request under Nagle's algorithm.
    serving.tcp_nodelay = true;
    auto server = std::make_unique<muxio::Server>(
        reactor_, [this](const muxio::SocketAddress&) { return std::make_unique<Connection>(*this, next_id_++); },
        serving);
    server->set_refusal_handler([this](int fd, const muxio::SocketAddress&) {
        // One send on a fresh socket: its send buffer is empty, so the line
        // goes whole or (the client already gone) not at all.
        (void)::send(fd, max_clients_reply.data(), max_clients_reply.size(), MSG_NOSIGNAL);
        logger().info("connection refused: max number of clients ({}) reached", options_.max_clients);
    });
    muxio::ListenOptions listen;
    // Restarting while old connections linger in TIME_WAIT must work.
    listen.reuse_address = true;
    listen.reuse_port = options_.reuse_port;
    port_ = server->listen(*address, listen).port();
    server_ = std::move(server);
    dispatcher_.set_port(port_);
    logger().info("listening on {}:{}", options_.bind, port_);
    return port_;
}

void Server::close() noexcept {
    if (server_) {
        closed_server_stats_ = server_->stats();
        // Ends every connection now, from here.
        server_.reset();
    }
}

const Server::Stats& Server::stats() const noexcept {
    const muxio::ServerStats& serving = server_ ? server_->stats() : closed_server_stats_;
    stats_.accept_pauses = serving.accept_pauses;
    stats_.rejected_connections = serving.refused;
    stats_.registration_failures = serving.setup_failures + setup_failures_;
    return stats_;
}

std::size_t Server::buffer_capacity() const {
    std::size_t total = out_.capacity();
    if (server_) {
        server_->for_each_connection([&total](muxio::Transport& transport) {
            total +=
                static_cast<const Connection&>(transport.protocol()).input_capacity() + transport.write_buffer_size();
        });
    }
    return total;
}

void Server::note_buffers(std::size_t input, std::size_t output) noexcept {
    stats_.peak_input_buffer = std::max(stats_.peak_input_buffer, input);
    stats_.peak_output_buffer = std::max(stats_.peak_output_buffer, output);
}

}  // namespace resp
