// TlsEngine: OpenSSL's SSL over a BIO pair. The SSL object reads and writes
// its half of the pair; the engine's user moves ciphertext through the
// other half (input_space/commit_input, output/consume_output), so no I/O
// happens here and both directions are bounded by the pair's buffers.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "muxio/tls.hpp"

#include "tls/openssl_support.hpp"

namespace muxio {

namespace {

SSL* as_ssl(void* ssl) noexcept {
    return static_cast<SSL*>(ssl);
}

BIO* as_bio(void* bio) noexcept {
    return static_cast<BIO*>(bio);
}

bool is_ip_address(const std::string& name) noexcept {
    in6_addr address{};
    return ::inet_pton(AF_INET, name.c_str(), &address) == 1 || ::inet_pton(AF_INET6, name.c_str(), &address) == 1;
}

int clamp_int(std::size_t size) noexcept {
    return static_cast<int>(std::min<std::size_t>(size, std::numeric_limits<int>::max()));
}

}  // namespace

TlsEngine::TlsEngine(const TlsContext& context, std::string_view server_name) : context_{context.state_} {
    if (!context_) {
        throw std::invalid_argument("TlsEngine: the TlsContext is empty (moved from)");
    }
    role_ = context_->role;
    if (role_ == TlsRole::client) {
        server_name_ = std::string{server_name};
        if (context_->verifies && server_name_.empty()) {
            throw std::invalid_argument(
                "tls client: a server name is needed to verify the server's certificate "
                "(or TlsClientOptions::insecure_skip_verification)");
        }
    }
    ERR_clear_error();
    SSL* ssl = SSL_new(context_->context);
    if (ssl == nullptr) {
        throw TlsError{TlsErrc::bad_configuration,
                       fmt::format("tls: SSL_new: {}", detail::take_openssl_errors("out of memory"))};
    }
    ssl_ = ssl;
    BIO* internal = nullptr;
    BIO* network = nullptr;
    if (BIO_new_bio_pair(&internal, buffer_size, &network, buffer_size) != 1) {
        release();
        throw TlsError{TlsErrc::bad_configuration,
                       fmt::format("tls: BIO_new_bio_pair: {}", detail::take_openssl_errors("out of memory"))};
    }
    SSL_set_bio(ssl, internal, internal);  // the SSL owns its half
    network_ = network;
    if (role_ == TlsRole::server) {
        SSL_set_accept_state(ssl);
        return;
    }
    SSL_set_connect_state(ssl);
    if (server_name_.empty()) {
        return;
    }
    bool named = true;
    if (is_ip_address(server_name_)) {
        // No SNI for an address (RFC 6066); the certificate's IP entries must match.
        named = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), server_name_.c_str()) == 1;
    } else {
        // SSL_set_tlsext_host_name() is a macro with a C cast.
        named = SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, server_name_.data()) == 1;
        if (named && context_->verifies) {
            SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            named = SSL_set1_host(ssl, server_name_.c_str()) == 1;
        }
    }
    if (!named) {
        const std::string reason = detail::take_openssl_errors("refused");
        release();
        throw std::invalid_argument(fmt::format("tls client: server name \"{}\": {}", server_name_, reason));
    }
}

TlsEngine::TlsEngine(TlsEngine&& other) noexcept
    : context_{std::move(other.context_)},
      ssl_{std::exchange(other.ssl_, nullptr)},
      network_{std::exchange(other.network_, nullptr)},
      error_{other.error_},
      error_message_{std::move(other.error_message_)},
      server_name_{std::move(other.server_name_)},
      verify_result_{other.verify_result_},
      role_{other.role_},
      input_ended_{other.input_ended_},
      established_{std::exchange(other.established_, false)} {}

TlsEngine& TlsEngine::operator=(TlsEngine&& other) noexcept {
    if (this != &other) {
        release();
        context_ = std::move(other.context_);
        ssl_ = std::exchange(other.ssl_, nullptr);
        network_ = std::exchange(other.network_, nullptr);
        error_ = other.error_;
        error_message_ = std::move(other.error_message_);
        server_name_ = std::move(other.server_name_);
        verify_result_ = other.verify_result_;
        role_ = other.role_;
        input_ended_ = other.input_ended_;
        established_ = std::exchange(other.established_, false);
    }
    return *this;
}

TlsEngine::~TlsEngine() {
    release();
}

void TlsEngine::release() noexcept {
    if (ssl_ != nullptr) {
        SSL_free(as_ssl(std::exchange(ssl_, nullptr)));
    }
    if (network_ != nullptr) {
        BIO_free(as_bio(std::exchange(network_, nullptr)));
    }
}

// Classifies a failed step. Called right after the OpenSSL call, with the
// error queue as that call left it.
TlsStatus TlsEngine::status_of(int ssl_result, TlsErrc fallback) noexcept {
    const int ssl_error = SSL_get_error(as_ssl(ssl_), ssl_result);
    switch (ssl_error) {
        case SSL_ERROR_WANT_READ:
            return TlsStatus::want_input;
        case SSL_ERROR_WANT_WRITE:
            return TlsStatus::want_output;
        case SSL_ERROR_ZERO_RETURN:
            ERR_clear_error();
            return TlsStatus::closed;
        default:
            return fail(ssl_result, ssl_error, fallback);
    }
}

TlsStatus TlsEngine::fail(int /*ssl_result*/, int ssl_error, TlsErrc fallback) noexcept {
    TlsErrc code = fallback;
    std::string message;
    try {
        // The first reason from libssl names the failing check; what
        // libcrypto adds below it is detail.
        int reason = 0;
        const unsigned long first = ERR_peek_error();
        if (first != 0 && ERR_GET_LIB(first) == ERR_LIB_SSL) {
            reason = ERR_GET_REASON(first);
        }
        const std::string reasons = detail::take_openssl_errors("");
        const long verify = SSL_get_verify_result(as_ssl(ssl_));
        if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED && verify != X509_V_OK) {
            verify_result_ = verify;
            code = verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH
                       ? TlsErrc::hostname_mismatch
                       : TlsErrc::certificate_verify_failed;
            message = fmt::format("certificate verify failed: {}", X509_verify_cert_error_string(verify));
        } else if (reason == SSL_R_UNEXPECTED_EOF_WHILE_READING ||
                   (ssl_error == SSL_ERROR_SYSCALL && reasons.empty())) {
            if (established_) {
                code = TlsErrc::truncated;
                message = "connection closed without close_notify (truncated)";
            } else {
                code = TlsErrc::handshake_failed;
                message = "connection closed during the handshake";
            }
        } else if (reason == SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL || reason == SSL_R_NO_APPLICATION_PROTOCOL) {
            code = TlsErrc::no_application_protocol;
            message = reasons;
        } else if (reason == SSL_R_PROTOCOL_IS_SHUTDOWN) {
            code = TlsErrc::closed;
            message = "close_notify was sent already";
        } else {
            message = reasons.empty() ? fmt::format("OpenSSL error {}", ssl_error) : reasons;
        }
    } catch (...) {
        ERR_clear_error();
        message.clear();  // std::bad_alloc: the category's message must do
    }
    error_ = make_error_code(code);
    error_message_ = std::move(message);
    return TlsStatus::failed;
}

TlsStatus TlsEngine::handshake() noexcept {
    if (error_ || ssl_ == nullptr) {
        return TlsStatus::failed;
    }
    ERR_clear_error();
    const int result = SSL_do_handshake(as_ssl(ssl_));
    if (result == 1) {
        established_ = true;
        return TlsStatus::ok;
    }
    const TlsStatus status = status_of(result, TlsErrc::handshake_failed);
    // A close_notify during the handshake is a failed handshake, not a clean end.
    if (status == TlsStatus::closed) {
        error_ = make_error_code(TlsErrc::handshake_failed);
        error_message_ = "the peer closed the connection during the handshake (close_notify)";
        return TlsStatus::failed;
    }
    return status;
}

bool TlsEngine::handshake_done() const noexcept {
    // OpenSSL's own state goes back to "in init" after a fatal error.
    return established_;
}

TlsResult TlsEngine::read(std::span<std::byte> buffer) noexcept {
    if (error_ || ssl_ == nullptr) {
        return {0, TlsStatus::failed};
    }
    if (buffer.empty()) {
        return {0, TlsStatus::ok};
    }
    ERR_clear_error();
    const int result = SSL_read(as_ssl(ssl_), buffer.data(), clamp_int(buffer.size()));
    if (result > 0) {
        return {static_cast<std::size_t>(result), TlsStatus::ok};
    }
    return {0, status_of(result, TlsErrc::protocol_error)};
}

TlsResult TlsEngine::write(std::span<const std::byte> buffer) noexcept {
    if (error_ || ssl_ == nullptr) {
        return {0, TlsStatus::failed};
    }
    std::size_t written = 0;
    // Record by record (partial writes), while a whole record fits and
    // leaves a record's room for what reads must send: OpenSSL then never
    // holds half a record back, and a read never finds the output full.
    while (written < buffer.size() && output_pending() <= max_record_size / 2) {
        ERR_clear_error();
        const int result = SSL_write(as_ssl(ssl_), buffer.data() + written, clamp_int(buffer.size() - written));
        if (result > 0) {
            written += static_cast<std::size_t>(result);
            continue;
        }
        TlsStatus status = status_of(result, TlsErrc::protocol_error);
        if (status == TlsStatus::closed || status == TlsStatus::want_input) {
            // Neither can happen with renegotiation refused; a write after
            // close_notify reports SSL_R_PROTOCOL_IS_SHUTDOWN.
            error_ = make_error_code(TlsErrc::closed);
            error_message_ = "the TLS stream is shut down";
            status = TlsStatus::failed;
        }
        if (status == TlsStatus::failed || written == 0) {
            return {written, status};
        }
        break;
    }
    if (written == 0 && !buffer.empty()) {
        return {0, TlsStatus::want_output};
    }
    return {written, TlsStatus::ok};
}

TlsStatus TlsEngine::shutdown() noexcept {
    if (error_ || ssl_ == nullptr) {
        return TlsStatus::failed;
    }
    if (shutdown_sent() && output_pending() == 0) {
        return TlsStatus::ok;
    }
    ERR_clear_error();
    const int result = SSL_shutdown(as_ssl(ssl_));
    if (result >= 0) {
        return TlsStatus::ok;  // 0: ours sent, the peer's not yet read; 1: both
    }
    const TlsStatus status = status_of(result, TlsErrc::protocol_error);
    // want_input cannot happen: SSL_shutdown does not wait for the peer's.
    return status == TlsStatus::want_input ? TlsStatus::ok : status;
}

bool TlsEngine::shutdown_sent() const noexcept {
    return ssl_ != nullptr && (SSL_get_shutdown(as_ssl(ssl_)) & SSL_SENT_SHUTDOWN) != 0;
}

bool TlsEngine::shutdown_received() const noexcept {
    return ssl_ != nullptr && (SSL_get_shutdown(as_ssl(ssl_)) & SSL_RECEIVED_SHUTDOWN) != 0;
}

std::span<std::byte> TlsEngine::input_space() noexcept {
    if (input_ended_ || network_ == nullptr) {
        return {};
    }
    char* space = nullptr;
    const ossl_ssize_t size = BIO_nwrite0(as_bio(network_), &space);
    if (size <= 0 || space == nullptr) {
        ERR_clear_error();  // full: BIO_nwrite0 leaves no error, but be sure
        return {};
    }
    return {reinterpret_cast<std::byte*>(space), static_cast<std::size_t>(size)};
}

void TlsEngine::commit_input(std::size_t size) noexcept {
    if (size == 0 || network_ == nullptr) {
        return;
    }
    char* space = nullptr;
    (void)BIO_nwrite(as_bio(network_), &space, clamp_int(size));
}

std::size_t TlsEngine::feed(std::span<const std::byte> ciphertext) noexcept {
    std::size_t taken = 0;
    while (taken < ciphertext.size()) {
        const std::span<std::byte> space = input_space();
        if (space.empty()) {
            break;
        }
        const std::size_t size = std::min(space.size(), ciphertext.size() - taken);
        std::memcpy(space.data(), ciphertext.data() + taken, size);
        commit_input(size);
        taken += size;
    }
    return taken;
}

void TlsEngine::input_ended() noexcept {
    if (!input_ended_ && network_ != nullptr) {
        input_ended_ = true;
        (void)BIO_shutdown_wr(as_bio(network_));  // the SSL's half reads what is left, then the end
    }
}

std::size_t TlsEngine::input_pending() const noexcept {
    return network_ == nullptr ? 0 : BIO_ctrl_wpending(as_bio(network_));
}

std::span<const std::byte> TlsEngine::output() noexcept {
    if (network_ == nullptr) {
        return {};
    }
    char* data = nullptr;
    const ossl_ssize_t size = BIO_nread0(as_bio(network_), &data);
    if (size <= 0 || data == nullptr) {
        return {};
    }
    return {reinterpret_cast<const std::byte*>(data), static_cast<std::size_t>(size)};
}

void TlsEngine::consume_output(std::size_t size) noexcept {
    if (size == 0 || network_ == nullptr) {
        return;
    }
    char* data = nullptr;
    (void)BIO_nread(as_bio(network_), &data, clamp_int(size));
}

std::size_t TlsEngine::output_pending() const noexcept {
    return network_ == nullptr ? 0 : BIO_ctrl_pending(as_bio(network_));
}

std::string TlsEngine::server_name() const {
    if (role_ == TlsRole::client || ssl_ == nullptr) {
        return server_name_;
    }
    const char* name = SSL_get_servername(as_ssl(ssl_), TLSEXT_NAMETYPE_host_name);
    return name == nullptr ? std::string{} : std::string{name};
}

std::string TlsEngine::alpn_protocol() const {
    if (ssl_ == nullptr) {
        return {};
    }
    const unsigned char* protocol = nullptr;
    unsigned int size = 0;
    SSL_get0_alpn_selected(as_ssl(ssl_), &protocol, &size);
    return protocol == nullptr ? std::string{} : std::string{reinterpret_cast<const char*>(protocol), size};
}

std::string TlsEngine::protocol_version() const {
    return ssl_ == nullptr ? std::string{} : std::string{SSL_get_version(as_ssl(ssl_))};
}

std::string TlsEngine::cipher() const {
    if (ssl_ == nullptr) {
        return {};
    }
    const SSL_CIPHER* cipher = SSL_get_current_cipher(as_ssl(ssl_));
    return cipher == nullptr ? std::string{} : std::string{SSL_CIPHER_get_name(cipher)};
}

}  // namespace muxio
