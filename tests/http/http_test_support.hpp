// Helpers for the muxio-http tests: driving a RequestParser the way the
// server does, and a scratch directory tree.
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "request_parser.hpp"

namespace muxio::http::test {

/// What a parser made of some input: the requests in order, then the error
/// that stopped it, if any.
struct Parsed {
    std::vector<Request> requests;
    std::optional<ParseError> error;
};

/// Feeds `input` in the pieces `cuts` delimits (offsets in increasing
/// order; empty: all at once), taking every request as the server does,
/// with leftovers carried over to the next piece.
Parsed parse_pieces(RequestParser& parser, std::string_view input, const std::vector<std::size_t>& cuts = {});

/// parse_pieces with a fresh parser and default limits.
Parsed parse(std::string_view input, const std::vector<std::size_t>& cuts = {});

/// A directory under the system's temporary directory, removed with
/// everything in it on destruction.
class TempDir {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
    /// Writes `content` to the file `relative` (parents created).
    void write(const std::string& relative, std::string_view content) const;

private:
    std::filesystem::path path_;
};

/// The whole content of an open descriptor, read from offset 0 with pread.
std::string read_fd(int fd);

}  // namespace muxio::http::test
