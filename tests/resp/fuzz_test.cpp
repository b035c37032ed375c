// Random bytes against the parser, with a fixed seed: it must neither crash
// nor answer differently when the same bytes arrive in different pieces.

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "resp_parser.hpp"
#include "resp_test_support.hpp"

using resp::ParserLimits;
using resp::test::parse_bytewise;
using resp::test::parse_in_pieces;
using resp::test::parse_whole;
using resp::test::Parsed;

namespace {

class Generator {
public:
    explicit Generator(std::uint64_t seed) : engine_{seed} {}

    std::size_t below(std::size_t bound) { return std::uniform_int_distribution<std::size_t>{0, bound - 1}(engine_); }

    // Bytes drawn mostly from the protocol's own alphabet, so that they
    // reach deep into the parser instead of failing at the first byte.
    std::string noise(std::size_t length) {
        static constexpr std::string_view alphabet = "*$\r\n\r\n0123456789-- \"'\\xaZ\t";
        std::string out;
        for (std::size_t i = 0; i < length; ++i) {
            out.push_back(below(8) == 0 ? static_cast<char>(below(256)) : alphabet[below(alphabet.size())]);
        }
        return out;
    }

    // A valid request, array or inline.
    std::string request() {
        std::vector<std::string> words(1 + below(4));
        for (auto& word : words) {
            word = std::string(below(6), 'a');
            for (char& c : word) {
                c = static_cast<char>('a' + below(26));
            }
        }
        std::string out;
        if (below(3) == 0) {
            for (const auto& word : words) {
                out += word.empty() ? "\"\"" : word;
                out += ' ';
            }
            out += below(2) == 0 ? "\r\n" : "\n";
            return out;
        }
        out = fmt::format("*{}\r\n", words.size());
        for (const auto& word : words) {
            out += fmt::format("${}\r\n{}\r\n", word.size(), word);
        }
        return out;
    }

    // Valid requests with a few bytes changed, dropped or inserted.
    std::string mutated() {
        std::string out;
        for (std::size_t n = 1 + below(4); n > 0; --n) {
            out += request();
        }
        for (std::size_t n = below(4); n > 0 && !out.empty(); --n) {
            const std::size_t at = below(out.size());
            switch (below(3)) {
                case 0:
                    out[at] = noise(1)[0];
                    break;
                case 1:
                    out.erase(at, 1);
                    break;
                default:
                    out.insert(at, noise(1 + below(3)));
                    break;
            }
        }
        return out;
    }

    std::vector<std::size_t> cuts(std::size_t size) {
        std::vector<std::size_t> out;
        for (std::size_t at = 1; at < size; at += 1 + below(7)) {
            out.push_back(at);
        }
        return out;
    }

private:
    std::mt19937_64 engine_;
};

void check_consistent(Generator& generator, const std::string& input, ParserLimits limits) {
    const Parsed whole = parse_whole(input, limits);
    INFO("input: ", input);
    CHECK(parse_bytewise(input, limits) == whole);
    CHECK(parse_in_pieces(input, generator.cuts(input.size()), limits) == whole);
    if (whole.error) {
        CHECK(whole.error->rfind("Protocol error: ", 0) == 0);
    }
}

}  // namespace

TEST_CASE("random bytes parse the same in any pieces") {
    Generator generator{0x5eed'0001};
    for (int round = 0; round < 3000; ++round) {
        check_consistent(generator, generator.noise(1 + generator.below(120)), {});
    }
}

TEST_CASE("mutated requests parse the same in any pieces") {
    Generator generator{0x5eed'0002};
    std::size_t commands = 0;
    std::size_t errors = 0;
    for (int round = 0; round < 3000; ++round) {
        const std::string input = generator.mutated();
        check_consistent(generator, input, {});
        const Parsed parsed = parse_whole(input);
        commands += parsed.commands.size();
        errors += parsed.error ? 1U : 0U;
    }
    // The generator exercises both outcomes, not just one.
    CHECK(commands > 1000);
    CHECK(errors > 100);
}

TEST_CASE("random bytes under tight limits parse the same in any pieces") {
    // Lengths and counts over these limits are refused when their header is
    // read, and lines over the inline limit whether their end has arrived or
    // not, so the pieces cannot change the outcome.
    ParserLimits limits;
    limits.max_bulk = 3;
    limits.max_args = 2;
    limits.max_inline = 8;
    Generator generator{0x5eed'0003};
    for (int round = 0; round < 2000; ++round) {
        check_consistent(generator, round % 2 == 0 ? generator.mutated() : generator.noise(1 + generator.below(80)),
                         limits);
    }
}
