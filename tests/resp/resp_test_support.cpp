#include <fmt/format.h>

#include "resp_test_support.hpp"

#include <doctest/doctest.h>

namespace resp::test {

Parsed parse_in_pieces(std::string_view input, const std::vector<std::size_t>& cuts, ParserLimits limits) {
    Parser parser{limits};
    Parsed parsed;
    std::string buffer;
    std::size_t fed = 0;
    auto feed_until = [&](std::size_t end) -> bool {
        buffer.append(input.substr(fed, end - fed));
        fed = end;
        // A bounded loop: every command consumes at least one byte.
        for (std::size_t round = 0; round <= input.size() + 1; ++round) {
            const Parser::Result result = parser.parse(buffer);
            REQUIRE(result.consumed <= buffer.size());
            if (result.status == Parser::Status::error) {
                CHECK(result.consumed == 0);
                parsed.error = parser.error();
                return false;
            }
            if (result.status == Parser::Status::need_more) {
                buffer.erase(0, result.consumed);
                return true;
            }
            REQUIRE(result.consumed > 0);
            std::vector<std::string> words;
            for (const std::string_view word : parser.args()) {
                words.emplace_back(word);
            }
            REQUIRE_FALSE(words.empty());
            parsed.commands.push_back(std::move(words));
            buffer.erase(0, result.consumed);
        }
        FAIL("the parser did not stop");
        return false;
    };
    for (const std::size_t cut : cuts) {
        if (cut > fed && cut < input.size() && !feed_until(cut)) {
            return parsed;
        }
    }
    if (feed_until(input.size())) {
        parsed.leftover = buffer.size();
    }
    return parsed;
}

Parsed parse_whole(std::string_view input, ParserLimits limits) {
    return parse_in_pieces(input, {}, limits);
}

Parsed parse_bytewise(std::string_view input, ParserLimits limits) {
    std::vector<std::size_t> cuts;
    for (std::size_t i = 1; i < input.size(); ++i) {
        cuts.push_back(i);
    }
    return parse_in_pieces(input, cuts, limits);
}

std::string encode(std::initializer_list<std::string_view> words) {
    std::string out = fmt::format("*{}\r\n", words.size());
    for (const std::string_view word : words) {
        out += fmt::format("${}\r\n", word.size());
        out += word;
        out += "\r\n";
    }
    return out;
}

std::string Harness::run(std::initializer_list<std::string_view> words) {
    const std::vector<std::string_view> args{words};
    std::string out;
    last_after = dispatcher.execute(args, out);
    return out;
}

}  // namespace resp::test
