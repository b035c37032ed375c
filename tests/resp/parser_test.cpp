// The RESP2 request parser: every frame kind, every split, every malformed
// input named in its errors, and its limits.

#include <doctest/doctest.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "resp_parser.hpp"
#include "resp_test_support.hpp"

using resp::Parser;
using resp::ParserLimits;
using resp::test::encode;
using resp::test::parse_bytewise;
using resp::test::parse_in_pieces;
using resp::test::parse_whole;
using resp::test::Parsed;
using Words = std::vector<std::string>;

namespace {

// Parses `input` whole, byte by byte, and cut once at every offset, checks
// all agree, and returns the result.
Parsed parse_every_way(std::string_view input, ParserLimits limits = {}) {
    const Parsed whole = parse_whole(input, limits);
    CHECK(parse_bytewise(input, limits) == whole);
    for (std::size_t cut = 1; cut < input.size(); ++cut) {
        INFO("cut at ", cut);
        CHECK(parse_in_pieces(input, {cut}, limits) == whole);
    }
    return whole;
}

std::string error_of(std::string_view input, ParserLimits limits = {}) {
    const Parsed parsed = parse_every_way(input, limits);
    REQUIRE(parsed.error.has_value());
    return *parsed.error;
}

}  // namespace

TEST_CASE("an array of bulk strings is one command") {
    const Parsed parsed = parse_every_way(encode({"SET", "key", "value"}));
    CHECK(parsed.commands == std::vector<Words>{{"SET", "key", "value"}});
    CHECK_FALSE(parsed.error);
    CHECK(parsed.leftover == 0);
}

TEST_CASE("bulk strings are binary-safe and may be empty") {
    const std::string value{"a\r\nb\0c$*\n", 10};
    const Parsed parsed = parse_every_way(encode({"SET", "", value}));
    REQUIRE(parsed.commands.size() == 1);
    CHECK(parsed.commands[0] == Words{"SET", "", value});
}

TEST_CASE("pipelined requests all parse, in order, in one buffer") {
    std::string input;
    std::vector<Words> expected;
    for (int i = 0; i < 20; ++i) {
        const std::string key = fmt::format("k{}", i);
        input += encode({"GET", key});
        input += "PING " + key + "\r\n";
        expected.push_back({"GET", key});
        expected.push_back({"PING", key});
    }
    CHECK(parse_every_way(input).commands == expected);
}

TEST_CASE("a request parses with arguments that view the input, not copies") {
    Parser parser;
    const std::string input = encode({"GET", "key"});
    const Parser::Result result = parser.parse(input);
    REQUIRE(result.status == Parser::Status::command);
    CHECK(result.consumed == input.size());
    REQUIRE(parser.args().size() == 2);
    CHECK(parser.args()[1].data() >= input.data());
    CHECK(parser.args()[1].data() < input.data() + input.size());
}

TEST_CASE("empty arrays and blank lines are skipped") {
    const Parsed parsed = parse_every_way("*0\r\n*-1\r\n\r\n  \t \r\n\n" + encode({"PING"}) + "*0\r\n");
    CHECK(parsed.commands == std::vector<Words>{{"PING"}});
    CHECK(parsed.leftover == 0);
}

TEST_CASE("skipped requests are consumed even when the next one is incomplete") {
    Parser parser;
    const std::string input = "*0\r\n\r\n*1\r\n$4\r\nPI";
    const Parser::Result result = parser.parse(input);
    CHECK(result.status == Parser::Status::need_more);
    CHECK(result.consumed == 6);
    const std::string rest = input.substr(6) + "NG\r\n";
    const Parser::Result second = parser.parse(rest);
    REQUIRE(second.status == Parser::Status::command);
    CHECK(second.consumed == rest.size());
    CHECK(parser.args()[0] == "PING");
}

TEST_CASE("an incomplete request is left waiting, whole") {
    for (const std::string_view input :
         {"*", "*2", "*2\r", "*2\r\n", "*2\r\n$3", "*2\r\n$3\r\nGET", "*2\r\n$3\r\nGET\r",
          "*2\r\n$3\r\nGET\r\n$1\r\nk\r", "PING", "PING\r", "SET a \"b"}) {
        INFO(input);
        const Parsed parsed = parse_every_way(input);
        CHECK(parsed.commands.empty());
        CHECK_FALSE(parsed.error);
        CHECK(parsed.leftover == input.size());
    }
}

TEST_CASE("inline requests split on blanks, with Redis's quoting") {
    CHECK(parse_every_way("PING\r\n").commands == std::vector<Words>{{"PING"}});
    CHECK(parse_every_way("PING\n").commands == std::vector<Words>{{"PING"}});
    CHECK(parse_every_way("  set\tkey   value  \r\n").commands == std::vector<Words>{{"set", "key", "value"}});
    CHECK(parse_every_way("SET k \"hello world\"\r\n").commands == std::vector<Words>{{"SET", "k", "hello world"}});
    CHECK(parse_every_way("ECHO \"a\\x41\\n\\r\\t\\b\\a\\\\\\\"z\"\r\n").commands ==
          std::vector<Words>{{"ECHO", "aA\n\r\t\b\a\\\"z"}});
    CHECK(parse_every_way("ECHO 'it\\'s \"raw\" \\n'\r\n").commands ==
          std::vector<Words>{{"ECHO", "it's \"raw\" \\n"}});
    CHECK(parse_every_way("ECHO \"\" ''\r\n").commands == std::vector<Words>{{"ECHO", "", ""}});
    CHECK(parse_every_way("ECHO ab\"cd\"\r\n").commands == std::vector<Words>{{"ECHO", "abcd"}});
    // \x with no two hex digits is an ordinary escape of 'x'.
    CHECK(parse_every_way("ECHO \"\\xZZ\"\r\n").commands == std::vector<Words>{{"ECHO", "xZZ"}});
}

TEST_CASE("inline requests with unbalanced quotes are protocol errors") {
    for (const std::string_view input : {"SET k \"abc\r\n", "SET k 'abc\r\n", "SET k \"a\"b\r\n", "SET k 'a'b\r\n"}) {
        INFO(input);
        CHECK(error_of(input) == "Protocol error: unbalanced quotes in request");
    }
}

TEST_CASE("malformed arrays are protocol errors named as Redis names them") {
    CHECK(error_of("*abc\r\n") == "Protocol error: invalid multibulk length");
    CHECK(error_of("*\r\n") == "Protocol error: invalid multibulk length");
    CHECK(error_of("*01\r\n") == "Protocol error: invalid multibulk length");
    CHECK(error_of("*+1\r\n") == "Protocol error: invalid multibulk length");
    CHECK(error_of("*1\rX") == "Protocol error: invalid multibulk length");
    CHECK(error_of("*99999999999999999999999\r\n") == "Protocol error: invalid multibulk length");
    CHECK(error_of("*1\r\n:1\r\n") == "Protocol error: expected '$', got ':'");
    CHECK(error_of("*1\r\n\x01") == "Protocol error: expected '$', got '\\x01'");
    CHECK(error_of("*1\r\n$-1\r\n") == "Protocol error: invalid bulk length");
    CHECK(error_of("*1\r\n$x\r\n") == "Protocol error: invalid bulk length");
    CHECK(error_of("*1\r\n$\r\n") == "Protocol error: invalid bulk length");
    CHECK(error_of("*1\r\n$3\rX") == "Protocol error: invalid bulk length");
    CHECK(error_of("*1\r\n$3\r\nabcde\r\n") == "Protocol error: bulk string not terminated by CRLF");
    CHECK(error_of("*1\r\n$3\r\nabc\n\r") == "Protocol error: bulk string not terminated by CRLF");
}

TEST_CASE("requests before a malformed one still parse") {
    const Parsed parsed = parse_every_way(encode({"PING"}) + "ECHO x\r\n*1\r\n$z\r\n" + encode({"PING"}));
    CHECK(parsed.commands == std::vector<Words>{{"PING"}, {"ECHO", "x"}});
    CHECK(parsed.error == "Protocol error: invalid bulk length");
}

TEST_CASE("a parser stays failed until reset") {
    Parser parser;
    CHECK(parser.parse("*x\r\n").status == Parser::Status::error);
    CHECK(parser.parse(encode({"PING"})).status == Parser::Status::error);
    CHECK(parser.error() == "Protocol error: invalid multibulk length");
    parser.reset();
    CHECK(parser.error().empty());
    CHECK(parser.parse(encode({"PING"})).status == Parser::Status::command);
}

TEST_CASE("a bulk string over the limit is refused before its data arrives") {
    ParserLimits limits;
    limits.max_bulk = 10;
    CHECK(parse_every_way(encode({"SET", "k", "0123456789"}), limits).commands.size() == 1);
    CHECK(error_of("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$11\r\n", limits) == "Protocol error: invalid bulk length");
    CHECK(error_of("*1\r\n$9223372036854775807\r\n", limits) == "Protocol error: invalid bulk length");
    // The default: 512 MiB, Redis's proto-max-bulk-len.
    CHECK(error_of("*1\r\n$536870913\r\n") == "Protocol error: invalid bulk length");
    Parser parser;
    CHECK(parser.parse("*1\r\n$536870912\r\n").status == Parser::Status::need_more);
}

TEST_CASE("an array over the element limit is refused") {
    ParserLimits limits;
    limits.max_args = 3;
    CHECK(parse_every_way(encode({"a", "b", "c"}), limits).commands.size() == 1);
    CHECK(error_of("*4\r\n", limits) == "Protocol error: invalid multibulk length");
    CHECK(error_of("*1048577\r\n") == "Protocol error: invalid multibulk length");
}

TEST_CASE("lines longer than the inline limit are refused, with or without their end") {
    ParserLimits limits;
    limits.max_inline = 16;
    CHECK(parse_whole(std::string(16, 'a'), limits).leftover == 16);
    CHECK(parse_whole(std::string(17, 'a'), limits).error == "Protocol error: too big inline request");
    CHECK(parse_bytewise(std::string(40, 'a'), limits).error == "Protocol error: too big inline request");
    CHECK(parse_whole(fmt::format("*{}", std::string(20, '1')), limits).error ==
          "Protocol error: too big mbulk count string");
    CHECK(parse_whole("*1\r\n$" + std::string(20, '1'), limits).error == "Protocol error: too big bulk count string");
    // The same whether the line end arrives with the line or later (Redis
    // accepts it in the first case): the pieces do not change the outcome.
    CHECK(error_of("ECHO " + std::string(12, 'x') + "\r\n", limits) == "Protocol error: too big inline request");
    CHECK(parse_every_way("ECHO " + std::string(11, 'x') + "\r\n", limits).commands.size() == 1);
    CHECK(error_of("*00000000000000000001\r\n$4\r\nPING\r\n", limits) == "Protocol error: too big mbulk count string");
    CHECK(error_of("*1\r\n$00000000000000004\r\nPING\r\n", limits) == "Protocol error: too big bulk count string");
}

TEST_CASE("bytes_wanted announces a large bulk string in progress") {
    Parser parser;
    const std::string header = "*2\r\n$3\r\nSET\r\n$100000\r\n";
    CHECK(parser.parse(header).status == Parser::Status::need_more);
    CHECK(parser.bytes_wanted() == header.size() + 100000 + 2);
    std::string input = header + std::string(100000, 'v') + "\r\n";
    const Parser::Result result = parser.parse(input);
    REQUIRE(result.status == Parser::Status::command);
    CHECK(parser.args()[1].size() == 100000);
    CHECK(parser.bytes_wanted() == 0);
}

TEST_CASE("parse_int64 is as strict as Redis") {
    std::int64_t value = 0;
    CHECK((resp::parse_int64("0", value) && value == 0));
    CHECK((resp::parse_int64("-12", value) && value == -12));
    CHECK((resp::parse_int64("9223372036854775807", value) && value == INT64_MAX));
    CHECK((resp::parse_int64("-9223372036854775808", value) && value == INT64_MIN));
    for (const std::string_view bad : {"", "-", "-0", "01", "+1", " 1", "1 ", "1a", "9223372036854775808",
                                       "-9223372036854775809", "99999999999999999999", "1.5"}) {
        INFO(bad);
        CHECK_FALSE(resp::parse_int64(bad, value));
    }
}

TEST_CASE("request_size is the last command's request, without the empty ones skipped before it") {
    Parser parser;
    const std::string ping = encode({"PING"});
    const std::string input = "\r\n*0\r\n" + ping + "ECHO x\r\n";
    const Parser::Result first = parser.parse(input);
    REQUIRE(first.status == Parser::Status::command);
    CHECK(first.consumed == 6 + ping.size());
    CHECK(parser.request_size() == ping.size());
    const Parser::Result second = parser.parse(std::string_view{input}.substr(first.consumed));
    REQUIRE(second.status == Parser::Status::command);
    CHECK(parser.request_size() == 8);
}
