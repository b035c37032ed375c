// The TLS example README.md shows, compiled and run (built only with
// muxio::tls, MUXIO_TLS). The code between the readme-begin and readme-end
// markers is printed in README.md verbatim; readme_snippets_test.cpp fails
// when the two differ.
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include <muxio/muxio.hpp>
#include <muxio/tls.hpp>

// readme-begin: tls
// One context per server, shared by all its connections.
muxio::TlsContext make_server_context(const std::string& chain_file, const std::string& key_file) {
    muxio::TlsServerOptions options;
    options.certificate_chain_file = chain_file;  // PEM: the certificate, then intermediates
    options.private_key_file = key_file;
    return muxio::TlsContext::server(options);
}

// The server's end of one accepted connection: a greeting, then
// close_notify so that the client's read ends cleanly. The handshake is
// bounded in time: a peer that sends nothing would hold it forever.
muxio::Task<void> greet(muxio::Reactor& reactor, muxio::TcpStream accepted, const muxio::TlsContext& context) {
    muxio::TlsStream tls = muxio::TlsStream::server(std::move(accepted), context);
    co_await muxio::with_timeout(reactor, std::chrono::seconds{10}, tls.handshake());
    co_await tls.write_all("hello over TLS\n");
    co_await tls.shutdown();
}

// The client: connects, checks the server's certificate against the CAs in
// `ca_file` and the name "localhost", and reads until close_notify.
muxio::Task<std::string> fetch_greeting(muxio::Reactor& reactor, std::uint16_t port, const std::string& ca_file) {
    muxio::TlsClientOptions options;
    options.ca_file = ca_file;  // empty: the system's store
    const muxio::TlsContext context = muxio::TlsContext::client(options);
    muxio::TlsStream tls = co_await muxio::with_timeout(reactor, std::chrono::seconds{10},
                                                        muxio::TlsStream::connect(reactor, "localhost", port, context));
    std::string text;
    std::array<std::byte, 4096> buffer{};
    while (const std::size_t got = co_await tls.read_some(buffer)) {
        text.append(reinterpret_cast<const char*>(buffer.data()), got);
    }
    co_return text;
}
// readme-end: tls

#include <exception>

#include <doctest/doctest.h>

#include "support/support.hpp"
#include "tls/tls_support.hpp"

using namespace std::chrono_literals;
using muxio::test::FdLeakCheck;

namespace {

// The server's failure is kept apart, so that the client's own is the one
// run_pair() throws.
muxio::Task<void> accept_and_greet(muxio::Reactor& reactor, muxio::TcpListener& listener,
                                   const muxio::TlsContext& context, std::exception_ptr& failure) {
    try {
        co_await greet(reactor, co_await listener.accept(), context);
    } catch (...) {
        failure = std::current_exception();
    }
}

// Runs the README's server on one loopback connection and its client
// against it: the client's text, or what the client threw.
std::string run_pair(const muxio::tls_test::Credentials& server_credentials, std::exception_ptr& server_failure) {
    muxio::Reactor reactor;
    const muxio::TlsContext server_context =
        make_server_context(server_credentials.certificate, server_credentials.key);
    muxio::TcpListener listener = muxio::TcpListener::bind(reactor, muxio::SocketAddress::ipv4("127.0.0.1", 0));
    const std::uint16_t port = listener.local_address().port();
    auto both = [&]() -> muxio::Task<std::string> {
        auto [served, text] =
            co_await muxio::when_all(accept_and_greet(reactor, listener, server_context, server_failure),
                                     fetch_greeting(reactor, port, muxio::tls_test::pki().ca));
        (void)served;
        co_return std::move(text);
    };
    // The timeout only bounds a bug.
    return muxio::run_until_complete(reactor, muxio::with_timeout(reactor, 30s, both()));
}

}  // namespace

TEST_CASE("the README's TLS client reads the README's TLS server's greeting over a verified connection") {
    FdLeakCheck leak_check;
    std::exception_ptr server_failure;
    CHECK(run_pair(muxio::tls_test::pki().server, server_failure) == "hello over TLS\n");
    CHECK_FALSE(server_failure);
}

TEST_CASE("the README's TLS client refuses a server whose certificate is for another name") {
    FdLeakCheck leak_check;
    std::exception_ptr server_failure;
    try {
        (void)run_pair(muxio::tls_test::pki().other_name, server_failure);
        FAIL("the client accepted a certificate for other.example");
    } catch (const muxio::TlsError& error) {
        CHECK(error.code() == muxio::TlsErrc::hostname_mismatch);
    }
    CHECK(server_failure);  // the client's alert ended the server's handshake
}
