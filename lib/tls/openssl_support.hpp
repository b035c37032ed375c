// What the TLS sources share: the context's state behind TlsContext, and
// OpenSSL's error queue turned into words.
#pragma once

#include <openssl/ssl.h>

#include <string>
#include <string_view>
#include <vector>

#include "muxio/tls.hpp"

namespace muxio {

struct TlsContext::State {
    State(SSL_CTX* native, TlsRole role_of, bool verify) noexcept : context{native}, role{role_of}, verifies{verify} {}
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    State(State&&) = delete;
    State& operator=(State&&) = delete;
    ~State() { SSL_CTX_free(context); }

    SSL_CTX* context;
    TlsRole role;
    bool verifies;
    // A server's ALPN protocols in wire format (length-prefixed names), most
    // preferred first: what the selection callback offers from.
    std::vector<unsigned char> alpn;
};

namespace detail {

// The reason of one packed OpenSSL error ("no start line", "No such file or
// directory"), never empty.
[[nodiscard]] std::string openssl_reason(unsigned long error);

// The reasons on this thread's OpenSSL error queue, oldest first, joined by
// "; ", and the queue emptied. `fallback` if it was empty.
[[nodiscard]] std::string take_openssl_errors(std::string_view fallback);

// The wire format of ALPN protocols. std::invalid_argument for an empty
// name or one longer than 255 bytes.
[[nodiscard]] std::vector<unsigned char> alpn_wire_format(const std::vector<std::string>& protocols,
                                                          std::string_view operation);

}  // namespace detail

}  // namespace muxio
