#include "http_test_support.hpp"

#include <unistd.h>

#include <array>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <system_error>

namespace muxio::http::test {

Parsed parse_pieces(RequestParser& parser, std::string_view input, const std::vector<std::size_t>& cuts) {
    Parsed parsed;
    std::string pending;
    std::size_t start = 0;
    std::vector<std::size_t> ends = cuts;
    ends.push_back(input.size());
    for (const std::size_t end : ends) {
        pending.append(input.substr(start, end - start));
        start = end;
        std::size_t used = 0;
        // Each feed() consumes something or stops at a request or an error;
        // the cap only turns a parser bug into a failure instead of a hang.
        for (std::size_t rounds = 0; rounds < 4 * input.size() + 16 && used < pending.size(); ++rounds) {
            const std::size_t consumed = parser.feed(std::string_view{pending}.substr(used));
            used += consumed;
            if (parser.has_request()) {
                parsed.requests.push_back(parser.take_request());
            } else if (parser.failed()) {
                parsed.error = parser.error();
                return parsed;
            } else if (consumed == 0) {
                break;
            }
        }
        pending.erase(0, used);
    }
    return parsed;
}

Parsed parse(std::string_view input, const std::vector<std::size_t>& cuts) {
    RequestParser parser;
    return parse_pieces(parser, input, cuts);
}

TempDir::TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "muxio-http-test-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
        throw std::system_error(errno, std::generic_category(), "mkdtemp");
    }
    path_ = pattern;
}

TempDir::~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
}

void TempDir::write(const std::string& relative, std::string_view content) const {
    const std::filesystem::path file = path_ / relative;
    std::filesystem::create_directories(file.parent_path());
    std::ofstream out{file, std::ios::binary};
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    if (!out) {
        throw std::runtime_error("cannot write " + file.string());
    }
}

std::string read_fd(int fd) {
    std::string content;
    std::array<char, 4096> buffer{};
    off_t offset = 0;
    for (;;) {
        const ssize_t got = ::pread(fd, buffer.data(), buffer.size(), offset);
        if (got <= 0) {
            return content;
        }
        content.append(buffer.data(), static_cast<std::size_t>(got));
        offset += got;
    }
}

}  // namespace muxio::http::test
