// Helpers for the TLS suite: a test PKI made with OpenSSL's API at run time
// (a CA, server certificates good, expired and for another name, a
// self-signed one), contexts over it, and child processes (openssl, curl)
// whose output a coroutine reads on the reactor.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "muxio/reactor.hpp"
#include "muxio/task.hpp"
#include "muxio/tls.hpp"

namespace muxio::tls_test {

/// A certificate (PEM, chain) and its private key (PEM), as file paths.
struct Credentials {
    std::string certificate;
    std::string key;
};

/// The test PKI in a temporary directory, made once per process and removed
/// at exit. Every server certificate but `self_signed` is issued by `ca`.
struct Pki {
    std::filesystem::path directory;
    std::string ca;           ///< The CA's certificate: what clients trust.
    Credentials server;       ///< localhost, 127.0.0.1 and ::1, valid now.
    Credentials expired;      ///< localhost, expired an hour ago.
    Credentials other_name;   ///< other.example only.
    Credentials self_signed;  ///< localhost, self-signed (no CA).
    std::string not_pem;      ///< A file that is not PEM.
};

/// The PKI (made on first use).
const Pki& pki();

/// A server context with `credentials` (default: pki().server).
TlsContext server_context(const Credentials& credentials, std::vector<std::string> alpn = {});
TlsContext server_context();
/// A server context with pki().server offering `alpn`.
TlsContext alpn_server_context(std::vector<std::string> alpn);
/// A client context trusting pki().ca.
TlsContext client_context(std::vector<std::string> alpn = {});

/// A program run with stdin a pipe and stdout+stderr one pipe, both
/// non-blocking; killed (SIGKILL) and reaped when destroyed if still running.
class Child {
public:
    explicit Child(std::vector<std::string> argv);
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;
    Child(Child&&) = delete;
    Child& operator=(Child&&) = delete;
    ~Child();

    /// Writes to its stdin (blocking; the text is short).
    void write(std::string_view text);
    /// Closes its stdin.
    void close_input();
    /// Reads its output on `reactor` until `needle` appears in it at or
    /// after `from` (true) or the output ends (false). Everything read so
    /// far is in output().
    Task<bool> read_until(Reactor& reactor, std::string_view needle, std::size_t from = 0);
    /// Reads until the output ends, then reaps it: its exit status
    /// (or 128 + signal).
    Task<int> wait(Reactor& reactor);
    /// Everything it printed so far.
    [[nodiscard]] const std::string& output() const noexcept { return output_; }

private:
    pid_t pid_ = -1;
    int input_ = -1;
    int output_fd_ = -1;
    int pidfd_ = -1;
    std::string output_;
    bool reaped_ = false;
    int status_ = -1;
};

/// The path of a program on PATH, or empty.
std::string find_program(std::string_view name);

}  // namespace muxio::tls_test
