// TlsContext's configuration errors, which name the file and OpenSSL's
// reason, and the TLS error category.
#include <stdexcept>
#include <string>
#include <system_error>

#include <doctest/doctest.h>

#include "muxio/net.hpp"
#include "muxio/tls.hpp"
#include "tls/tls_support.hpp"

using muxio::TlsContext;
using muxio::TlsErrc;
using muxio::TlsError;
using muxio::tls_test::pki;

namespace {

std::string server_error(const std::string& certificate, const std::string& key) {
    muxio::TlsServerOptions options;
    options.certificate_chain_file = certificate;
    options.private_key_file = key;
    try {
        (void)TlsContext::server(options);
    } catch (const TlsError& error) {
        CHECK(error.code() == TlsErrc::bad_configuration);
        return error.what();
    }
    FAIL("TlsContext::server accepted ", certificate, " and ", key);
    return {};
}

}  // namespace

TEST_CASE("a server context names a missing certificate file and OpenSSL's reason") {
    const std::string missing = (pki().directory / "missing.pem").string();
    const std::string message = server_error(missing, pki().server.key);
    CHECK(message.find("tls server context: certificate chain file " + missing) == 0);
    CHECK(message.find("No such file or directory") != std::string::npos);
}

TEST_CASE("a server context names a certificate file that is not PEM") {
    const std::string message = server_error(pki().not_pem, pki().server.key);
    CHECK(message.find("certificate chain file " + pki().not_pem) != std::string::npos);
    CHECK(message.find("no start line") != std::string::npos);
}

TEST_CASE("a server context names a missing private key file") {
    const std::string missing = (pki().directory / "missing.key").string();
    const std::string message = server_error(pki().server.certificate, missing);
    CHECK(message.find("private key file " + missing) != std::string::npos);
}

TEST_CASE("a server context refuses a key that does not match its certificate") {
    const std::string message = server_error(pki().server.certificate, pki().other_name.key);
    CHECK(message.find("private key file " + pki().other_name.key + " does not match the certificate of " +
                       pki().server.certificate) != std::string::npos);
    CHECK(message.find("key values mismatch") != std::string::npos);
}

TEST_CASE("a client context names a CA file it cannot use") {
    muxio::TlsClientOptions options;
    options.ca_file = pki().not_pem;
    try {
        (void)TlsContext::client(options);
        FAIL("a CA file that is not PEM was accepted");
    } catch (const TlsError& error) {
        CHECK(error.code() == TlsErrc::bad_configuration);
        CHECK(std::string{error.what()}.find("tls client context: CA file " + pki().not_pem) == 0);
    }
}

TEST_CASE("an ALPN protocol name that is empty or longer than 255 bytes is refused") {
    muxio::TlsClientOptions client;
    client.alpn_protocols = {"h2", ""};
    CHECK_THROWS_WITH_AS((void)TlsContext::client(client), doctest::Contains("must be 1 to 255 bytes"),
                         std::invalid_argument);
    muxio::TlsServerOptions server;
    server.certificate_chain_file = pki().server.certificate;
    server.private_key_file = pki().server.key;
    server.alpn_protocols = {std::string(256, 'x')};
    CHECK_THROWS_AS((void)TlsContext::server(server), std::invalid_argument);
}

TEST_CASE("a verifying client needs a server name, and a server stream needs a server context") {
    muxio::Reactor reactor;
    const TlsContext client = muxio::tls_test::client_context();
    CHECK(client.role() == muxio::TlsRole::client);
    CHECK_THROWS_WITH_AS(muxio::TlsEngine(client, ""), doctest::Contains("a server name is needed"),
                         std::invalid_argument);
    auto [a, b] = muxio::UnixStream::pair(reactor);
    CHECK_THROWS_WITH_AS((void)muxio::TlsStream::server(std::move(a), client),
                         doctest::Contains("the context is a client context"), std::invalid_argument);
    const TlsContext server = muxio::tls_test::server_context();
    CHECK(server.role() == muxio::TlsRole::server);
    CHECK_FALSE(server.verifies_peer());
    CHECK(server.native_handle() != nullptr);
}

TEST_CASE("TLS error codes belong to the muxio.tls category and convert to std::error_code") {
    const std::error_code code = TlsErrc::truncated;
    CHECK(std::string{code.category().name()} == "muxio.tls");
    CHECK(code.message().find("close_notify") != std::string::npos);
    CHECK(code == muxio::make_error_code(TlsErrc::truncated));
    CHECK(code != TlsErrc::closed);
    const TlsError error{TlsErrc::certificate_verify_failed, "tls handshake: certificate verify failed", 10};
    CHECK(error.verify_result() == 10);
    CHECK(std::string{error.what()} == "tls handshake: certificate verify failed");
}
