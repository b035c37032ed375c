// TLS over OpenSSL: contexts (certificates, verification, ALPN), a TLS
// state machine without I/O (TlsEngine), TLS streams for coroutines
// (TlsStream over any connected StreamSocket), and TLS for the callback
// Transport and Server (tls_filter()). Built as the library
// muxio::tls when MUXIO_HAS_TLS is 1 (CMake option MUXIO_TLS); this header
// names no OpenSSL type, so including it needs no OpenSSL headers.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "muxio/net.hpp"
#include "muxio/task.hpp"
#include "muxio/transport.hpp"

namespace muxio {

// ----- Errors ---------------------------------------------------------------------

/// The TLS failures muxio tells apart; their std::error_category is
/// tls_category() (name "muxio.tls").
enum class TlsErrc {
    /// The handshake failed for a reason other than the two below: an alert
    /// from the peer ("tlsv1 alert unknown ca"), no common protocol version
    /// or cipher, not TLS at all ("wrong version number"), the peer closing
    /// the connection during the handshake.
    handshake_failed = 1,
    /// The peer's certificate chain did not verify ("certificate has
    /// expired", "unable to get local issuer certificate", "self-signed
    /// certificate").
    certificate_verify_failed,
    /// The peer's certificate is valid but not for the name (or address)
    /// the client asked for.
    hostname_mismatch,
    /// The peer offered ALPN protocols the server does not speak, or the
    /// other way round.
    no_application_protocol,
    /// The connection ended without the peer's close_notify, possibly in
    /// the middle of a record: the data may have been cut short by an
    /// attacker or a crash, so it is an error, not an end of stream.
    truncated,
    /// A protocol violation after the handshake: a record that does not
    /// decrypt, an unexpected message, a fatal alert from the peer.
    protocol_error,
    /// A write after close_notify was sent or received.
    closed,
    /// A TlsContext could not be set up: a certificate, key or CA file that
    /// is missing or unreadable, a key that does not match its certificate,
    /// an invalid ALPN name.
    bad_configuration,
};

/// The category of TlsErrc codes, named "muxio.tls".
[[nodiscard]] const std::error_category& tls_category() noexcept;

/// A TlsErrc as a std::error_code of tls_category().
[[nodiscard]] inline std::error_code make_error_code(TlsErrc code) noexcept {
    return {static_cast<int>(code), tls_category()};
}

/// What every TLS failure throws: a std::system_error whose code is a
/// TlsErrc and whose message names the operation, the peer and the failing
/// check, with OpenSSL's own words, e.g. "tls handshake with 127.0.0.1:443
/// (server name example.com): certificate verify failed: certificate has
/// expired". Failures of the socket underneath (ECONNRESET, EPIPE) are
/// plain std::system_error with std::system_category().
class TlsError : public std::system_error {
public:
    /// `what` is the full message (see the class comment).
    TlsError(TlsErrc code, const std::string& what, long verify_result = 0)
        : std::system_error{make_error_code(code)}, message_{what}, verify_result_{verify_result} {}
    /// The message as given, without the category's text appended (it
    /// already says what failed, in OpenSSL's more precise words).
    [[nodiscard]] const char* what() const noexcept override { return message_.what(); }
    /// For certificate_verify_failed and hostname_mismatch: OpenSSL's X509
    /// verification result (X509_V_ERR_*); 0 otherwise.
    [[nodiscard]] long verify_result() const noexcept { return verify_result_; }

private:
    std::runtime_error message_;  // a reference-counted string, copied without throwing
    long verify_result_;
};

}  // namespace muxio

/// TlsErrc converts to std::error_code implicitly.
template <>
struct std::is_error_code_enum<muxio::TlsErrc> : std::true_type {};

namespace muxio {

// ----- Contexts -------------------------------------------------------------------

/// The lowest TLS version a context accepts.
enum class TlsVersion {
    tls1_2,  ///< TLS 1.2 and 1.3 (the default).
    tls1_3,  ///< TLS 1.3 only.
};

/// How TlsContext::server() sets up a server.
struct TlsServerOptions {
    /// PEM file: the server's certificate first, then the intermediates up
    /// to (not necessarily including) the root.
    std::string certificate_chain_file;
    /// PEM file: the private key of the first certificate, unencrypted.
    std::string private_key_file;
    /// ALPN protocols the server speaks, most preferred first ("h2",
    /// "http/1.1"). Empty: no ALPN. Otherwise a client offering ALPN with
    /// none of these fails the handshake (alert no_application_protocol, as
    /// RFC 7301 asks); a client offering no ALPN is accepted.
    std::vector<std::string> alpn_protocols;
    /// The lowest version accepted.
    TlsVersion min_version = TlsVersion::tls1_2;
};

/// How TlsContext::client() sets up a client.
struct TlsClientOptions {
    /// PEM file of the certificate authorities to trust. Empty: the system's
    /// store (OpenSSL's default paths, /etc/ssl/certs on Debian).
    std::string ca_file;
    /// ALPN protocols to offer, most preferred first. Empty: no ALPN.
    std::vector<std::string> alpn_protocols;
    /// The lowest version accepted.
    TlsVersion min_version = TlsVersion::tls1_2;
    /// Accept any certificate for any name: no chain check, no hostname
    /// check. Only for tests and for peers authenticated by other means;
    /// never the default.
    bool insecure_skip_verification = false;
};

/// Whether an end of the connection is the client or the server.
enum class TlsRole {
    client,  ///< Starts the handshake, checks the server's certificate.
    server,  ///< Answers the handshake with its certificate.
};

/// A shared, immutable TLS configuration (an OpenSSL SSL_CTX): certificates,
/// trust, versions, ALPN. Make one per server or per kind of client and use
/// it for every connection; copies share it (reference counted), and it
/// stays alive as long as a stream made from it. Thread-safe to share once
/// made.
class TlsContext {
public:
    /// A server context with the certificate chain and key of `options`.
    /// TlsError(bad_configuration) naming the file and OpenSSL's reason:
    /// "tls server context: certificate chain file /etc/x.pem: No such file
    /// or directory", "... private key file k.pem does not match the
    /// certificate of c.pem: key values mismatch"; std::invalid_argument for an ALPN
    /// name that is empty or longer than 255 bytes.
    [[nodiscard]] static TlsContext server(const TlsServerOptions& options);
    /// A client context: verification of the server's chain against
    /// `options.ca_file` or the system's store, and of its name (given to
    /// each stream), unless `options.insecure_skip_verification`.
    /// TlsError(bad_configuration) naming the CA file if it cannot be read;
    /// std::invalid_argument for a bad ALPN name.
    [[nodiscard]] static TlsContext client(const TlsClientOptions& options = {});

    /// Client or server, as made.
    [[nodiscard]] TlsRole role() const noexcept;
    /// Whether a client checks the server's certificate and name; false for
    /// a server context (servers ask for no client certificate).
    [[nodiscard]] bool verifies_peer() const noexcept;

    /// The OpenSSL `SSL_CTX*`, for settings this class does not offer
    /// (ciphers, session cache, client certificates). Changing it while
    /// streams use it is OpenSSL's business, not muxio's.
    [[nodiscard]] void* native_handle() const noexcept;

    /// Implementation (lib/tls/tls_context.cpp).
    struct State;

private:
    explicit TlsContext(std::shared_ptr<State> state) noexcept : state_{std::move(state)} {}
    friend class TlsEngine;
    std::shared_ptr<State> state_;
};

// ----- The state machine ----------------------------------------------------------

/// What a TlsEngine step asks for next.
enum class TlsStatus : std::uint8_t {
    /// The step is done (for read() and write(): some bytes were moved).
    ok,
    /// It needs ciphertext from the peer: receive into input_space(), then
    /// commit_input(), or call input_ended() at the end of the stream; then
    /// repeat the step.
    want_input,
    /// Its output buffer is full: send output() and consume_output(), then
    /// repeat the step (with the same arguments, for write()).
    want_output,
    /// read(): the peer sent close_notify, the clean end of its stream.
    closed,
    /// It failed: error() and error_message() say why; the engine is
    /// unusable except to send what output() still holds (an alert telling
    /// the peer why).
    failed,
};

/// The result of TlsEngine::read() and write(): bytes of plaintext moved and
/// what is wanted next.
struct TlsResult {
    /// Plaintext bytes read into or taken from the caller's buffer.
    std::size_t bytes = 0;
    /// ok when `bytes` > 0 (or the buffer was empty); otherwise why not.
    TlsStatus status = TlsStatus::ok;
};

/// One TLS connection's state machine without any I/O (OpenSSL's SSL over a
/// BIO pair), in the manner of Python's ssl.SSLObject: ciphertext from the
/// network goes in through input_space()/commit_input(), ciphertext for the
/// network comes out of output()/consume_output(), and handshake(), read(),
/// write() and shutdown() say with a TlsStatus what they need. TlsStream
/// drives it over a coroutine socket; a callback transport or a user's own
/// loop can drive it the same way.
///
/// Both buffers are bounded (buffer_size bytes each), which is the
/// back-pressure: write() encrypts only while the output has room for a
/// whole record and then stops with want_output, and input_space() is empty
/// until read() or handshake() took what came in. The room write() leaves
/// is for what a read must send (a key update's answer, an alert), so a
/// read never waits for a writer to drain the output. Any output (handshake messages, alerts, close_notify,
/// a TLS 1.3 key update answer) may appear after any step: a driver sends
/// output() whenever it is not empty. Renegotiation is refused.
///
/// Move-only; single-threaded like everything else on a reactor.
class TlsEngine {
public:
    /// The most ciphertext one TLS record takes (16 KiB of plaintext and
    /// the record's overhead, rounded up).
    static constexpr std::size_t max_record_size = 16 * 1024 + 512;
    /// Bytes each of the two buffers holds: two full TLS records.
    static constexpr std::size_t buffer_size = 2 * max_record_size;

    /// An empty engine (valid() false), to assign to later.
    TlsEngine() noexcept = default;
    /// An engine for one connection. For a client, `server_name` is sent
    /// as SNI (unless it is an IP address) and is what the certificate must
    /// match (a DNS name, or an IP address against the certificate's IP
    /// entries); a client context that verifies needs one:
    /// std::invalid_argument if it is empty. A server ignores it.
    /// std::bad_alloc or TlsError(bad_configuration) if OpenSSL cannot make
    /// the connection's state.
    TlsEngine(const TlsContext& context, std::string_view server_name = {});
    /// Takes `other`'s connection; `other` is left empty (valid() false).
    TlsEngine(TlsEngine&& other) noexcept;
    /// Frees this connection's state, then as the move constructor.
    TlsEngine& operator=(TlsEngine&& other) noexcept;
    TlsEngine(const TlsEngine&) = delete;
    TlsEngine& operator=(const TlsEngine&) = delete;
    ~TlsEngine();

    /// False for an engine moved from.
    [[nodiscard]] bool valid() const noexcept { return ssl_ != nullptr; }
    /// The role of its context.
    [[nodiscard]] TlsRole role() const noexcept { return role_; }

    /// Runs the handshake as far as the input allows: ok once it is
    /// complete (send output() still), want_input, want_output or failed.
    TlsStatus handshake() noexcept;
    /// True once handshake() returned ok (and still after a later failure).
    [[nodiscard]] bool handshake_done() const noexcept;
    /// Decrypts into `buffer`: bytes with ok; or want_input, want_output,
    /// closed (the peer's close_notify: its stream ended cleanly), failed
    /// (truncated if the input ended without close_notify).
    /// Precondition: handshake_done().
    TlsResult read(std::span<std::byte> buffer) noexcept;
    /// Encrypts from `buffer` into the output, whole records, while the
    /// output has room for one more and a record's worth to spare: bytes
    /// with ok; or want_output (send, then call again with the rest of the
    /// bytes), failed (closed after close_notify).
    /// Precondition: handshake_done().
    TlsResult write(std::span<const std::byte> buffer) noexcept;
    /// Queues close_notify in the output (once; later calls do nothing):
    /// ok, want_output, or failed. The peer may still send; read() returns
    /// closed when its close_notify arrives.
    TlsStatus shutdown() noexcept;
    /// close_notify was queued by shutdown().
    [[nodiscard]] bool shutdown_sent() const noexcept;
    /// The peer's close_notify was read.
    [[nodiscard]] bool shutdown_received() const noexcept;

    /// Where the next ciphertext from the network goes; empty when the
    /// input buffer is full (read or handshake first) or after
    /// input_ended(). May be shorter than the free room (the buffer is a
    /// ring): commit and ask again.
    [[nodiscard]] std::span<std::byte> input_space() noexcept;
    /// `size` bytes were written at input_space(). Precondition: size <=
    /// input_space().size().
    void commit_input(std::size_t size) noexcept;
    /// Copies ciphertext in, as much as fits; returns the bytes taken.
    std::size_t feed(std::span<const std::byte> ciphertext) noexcept;
    /// The network stream from the peer ended (a read returned 0): the next
    /// step that needs more input fails with truncated, or with
    /// handshake_failed during the handshake.
    void input_ended() noexcept;
    /// Bytes in the input buffer not yet taken by a step.
    [[nodiscard]] std::size_t input_pending() const noexcept;

    /// Ciphertext waiting to be sent, oldest first (a contiguous part of it:
    /// consume and ask again). Empty when there is none.
    [[nodiscard]] std::span<const std::byte> output() noexcept;
    /// `size` bytes of output() were sent. Precondition: size <= output().size().
    void consume_output(std::size_t size) noexcept;
    /// Bytes of ciphertext waiting to be sent.
    [[nodiscard]] std::size_t output_pending() const noexcept;

    /// After failed: its TlsErrc (empty before any failure).
    [[nodiscard]] std::error_code error() const noexcept { return error_; }
    /// After failed: OpenSSL's words for it, the failing check first
    /// ("certificate verify failed: hostname mismatch").
    [[nodiscard]] const std::string& error_message() const noexcept { return error_message_; }
    /// After a failed verification: OpenSSL's X509_V_ERR_* result, else 0.
    [[nodiscard]] long verify_result() const noexcept { return verify_result_; }

    /// The server name: for a client the one it was given, for a server
    /// the SNI the client sent (empty if none, or before the ClientHello).
    [[nodiscard]] std::string server_name() const;
    /// The ALPN protocol agreed on; empty if none (or before the handshake).
    [[nodiscard]] std::string alpn_protocol() const;
    /// The protocol version agreed on, as OpenSSL names it ("TLSv1.3").
    [[nodiscard]] std::string protocol_version() const;
    /// The cipher suite agreed on ("TLS_AES_256_GCM_SHA384"); empty before.
    [[nodiscard]] std::string cipher() const;

    /// The OpenSSL `SSL*`, for what this class does not offer.
    [[nodiscard]] void* native_handle() const noexcept { return ssl_; }

private:
    TlsStatus fail(int ssl_result, int ssl_error, TlsErrc fallback) noexcept;
    TlsStatus status_of(int ssl_result, TlsErrc fallback) noexcept;
    void release() noexcept;

    std::shared_ptr<TlsContext::State> context_;
    void* ssl_ = nullptr;      // SSL*
    void* network_ = nullptr;  // BIO*: the network side of the pair
    std::error_code error_;
    std::string error_message_;
    std::string server_name_;
    long verify_result_ = 0;
    TlsRole role_ = TlsRole::client;
    bool input_ended_ = false;
    bool established_ = false;  // handshake() returned ok
};

// ----- Streams --------------------------------------------------------------------

namespace detail {

// Deletes a socket that TlsStream owns through its concrete type.
struct SocketDeleter {
    void (*destroy)(StreamSocket*) noexcept = nullptr;
    void operator()(StreamSocket* socket) const noexcept { destroy(socket); }
};

}  // namespace detail

/// A TLS connection over a connected stream socket (TcpStream, UnixStream),
/// for coroutines: the counterpart of the socket's read_some()/write_all()
/// with TLS in between, driving a TlsEngine.
///
/// Contract (as StreamSocket's, where not said otherwise):
/// - Make it with client() or server(), then `co_await handshake()`
///   before reading or writing (std::logic_error otherwise). Bound the
///   handshake with muxio::with_timeout() or a stop token: a peer that
///   sends nothing otherwise keeps it waiting forever.
/// - At most one pending read-side operation (read_some, read_exact) and
///   one write-side operation (write_all, shutdown) at a time; the two may
///   run at once (full duplex). A second one of a side throws
///   std::logic_error. The handshake is both sides.
/// - Back-pressure as the plain stream's: write_all() encrypts at most a
///   record and a half ahead of what the kernel took and waits for room;
///   read_some() receives only when the engine has no plaintext to give.
/// - Cancellation: each operation listens to `token` and the awaiting
///   task's token and throws muxio::Cancelled while it waits. How much of a
///   cancelled write_all() was sent is unspecified, as for the plain
///   streams; records already made go out with the next write or
///   shutdown(), so the stream stays usable. A cancelled handshake may be
///   awaited again, or the stream closed.
/// - Errors: TlsError (see TlsErrc) for TLS failures, naming the operation
///   and the peer; std::system_error for the socket's (ECONNRESET, EPIPE);
///   std::logic_error for a closed stream.
/// - End of stream: read_some() returns 0 after the peer's close_notify
///   (clean); a connection that ends without one is TlsError(truncated).
/// - Not movable while an operation is pending. Destroying it closes the
///   socket without close_notify, as close() does: call shutdown() first
///   for a clean end.
class TlsStream {
public:
    /// A closed stream, to assign to later.
    TlsStream() noexcept;
    /// Takes the socket and the TLS state; `other` ends closed.
    TlsStream(TlsStream&& other) noexcept;
    /// close(), then as the move constructor.
    TlsStream& operator=(TlsStream&& other) noexcept;
    TlsStream(const TlsStream&) = delete;
    TlsStream& operator=(const TlsStream&) = delete;
    ~TlsStream();

    /// The client end over `socket`, a connected stream: `server_name` is
    /// sent as SNI and checked against the certificate (see TlsEngine's
    /// constructor, which says what it throws).
    template <std::derived_from<StreamSocket> Socket>
    [[nodiscard]] static TlsStream client(Socket socket, const TlsContext& context, std::string_view server_name) {
        return TlsStream{own(std::move(socket)), TlsEngine{context, server_name}};
    }
    /// The server end over `socket`, an accepted stream.
    /// std::invalid_argument if `context` is a client context.
    template <std::derived_from<StreamSocket> Socket>
    [[nodiscard]] static TlsStream server(Socket socket, const TlsContext& context) {
        return TlsStream{own(std::move(socket)), TlsEngine{require_server(context)}};
    }
    /// TcpStream::connect() to `host`:`port` (resolved), then client() with
    /// `host` as the server name, then handshake(). Everything it does is
    /// cancelled by `token`.
    static Task<TlsStream> connect(Reactor& reactor, std::string host, std::uint16_t port, TlsContext context,
                                   std::stop_token token = {});

    /// Runs the handshake to its end, sending and receiving as needed.
    /// TlsError: certificate_verify_failed or hostname_mismatch (a client
    /// checking the server), handshake_failed (with the alert or reason),
    /// no_application_protocol. A failed handshake sends its alert if the
    /// socket takes it at once. std::logic_error if done already.
    Task<void> handshake(std::stop_token token = {});
    /// Reads what is there, at most `buffer.size()` bytes of plaintext,
    /// waiting until at least one arrives. Returns 0 at the peer's
    /// close_notify (and for an empty buffer). TlsError(truncated) if the
    /// connection ends without it.
    Task<std::size_t> read_some(std::span<std::byte> buffer, std::stop_token token = {});
    /// Fills `buffer`. muxio::IncompleteRead if the stream ends (cleanly) first.
    Task<void> read_exact(std::span<std::byte> buffer, std::stop_token token = {});
    /// Encrypts and sends all of `buffer`, waiting for room as needed.
    /// TlsError(closed) after shutdown().
    Task<void> write_all(std::span<const std::byte> buffer, std::stop_token token = {});
    /// write_all() of text; `text` must outlive the operation.
    Task<void> write_all(std::string_view text, std::stop_token token = {});
    /// Sends close_notify (once) and waits until the kernel took it: the
    /// peer's read then ends cleanly. Does not wait for the peer's own
    /// close_notify (read until read_some() returns 0 for that) and does not
    /// close the socket (close() does).
    Task<void> shutdown(std::stop_token token = {});
    /// Closes the socket at once, without close_notify. Harmless when
    /// closed. A pending operation ends with muxio::Cancelled.
    void close() noexcept;

    /// The socket is open.
    [[nodiscard]] bool is_open() const noexcept;
    /// The socket underneath. Precondition: not default-constructed or
    /// moved from. Reading or writing it directly breaks the TLS stream.
    [[nodiscard]] StreamSocket& socket() const noexcept { return *socket_; }
    /// The TLS state: server_name(), alpn_protocol(), protocol_version().
    /// Precondition as socket().
    [[nodiscard]] const TlsEngine& engine() const noexcept { return engine_; }
    /// engine().server_name().
    [[nodiscard]] std::string server_name() const { return engine_.server_name(); }
    /// engine().alpn_protocol().
    [[nodiscard]] std::string alpn_protocol() const { return engine_.alpn_protocol(); }

private:
    // The socket, owned through its concrete type (StreamSocket's destructor
    // is not virtual), at a stable address.
    using OwnedSocket = std::unique_ptr<StreamSocket, detail::SocketDeleter>;

    template <class Socket>
    static OwnedSocket own(Socket socket) {
        return OwnedSocket{new Socket{std::move(socket)}, detail::SocketDeleter{[](StreamSocket* owned) noexcept {
                               delete static_cast<Socket*>(owned);
                           }}};
    }
    static const TlsContext& require_server(const TlsContext& context);
    TlsStream(OwnedSocket socket, TlsEngine engine);

    // One receive into the engine: false if the socket has nothing now.
    // Throws the socket's failure.
    bool receive_now(std::string_view operation);
    // Sends output until none is left (true) or the socket is full (false).
    bool send_now(std::string_view operation);
    // send_now(), a failure left for the caller's own error to report.
    void flush_now() noexcept;
    [[noreturn]] void fail(std::string_view operation) const;
    [[noreturn]] void fail_socket(std::error_code error, std::string_view operation) const;
    [[nodiscard]] std::string describe_peer() const;
    void require_open(std::string_view operation) const;
    void require_ready(std::string_view operation) const;

    OwnedSocket socket_;
    TlsEngine engine_;
    bool reading_ = false;
    bool writing_ = false;
};

// ----- Callback transports ---------------------------------------------------------

/// A TransportOptions::filter running TLS with `context` on each transport
/// (the server or the client end, by the context's role); a client sends
/// `server_name` as SNI and verifies the certificate against it. Set it in
/// ServerOptions::transport for a TLS Server, or pass it to
/// Transport::connect(). See TransportOptions::filter for what changes:
/// connection_made() after the handshake; connection_lost() with the
/// TlsErrc of a failed handshake (certificate_verify_failed,
/// hostname_mismatch, handshake_failed, ...), with ETIMEDOUT when
/// TransportOptions::handshake_timeout ran out, with truncated when the
/// connection ends without the peer's close_notify; the peer's close_notify
/// is eof_received(); close() and write_eof() send close_notify.
/// Throws what TlsEngine's constructor throws, at once rather than per
/// connection: std::invalid_argument for a verifying client context and an
/// empty `server_name`, or an empty context.
[[nodiscard]] TransportFilterFactory tls_filter(TlsContext context, std::string server_name = {});

/// The TLS engine of a transport made with tls_filter(), to ask for the
/// ALPN protocol, version, SNI or cipher; nullptr for any other transport.
[[nodiscard]] const TlsEngine* tls_engine(const Transport& transport) noexcept;

}  // namespace muxio
