// tls_filter(): a TlsEngine as the TransportFilter of a callback Transport.
// The engine's steps map one to one onto the filter's; the transport moves
// the ciphertext.
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include "muxio/tls.hpp"
#include "muxio/transport.hpp"

namespace muxio {

namespace {

static_assert(static_cast<int>(TlsStatus::ok) == static_cast<int>(TransportFilter::Status::ok) &&
              static_cast<int>(TlsStatus::want_input) == static_cast<int>(TransportFilter::Status::want_input) &&
              static_cast<int>(TlsStatus::want_output) == static_cast<int>(TransportFilter::Status::want_output) &&
              static_cast<int>(TlsStatus::closed) == static_cast<int>(TransportFilter::Status::closed) &&
              static_cast<int>(TlsStatus::failed) == static_cast<int>(TransportFilter::Status::failed));

TransportFilter::Status status_of(TlsStatus status) noexcept {
    return static_cast<TransportFilter::Status>(status);
}

TransportFilter::Result result_of(TlsResult result) noexcept {
    return {result.bytes, status_of(result.status)};
}

class TlsFilter final : public TransportFilter {
public:
    TlsFilter(const TlsContext& context, const std::string& server_name) : engine_{context, server_name} {}

    Status handshake() noexcept override { return status_of(engine_.handshake()); }
    Result read(std::span<std::byte> buffer) noexcept override { return result_of(engine_.read(buffer)); }
    Result write(std::span<const std::byte> buffer) noexcept override { return result_of(engine_.write(buffer)); }
    Status shutdown() noexcept override { return status_of(engine_.shutdown()); }
    std::span<std::byte> input_space() noexcept override { return engine_.input_space(); }
    void commit_input(std::size_t size) noexcept override { engine_.commit_input(size); }
    void input_ended() noexcept override { engine_.input_ended(); }
    std::span<const std::byte> output() noexcept override { return engine_.output(); }
    void consume_output(std::size_t size) noexcept override { engine_.consume_output(size); }
    [[nodiscard]] std::error_code error() const noexcept override { return engine_.error(); }
    [[nodiscard]] std::string_view error_message() const noexcept override { return engine_.error_message(); }

    [[nodiscard]] const TlsEngine& engine() const noexcept { return engine_; }

private:
    TlsEngine engine_;
};

}  // namespace

TransportFilterFactory tls_filter(TlsContext context, std::string server_name) {
    // An engine made and dropped here reports what every connection would
    // refuse (an empty context, a verifying client without a server name,
    // a name OpenSSL rejects) when the server is set up.
    (void)TlsEngine{context, server_name};
    return [context = std::move(context), server_name = std::move(server_name)]() -> std::unique_ptr<TransportFilter> {
        return std::make_unique<TlsFilter>(context, server_name);
    };
}

const TlsEngine* tls_engine(const Transport& transport) noexcept {
    const auto* filter = dynamic_cast<const TlsFilter*>(transport.filter());
    return filter == nullptr ? nullptr : &filter->engine();
}

}  // namespace muxio
