// Uses an installed muxio::tls: a client context over the system's trust
// store and an engine whose first handshake step produces a ClientHello.
// Built and run only when the installed muxio has TLS. Exits 0 on success,
// 1 with a message otherwise.
#include <cstdio>
#include <exception>

#include <muxio/tls.hpp>

int main() {
    try {
        const muxio::TlsContext context = muxio::TlsContext::client();
        muxio::TlsEngine engine{context, "example.com"};
        const muxio::TlsStatus status = engine.handshake();
        if (status != muxio::TlsStatus::want_input || engine.output().empty()) {
            std::fprintf(stderr, "muxio tls consumer: FAILED: no ClientHello after the first handshake step\n");
            return 1;
        }
        std::printf("muxio tls consumer: ClientHello of %zu bytes for %s\n", engine.output_pending(),
                    engine.server_name().c_str());
        return 0;
    } catch (const std::exception& error) {
        std::fprintf(stderr, "muxio tls consumer: FAILED: exception: %s\n", error.what());
        return 1;
    }
}
