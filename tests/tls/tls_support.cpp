#include "tls/tls_support.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "muxio/awaitables.hpp"

extern char** environ;

namespace muxio::tls_test {

namespace {

struct KeyFree {
    void operator()(EVP_PKEY* key) const noexcept { EVP_PKEY_free(key); }
};
struct CertFree {
    void operator()(X509* cert) const noexcept { X509_free(cert); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;
using Cert = std::unique_ptr<X509, CertFree>;

void require(bool ok, std::string_view what) {
    if (!ok) {
        throw std::runtime_error(fmt::format("test PKI: {} failed", what));
    }
}

Key new_key() {
    Key key{EVP_EC_gen("P-256")};
    require(key != nullptr, "EVP_EC_gen");
    return key;
}

void add_extension(X509* cert, X509* issuer, int nid, const std::string& value) {
    X509V3_CTX context;
    X509V3_set_ctx_nodb(&context);
    X509V3_set_ctx(&context, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &context, nid, value.c_str());
    require(extension != nullptr, "X509V3_EXT_conf_nid");
    require(X509_add_ext(cert, extension, -1) == 1, "X509_add_ext");
    X509_EXTENSION_free(extension);
}

// A certificate for `common_name` with `alt_names` (empty: a CA), valid
// from `not_before` to `not_after` seconds from now, signed by `issuer`
// (null: self-signed).
Cert make_certificate(EVP_PKEY* key, const std::string& common_name, const std::string& alt_names, long not_before,
                      long not_after, X509* issuer, EVP_PKEY* issuer_key, long serial) {
    Cert cert{X509_new()};
    require(cert != nullptr, "X509_new");
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), not_before);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), not_after);
    X509_set_pubkey(cert.get(), key);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("muxio tests"), -1, -1,
                               0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(common_name.c_str()),
                               -1, -1, 0);
    X509* signer = issuer != nullptr ? issuer : cert.get();
    require(X509_set_issuer_name(cert.get(), X509_get_subject_name(signer)) == 1, "X509_set_issuer_name");
    if (alt_names.empty()) {
        add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
        add_extension(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_extension(cert.get(), signer, NID_basic_constraints, "CA:FALSE");
        add_extension(cert.get(), signer, NID_subject_alt_name, alt_names);
        add_extension(cert.get(), signer, NID_ext_key_usage, "serverAuth");
    }
    add_extension(cert.get(), signer, NID_subject_key_identifier, "hash");
    require(X509_sign(cert.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
    return cert;
}

void write_pem(const std::string& path, X509* cert, EVP_PKEY* key) {
    FILE* file = std::fopen(path.c_str(), "w");
    require(file != nullptr, "fopen " + path);
    bool ok = true;
    if (cert != nullptr) {
        ok = PEM_write_X509(file, cert) == 1;
    }
    if (key != nullptr) {
        ok = ok && PEM_write_PrivateKey(file, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
    }
    std::fclose(file);
    require(ok, "PEM_write " + path);
}

struct PkiOwner {
    Pki pki;
    PkiOwner() {
        std::string templ = (std::filesystem::temp_directory_path() / "muxio-tls-XXXXXX").string();
        require(::mkdtemp(templ.data()) != nullptr, "mkdtemp");
        pki.directory = templ;
        const auto file = [&](std::string_view name) { return (pki.directory / name).string(); };
        constexpr long day = 24L * 3600;

        const Key ca_key = new_key();
        const Cert ca = make_certificate(ca_key.get(), "muxio test CA", "", -day, 30 * day, nullptr, nullptr, 1);
        pki.ca = file("ca.pem");
        write_pem(pki.ca, ca.get(), nullptr);

        const auto issue = [&](Credentials& out, std::string_view stem, const std::string& common_name,
                               const std::string& alt_names, long not_before, long not_after, bool self, long serial) {
            const Key key = new_key();
            const Cert cert = make_certificate(key.get(), common_name, alt_names, not_before, not_after,
                                               self ? nullptr : ca.get(), self ? nullptr : ca_key.get(), serial);
            out.certificate = file(fmt::format("{}.pem", stem));
            out.key = file(fmt::format("{}.key", stem));
            write_pem(out.certificate, cert.get(), nullptr);
            write_pem(out.key, nullptr, key.get());
        };
        const std::string localhost = "DNS:localhost,IP:127.0.0.1,IP:::1";
        issue(pki.server, "server", "localhost", localhost, -day, 30 * day, false, 2);
        issue(pki.expired, "expired", "localhost", localhost, -2 * day, -3600, false, 3);
        issue(pki.other_name, "other", "other.example", "DNS:other.example", -day, 30 * day, false, 4);
        issue(pki.self_signed, "self", "localhost", localhost, -day, 30 * day, true, 5);
        pki.not_pem = file("not-pem.txt");
        FILE* text = std::fopen(pki.not_pem.c_str(), "w");
        require(text != nullptr, "fopen not-pem.txt");
        std::fputs("this is not a certificate\n", text);
        std::fclose(text);
    }
    ~PkiOwner() {
        std::error_code ignored;
        std::filesystem::remove_all(pki.directory, ignored);
    }
    PkiOwner(const PkiOwner&) = delete;
    PkiOwner& operator=(const PkiOwner&) = delete;
    PkiOwner(PkiOwner&&) = delete;
    PkiOwner& operator=(PkiOwner&&) = delete;
};

void set_nonblocking(int fd) {
    const int flags = ::fcntl(fd, F_GETFL);
    REQUIRE(flags >= 0);
    REQUIRE(::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0);
}

}  // namespace

const Pki& pki() {
    static const PkiOwner owner;
    return owner.pki;
}

TlsContext server_context(const Credentials& credentials, std::vector<std::string> alpn) {
    TlsServerOptions options;
    options.certificate_chain_file = credentials.certificate;
    options.private_key_file = credentials.key;
    options.alpn_protocols = std::move(alpn);
    return TlsContext::server(options);
}

TlsContext server_context() {
    return server_context(pki().server);
}

TlsContext alpn_server_context(std::vector<std::string> alpn) {
    return server_context(pki().server, std::move(alpn));
}

TlsContext client_context(std::vector<std::string> alpn) {
    TlsClientOptions options;
    options.ca_file = pki().ca;
    options.alpn_protocols = std::move(alpn);
    return TlsContext::client(options);
}

std::string find_program(std::string_view name) {
    const char* path = std::getenv("PATH");
    std::string directories = path != nullptr ? path : "/usr/bin:/bin";
    std::size_t start = 0;
    while (start <= directories.size()) {
        const std::size_t end = std::min(directories.find(':', start), directories.size());
        const std::filesystem::path candidate = std::filesystem::path{directories.substr(start, end - start)} / name;
        if (::access(candidate.c_str(), X_OK) == 0) {
            return candidate.string();
        }
        start = end + 1;
    }
    return {};
}

Child::Child(std::vector<std::string> argv) {
    int in[2];
    int out[2];
    REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
    std::vector<char*> args;
    for (std::string& arg : argv) {
        args.push_back(arg.data());
    }
    args.push_back(nullptr);
    const int spawned = ::posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(in[0]);
    ::close(out[1]);
    input_ = in[1];
    output_fd_ = out[0];
    REQUIRE_MESSAGE(spawned == 0, "posix_spawn ", argv[0]);
    set_nonblocking(output_fd_);
    pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    REQUIRE_MESSAGE(pidfd_ >= 0, "pidfd_open");
}

Child::~Child() {
    if (!reaped_ && pid_ > 0) {
        ::kill(pid_, SIGKILL);
        int status = 0;
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
    }
    for (const int fd : {input_, output_fd_, pidfd_}) {
        if (fd >= 0) {
            ::close(fd);
        }
    }
}

void Child::write(std::string_view text) {
    REQUIRE(input_ >= 0);
    while (!text.empty()) {
        const ssize_t written = ::write(input_, text.data(), text.size());
        REQUIRE(written > 0);
        text.remove_prefix(static_cast<std::size_t>(written));
    }
}

void Child::close_input() {
    if (input_ >= 0) {
        ::close(input_);
        input_ = -1;
    }
}

Task<bool> Child::read_until(Reactor& reactor, std::string_view needle, std::size_t from) {
    char buffer[4096];
    while (output_.find(needle, from) == std::string::npos) {
        if (output_fd_ < 0) {
            co_return false;
        }
        const ssize_t got = ::read(output_fd_, buffer, sizeof buffer);
        if (got > 0) {
            output_.append(buffer, static_cast<std::size_t>(got));
        } else if (got == 0) {
            ::close(output_fd_);
            output_fd_ = -1;
        } else if (errno == EAGAIN) {
            co_await readable(reactor, output_fd_);
        } else if (errno != EINTR) {
            FAIL("read from the child: ", errno);
        }
    }
    co_return true;
}

Task<int> Child::wait(Reactor& reactor) {
    // Output that never ends is a bug the caller's with_timeout() catches.
    static constexpr std::string_view never{"\0never printed", 15};
    (void)co_await read_until(reactor, never);
    co_await readable(reactor, pidfd_);
    int status = 0;
    REQUIRE(::waitpid(pid_, &status, 0) == pid_);
    reaped_ = true;
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    co_return status_;
}

}  // namespace muxio::tls_test
