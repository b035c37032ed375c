#include "daemon.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "muxio/server.hpp"
#include "muxio/transport.hpp"

namespace muxio::apps::daemon {

namespace {

using namespace std::chrono_literals;

// The longest line either service takes; a longer one ends the connection,
// so a client cannot make the daemon buffer without end.
constexpr std::size_t max_tcp_line = std::size_t{64} * 1024;
constexpr std::size_t max_control_line = 1024;
constexpr std::size_t read_size = 4096;

Reactor::Duration to_duration(Seconds seconds) {
    return std::chrono::ceil<Reactor::Duration>(seconds);
}

// True if a process accepts connections on the Unix socket at `path`: then
// the path is another daemon's, and binding would steal it.
bool someone_listens(const std::string& path) {
    struct stat info {};
    if (::stat(path.c_str(), &info) != 0 || !S_ISSOCK(info.st_mode)) {
        return false;
    }
    const SocketAddress address = SocketAddress::unix_path(path);
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return false;
    }
    // A Unix connect never waits for the listener: it succeeds or fails at once.
    const bool connected = ::connect(fd, address.data(), address.size()) == 0;
    ::close(fd);
    return connected;
}

}  // namespace

std::string_view to_string(State state) noexcept {
    switch (state) {
        case State::running:
            return "running";
        case State::draining:
            return "draining";
        case State::stopping:
            return "stopping";
    }
    return "unknown";
}

// Everything the connections and the timer share. It answers the control
// commands itself (ControlTarget), so a control client needs nothing but this.
struct Daemon::Core final : ControlTarget {
    Core(Reactor& loop, std::shared_ptr<spdlog::logger> logger, Config initial, DaemonOptions settings);

    // ControlTarget.
    [[nodiscard]] StatusReport status() const override;
    bool stop() override { return request_stop("control command 'stop'"); }
    ReloadResult reload() override;

    bool request_stop(std::string_view reason);
    void stop_accepting();
    void end_drain();
    void apply_log_level();
    void schedule_heartbeat(Reactor::TimePoint when);
    void heartbeat();

    Reactor& reactor;
    std::shared_ptr<spdlog::logger> log;
    Config config;
    DaemonOptions options;
    SocketAddress tcp_address;

    State state = State::running;
    Reactor::TimePoint started = reactor.time();
    Reactor::TimePoint next_tick{};
    std::optional<Reactor::TimePoint> drain_deadline;
    TimerHandle heartbeat_timer;
    std::uint64_t generation = 1;
    std::uint64_t ticks = 0;
    std::uint64_t served = 0;
    std::uint64_t connection_errors = 0;
    std::size_t connections = 0;
    std::size_t control_clients = 0;
    bool accepting = true;

    // Last: they free their connections, whose protocols count into the
    // fields above, when they are destroyed. Stopped at different moments:
    // the TCP listener when the stop begins, the TCP connections when the
    // drain ends, the control channel then too.
    Server tcp;
    Server control;
};

namespace {

using Core = Daemon::Core;

// The reply to every complete line in `lines`, each answered by `answer`
// (nullopt: no reply), ending with an error line if a line was too long:
// what one read brings is answered with one write.
template <class Answer>
std::string answer_lines(LineBuffer& lines, Answer&& answer) {
    std::string reply;
    while (std::optional<std::string> line = lines.next_line()) {
        if (std::optional<std::string> out = answer(*line)) {
            reply += *out;
            reply += '\n';
        }
    }
    if (lines.overflowed()) {
        reply += "error: line too long\n";
    }
    return reply;
}

// What a connection can end with through the peer's or the network's doing,
// as opposed to the daemon's (the reactor refused the descriptor, memory
// ran out), which is worth a warning.
bool peer_error(const std::error_code& error) noexcept {
    return error == std::errc::connection_reset || error == std::errc::broken_pipe || error == std::errc::timed_out ||
           error == std::errc::not_connected || error == std::errc::host_unreachable ||
           error == std::errc::network_unreachable;
}

// A connection of either service: reads lines, answers what one read brings
// with one write, and reads nothing more while an answer is not sent (the
// write queue's high water mark is zero), so a client that does not read
// cannot make the daemon buffer without end. Counted in `Core::*counter`
// for as long as it exists.
class LineProtocol : public Protocol {
public:
    LineProtocol(Core& core, std::size_t Core::*counter, std::size_t max_line)
        : core_{core}, counter_{counter}, lines_{max_line} {
        ++(core_.*counter_);
    }
    ~LineProtocol() override { --(core_.*counter_); }
    LineProtocol(const LineProtocol&) = delete;
    LineProtocol& operator=(const LineProtocol&) = delete;
    LineProtocol(LineProtocol&&) = delete;
    LineProtocol& operator=(LineProtocol&&) = delete;

    void connection_made(Transport& transport) override { transport_ = &transport; }
    void data_received(std::span<const std::byte> data) override {
        lines_.append(data);
        const std::string reply = answer(lines_);
        if (!reply.empty()) {
            transport_->write(reply);
        }
        if (lines_.overflowed()) {
            overflowed();
            transport_->close();
        }
    }
    void pause_writing() override { transport_->pause_reading(); }
    void resume_writing() override { transport_->resume_reading(); }
    void connection_lost(std::error_code reason) override {
        if (!reason) {
            ended_by_client();
        } else if (reason == std::errc::connection_aborted || reason == std::errc::operation_canceled) {
            ended_by_daemon();
        } else {
            ++core_.connection_errors;
            failed(reason, peer_error(reason));
        }
    }

protected:
    // The reply to the complete lines received.
    virtual std::string answer(LineBuffer& lines) = 0;
    virtual void overflowed() {}
    virtual void ended_by_client() {}
    virtual void ended_by_daemon() {}
    // `by_peer`: a reset or the like, else the daemon's own failure.
    virtual void failed(std::error_code reason, bool by_peer) = 0;

    Core& core_;
    Transport* transport_ = nullptr;

private:
    std::size_t Core::*counter_;
    LineBuffer lines_;
};

// One TCP client: the greeting, then each line sent back.
class TcpClient final : public LineProtocol {
public:
    TcpClient(Core& core, const SocketAddress& peer)
        : LineProtocol{core, &Core::connections, max_tcp_line}, peer_{peer} {
        ++core.served;
        core.log->debug("connection from {}", peer_);
    }
    void connection_made(Transport& transport) override {
        LineProtocol::connection_made(transport);
        if (!core_.config.greeting.empty()) {
            transport.write(core_.config.greeting + '\n');
        }
    }

private:
    std::string answer(LineBuffer& lines) override {
        return answer_lines(lines, [](std::string& line) { return std::move(line); });
    }
    void overflowed() override {
        core_.log->warn("connection from {}: line longer than {} bytes; closing", peer_, max_tcp_line);
    }
    void ended_by_client() override { core_.log->debug("connection from {} closed by the client", peer_); }
    void ended_by_daemon() override { core_.log->debug("connection from {} closed by the daemon", peer_); }
    void failed(std::error_code reason, bool by_peer) override {
        if (by_peer) {
            core_.log->debug("connection from {}: {}", peer_, reason.message());
        } else {
            core_.log->warn("connection from {}: cannot serve it, closed it: {}", peer_, reason.message());
        }
    }

    SocketAddress peer_;
};

// One control client: each line is a command, each answered by one line.
class ControlClient final : public LineProtocol {
public:
    explicit ControlClient(Core& core) : LineProtocol{core, &Core::control_clients, max_control_line} {}

private:
    std::string answer(LineBuffer& lines) override {
        return answer_lines(lines, [this](const std::string& line) { return handle_control_line(line, core_); });
    }
    void failed(std::error_code reason, bool by_peer) override {
        if (by_peer) {
            core_.log->debug("control client: {}", reason.message());
        } else {
            core_.log->warn("control client: cannot serve it, closed it: {}", reason.message());
        }
    }
};

ServerOptions line_server_options() {
    ServerOptions options;
    options.transport.read_size = read_size;
    options.transport.high_water = 0;
    options.transport.low_water = 0;
    return options;
}

}  // namespace

Daemon::Core::Core(Reactor& loop, std::shared_ptr<spdlog::logger> logger, Config initial, DaemonOptions settings)
    : reactor{loop},
      log{std::move(logger)},
      config{std::move(initial)},
      options{std::move(settings)},
      tcp{loop, [this](const SocketAddress& peer) { return std::make_unique<TcpClient>(*this, peer); },
          line_server_options()},
      control{loop, [this](const SocketAddress&) { return std::make_unique<ControlClient>(*this); },
              line_server_options()} {}

// ----- Core ---------------------------------------------------------------------------------

StatusReport Core::status() const {
    StatusReport report;
    report.pid = ::getpid();
    report.uptime = std::chrono::duration<double>(reactor.time() - started).count();
    report.ticks = ticks;
    report.connections = connections;
    report.served = served;
    report.errors = connection_errors;
    report.control_clients = control_clients;
    report.generation = generation;
    report.state = to_string(state);
    return report;
}

ReloadResult Core::reload() {
    if (options.config_path.empty()) {
        log->warn("reload: no configuration file (start with --config FILE); generation {} kept", generation);
        return {false, generation, "no configuration file (start with --config FILE)"};
    }
    Config next;
    try {
        next = load_config(options.config_path);
    } catch (const std::exception& error) {
        // ConfigError, or anything else reading the file ran into: whatever
        // it is, the configuration in force stays and the caller hears why.
        log->error("reload failed, generation {} kept: {}", generation, error.what());
        return {false, generation, error.what()};
    }
    const bool new_interval = next.interval != config.interval;
    config = std::move(next);
    ++generation;
    apply_log_level();
    if (new_interval && state != State::stopping) {
        heartbeat_timer.cancel();
        schedule_heartbeat(reactor.time() + to_duration(config.interval));
    }
    log->info("reloaded {}: generation {}", options.config_path, generation);
    return {true, generation, {}};
}

bool Core::request_stop(std::string_view reason) {
    if (state != State::running) {
        return false;
    }
    state = State::draining;
    drain_deadline = reactor.time() + to_duration(config.drain_timeout);
    stop_accepting();
    log->info("{}: stopping; draining {} connection(s) for up to {} s", reason, connections,
              config.drain_timeout.count());
    return true;
}

void Core::stop_accepting() {
    if (!accepting) {
        return;
    }
    accepting = false;
    tcp.stop_listening();  // new connections are refused from now on
    log->info("no longer accepting connections on {}", tcp_address);
}

void Core::end_drain() {
    if (state == State::stopping) {
        return;
    }
    stop_accepting();
    if (connections != 0) {
        log->warn("closing {} connection(s) still open at the end of the drain", connections);
    }
    state = State::stopping;
    drain_deadline.reset();
    heartbeat_timer.cancel();
    // Each connection ends now and is freed in the next iteration; the
    // control listener closes and removes its socket file.
    tcp.close();
    control.close();
}

void Core::apply_log_level() {
    log->set_level(options.log_level_override.value_or(config.log_level.value_or(spdlog::level::warn)));
}

void Core::schedule_heartbeat(Reactor::TimePoint when) {
    next_tick = when;
    heartbeat_timer = reactor.call_at(when, [this] { heartbeat(); });
}

void Core::heartbeat() {
    ++ticks;
    log->info("heartbeat: uptime {:.3f} s, {} ticks, {} connection(s) open, {} served, generation {}, {}",
              std::chrono::duration<double>(reactor.time() - started).count(), ticks, connections, served, generation,
              to_string(state));
    // On a fixed grid, so heartbeats do not drift; one that came too late
    // for the next slot skips it rather than firing twice.
    const Reactor::Duration interval = to_duration(config.interval);
    Reactor::TimePoint next = next_tick + interval;
    if (const Reactor::TimePoint now = reactor.time(); next <= now) {
        next = now + interval;
    }
    schedule_heartbeat(next);
}

// ----- Daemon -------------------------------------------------------------------------------

Daemon::Daemon(Reactor& reactor, std::shared_ptr<spdlog::logger> log, Config config, DaemonOptions options)
    : core_{std::make_unique<Core>(reactor, std::move(log), std::move(config), std::move(options))} {
    Core& core = *core_;
    core.apply_log_level();
    core.tcp_address = core.tcp.listen(core.options.tcp_address);
    if (!core.options.control_path.empty()) {
        if (someone_listens(core.options.control_path)) {
            throw std::runtime_error(
                fmt::format("control socket {} is in use by a running process", core.options.control_path));
        }
        (void)core.control.listen_unix(core.options.control_path);
    }
    core.schedule_heartbeat(reactor.time() + to_duration(core.config.interval));
}

Daemon::~Daemon() {
    core_->heartbeat_timer.cancel();
}

const SocketAddress& Daemon::tcp_address() const noexcept {
    return core_->tcp_address;
}

const std::string& Daemon::control_path() const noexcept {
    return core_->options.control_path;
}

bool Daemon::request_stop(std::string_view reason) {
    return core_->request_stop(reason);
}

void Daemon::end_drain() {
    core_->end_drain();
}

ReloadResult Daemon::reload() {
    return core_->reload();
}

bool Daemon::advance() {
    Core& core = *core_;
    if (core.state == State::draining && (core.connections == 0 || core.reactor.time() >= *core.drain_deadline)) {
        core.end_drain();
    }
    return core.state == State::stopping && open_connections() == 0;
}

State Daemon::state() const noexcept {
    return core_->state;
}

std::optional<Reactor::TimePoint> Daemon::drain_deadline() const noexcept {
    return core_->drain_deadline;
}

std::size_t Daemon::connections() const noexcept {
    return core_->connections;
}

std::size_t Daemon::open_connections() const noexcept {
    return core_->tcp.connection_count() + core_->control.connection_count();
}

StatusReport Daemon::status() const {
    return core_->status();
}

const Config& Daemon::config() const noexcept {
    return core_->config;
}

}  // namespace muxio::apps::daemon
