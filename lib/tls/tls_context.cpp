// TlsContext: OpenSSL's SSL_CTX set up for a server (certificate chain and
// key) or a client (trust and verification); the TLS error category.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "muxio/tls.hpp"

#include "tls/openssl_support.hpp"

namespace muxio {

namespace {

class TlsCategory final : public std::error_category {
public:
    [[nodiscard]] const char* name() const noexcept override { return "muxio.tls"; }
    [[nodiscard]] std::string message(int code) const override {
        switch (static_cast<TlsErrc>(code)) {
            case TlsErrc::handshake_failed:
                return "TLS handshake failed";
            case TlsErrc::certificate_verify_failed:
                return "certificate verify failed";
            case TlsErrc::hostname_mismatch:
                return "certificate does not match the server name";
            case TlsErrc::no_application_protocol:
                return "no application protocol in common (ALPN)";
            case TlsErrc::truncated:
                return "TLS stream truncated: closed without close_notify";
            case TlsErrc::protocol_error:
                return "TLS protocol error";
            case TlsErrc::closed:
                return "TLS stream is shut down";
            case TlsErrc::bad_configuration:
                return "bad TLS configuration";
        }
        return fmt::format("unknown TLS error {}", code);
    }
};

int protocol_version(TlsVersion version) noexcept {
    return version == TlsVersion::tls1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
}

[[noreturn]] void throw_configuration(std::string_view what) {
    throw TlsError{TlsErrc::bad_configuration, std::string{what}};
}

// A new SSL_CTX with what both roles share.
std::shared_ptr<TlsContext::State> make_state(std::string_view operation, TlsRole role, bool verify,
                                              TlsVersion min_version) {
    ERR_clear_error();
    SSL_CTX* native = SSL_CTX_new(TLS_method());
    if (native == nullptr) {
        throw_configuration(
            fmt::format("{}: SSL_CTX_new: {}", operation, detail::take_openssl_errors("out of memory")));
    }
    auto state = std::make_shared<TlsContext::State>(native, role, verify);
    if (SSL_CTX_set_min_proto_version(native, protocol_version(min_version)) != 1) {
        throw_configuration(
            fmt::format("{}: minimum protocol version: {}", operation, detail::take_openssl_errors("refused")));
    }
    // Renegotiation would let a read need a write in TLS 1.2 and has a
    // history of attacks; TLS 1.3 has none.
    SSL_CTX_set_options(native, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    // TlsEngine::write() hands OpenSSL the rest of the caller's buffer again
    // after want_output: partial writes and a moved buffer are expected.
    SSL_CTX_set_mode(native, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return state;
}

// The server's choice among the client's ALPN offers: the first of its own
// list (its preference) that the client offered.
int select_alpn(SSL* /*ssl*/, const unsigned char** out, unsigned char* out_size, const unsigned char* offered,
                unsigned int offered_size, void* argument) {
    const auto* state = static_cast<const TlsContext::State*>(argument);
    const std::vector<unsigned char>& own = state->alpn;
    for (std::size_t i = 0; i < own.size(); i += 1U + own[i]) {
        const std::string_view mine{reinterpret_cast<const char*>(&own[i + 1]), own[i]};
        for (unsigned int j = 0; j < offered_size; j += 1U + offered[j]) {
            const unsigned int length = offered[j];
            if (j + 1 + length > offered_size) {
                break;  // malformed offer: ignore the rest
            }
            if (std::string_view{reinterpret_cast<const char*>(&offered[j + 1]), length} == mine) {
                *out = &own[i + 1];
                *out_size = own[i];
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // no_application_protocol (RFC 7301)
}

}  // namespace

const std::error_category& tls_category() noexcept {
    static const TlsCategory category;
    return category;
}

namespace detail {

std::string openssl_reason(unsigned long error) {
    if (const char* reason = ERR_reason_error_string(error); reason != nullptr) {
        return reason;
    }
    char buffer[256];
    ERR_error_string_n(error, buffer, sizeof buffer);
    return buffer;
}

std::string take_openssl_errors(std::string_view fallback) {
    std::string text;
    while (const unsigned long error = ERR_get_error()) {
        std::string reason = openssl_reason(error);
        if (text.find(reason) != std::string::npos) {
            continue;  // OpenSSL often repeats a reason at each level it passes
        }
        if (!text.empty()) {
            text += "; ";
        }
        text += reason;
    }
    return text.empty() ? std::string{fallback} : text;
}

std::vector<unsigned char> alpn_wire_format(const std::vector<std::string>& protocols, std::string_view operation) {
    std::vector<unsigned char> wire;
    for (const std::string& protocol : protocols) {
        if (protocol.empty() || protocol.size() > 255) {
            throw std::invalid_argument(
                fmt::format("{}: ALPN protocol name \"{}\" must be 1 to 255 bytes", operation, protocol));
        }
        wire.push_back(static_cast<unsigned char>(protocol.size()));
        wire.insert(wire.end(), protocol.begin(), protocol.end());
    }
    return wire;
}

}  // namespace detail

TlsContext TlsContext::server(const TlsServerOptions& options) {
    constexpr std::string_view operation = "tls server context";
    std::vector<unsigned char> alpn = detail::alpn_wire_format(options.alpn_protocols, operation);
    std::shared_ptr<State> state = make_state(operation, TlsRole::server, false, options.min_version);
    SSL_CTX* native = state->context;
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(native, options.certificate_chain_file.c_str()) != 1) {
        throw_configuration(fmt::format("{}: certificate chain file {}: {}", operation, options.certificate_chain_file,
                                        detail::take_openssl_errors("cannot be used")));
    }
    if (SSL_CTX_use_PrivateKey_file(native, options.private_key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
        // OpenSSL 3 compares the key with the certificate as it loads it;
        // say which two files disagree rather than only its reason.
        const bool mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
        throw_configuration(
            fmt::format("{}: private key file {}{}: {}", operation, options.private_key_file,
                        mismatch ? fmt::format(" does not match the certificate of {}", options.certificate_chain_file)
                                 : std::string{},
                        detail::take_openssl_errors("cannot be used")));
    }
    if (SSL_CTX_check_private_key(native) != 1) {
        throw_configuration(fmt::format("{}: private key file {} does not match the certificate of {}: {}", operation,
                                        options.private_key_file, options.certificate_chain_file,
                                        detail::take_openssl_errors("key values mismatch")));
    }
    SSL_CTX_set_options(native, SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (!alpn.empty()) {
        state->alpn = std::move(alpn);
        SSL_CTX_set_alpn_select_cb(native, &select_alpn, state.get());
    }
    return TlsContext{std::move(state)};
}

TlsContext TlsContext::client(const TlsClientOptions& options) {
    constexpr std::string_view operation = "tls client context";
    const std::vector<unsigned char> alpn = detail::alpn_wire_format(options.alpn_protocols, operation);
    const bool verify = !options.insecure_skip_verification;
    std::shared_ptr<State> state = make_state(operation, TlsRole::client, verify, options.min_version);
    SSL_CTX* native = state->context;
    ERR_clear_error();
    if (!options.ca_file.empty()) {
        if (SSL_CTX_load_verify_locations(native, options.ca_file.c_str(), nullptr) != 1) {
            throw_configuration(fmt::format("{}: CA file {}: {}", operation, options.ca_file,
                                            detail::take_openssl_errors("cannot be used")));
        }
    } else if (verify && SSL_CTX_set_default_verify_paths(native) != 1) {
        throw_configuration(
            fmt::format("{}: the system's CA store: {}", operation, detail::take_openssl_errors("cannot be used")));
    }
    SSL_CTX_set_verify(native, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
    // SSL_CTX_set_alpn_protos returns 0 on success, unlike the rest of OpenSSL.
    if (!alpn.empty() && SSL_CTX_set_alpn_protos(native, alpn.data(), static_cast<unsigned int>(alpn.size())) != 0) {
        throw_configuration(fmt::format("{}: ALPN: {}", operation, detail::take_openssl_errors("refused")));
    }
    return TlsContext{std::move(state)};
}

TlsRole TlsContext::role() const noexcept {
    return state_->role;
}

bool TlsContext::verifies_peer() const noexcept {
    return state_->verifies;
}

void* TlsContext::native_handle() const noexcept {
    return state_->context;
}

}  // namespace muxio
