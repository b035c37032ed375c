// Every command through the Dispatcher: replies byte for byte, arity errors,
// integer edge cases, and expiry on a manual clock.

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "commands.hpp"
#include "resp_test_support.hpp"

using namespace std::chrono_literals;
using resp::After;
using resp::test::Harness;

namespace {

constexpr std::string_view nil = "$-1\r\n";
constexpr std::string_view ok = "+OK\r\n";
constexpr std::string_view not_integer = "-ERR value is not an integer or out of range\r\n";
constexpr std::string_view syntax = "-ERR syntax error\r\n";

std::string arity(std::string_view name) {
    return "-ERR wrong number of arguments for '" + std::string{name} + "' command\r\n";
}

}  // namespace

TEST_CASE("PING and ECHO") {
    Harness h;
    CHECK(h.run({"PING"}) == "+PONG\r\n");
    CHECK(h.run({"ping", "hello"}) == "$5\r\nhello\r\n");
    CHECK(h.run({"PING", "a", "b"}) == arity("ping"));
    CHECK(h.run({"ECHO", "x y"}) == "$3\r\nx y\r\n");
    CHECK(h.run({"ECHO", ""}) == "$0\r\n\r\n");
    CHECK(h.run({"ECHO"}) == arity("echo"));
    CHECK(h.run({"ECHO", "a", "b"}) == arity("echo"));
}

TEST_CASE("command names are case-insensitive, and unknown ones are named with their first arguments") {
    Harness h;
    CHECK(h.run({"pInG"}) == "+PONG\r\n");
    CHECK(h.run({"foo"}) == "-ERR unknown command 'foo', with args beginning with: \r\n");
    CHECK(h.run({"FOO", "a", "b c"}) == "-ERR unknown command 'FOO', with args beginning with: 'a' 'b c' \r\n");
    // CR and LF cannot end the error line early.
    CHECK(h.run({"x\r\ny"}) == "-ERR unknown command 'x  y', with args beginning with: \r\n");
    const std::string long_arg(300, 'a');
    const std::string reply = h.run({"nope", long_arg, "more"});
    CHECK(reply.size() < 300);
    CHECK(reply.find("more") == std::string::npos);
}

TEST_CASE("SET and GET") {
    Harness h;
    CHECK(h.run({"GET", "k"}) == nil);
    CHECK(h.run({"SET", "k", "v"}) == ok);
    CHECK(h.run({"GET", "k"}) == "$1\r\nv\r\n");
    CHECK(h.run({"SET", "k", std::string_view{"a\0b", 3}}) == ok);
    CHECK(h.run({"GET", "k"}) == std::string{"$3\r\na\0b\r\n", 9});
    CHECK(h.run({"GET"}) == arity("get"));
    CHECK(h.run({"GET", "a", "b"}) == arity("get"));
    CHECK(h.run({"SET", "k"}) == arity("set"));
}

TEST_CASE("SET NX, XX and GET") {
    Harness h;
    CHECK(h.run({"SET", "k", "1", "XX"}) == nil);
    CHECK(h.run({"GET", "k"}) == nil);
    CHECK(h.run({"SET", "k", "1", "nx"}) == ok);
    CHECK(h.run({"SET", "k", "2", "NX"}) == nil);
    CHECK(h.run({"GET", "k"}) == "$1\r\n1\r\n");
    CHECK(h.run({"SET", "k", "3", "XX"}) == ok);
    CHECK(h.run({"SET", "k", "4", "GET"}) == "$1\r\n3\r\n");
    CHECK(h.run({"SET", "new", "1", "GET"}) == nil);
    CHECK(h.run({"SET", "k", "5", "NX", "GET"}) == "$1\r\n4\r\n");
    CHECK(h.run({"GET", "k"}) == "$1\r\n4\r\n");
    CHECK(h.run({"SET", "k", "v", "NX", "XX"}) == syntax);
    CHECK(h.run({"SET", "k", "v", "BOGUS"}) == syntax);
}

TEST_CASE("SET EX and PX set a deadline, a plain SET clears it, KEEPTTL keeps it") {
    Harness h;
    CHECK(h.run({"SET", "k", "v", "EX", "10"}) == ok);
    CHECK(h.run({"TTL", "k"}) == ":10\r\n");
    CHECK(h.run({"PTTL", "k"}) == ":10000\r\n");
    CHECK(h.run({"SET", "k", "v", "px", "1500"}) == ok);
    CHECK(h.run({"PTTL", "k"}) == ":1500\r\n");
    CHECK(h.run({"TTL", "k"}) == ":2\r\n");  // rounded, as Redis does
    CHECK(h.run({"SET", "k", "w", "KEEPTTL"}) == ok);
    CHECK(h.run({"PTTL", "k"}) == ":1500\r\n");
    CHECK(h.run({"GET", "k"}) == "$1\r\nw\r\n");
    CHECK(h.run({"SET", "k", "v"}) == ok);
    CHECK(h.run({"TTL", "k"}) == ":-1\r\n");
}

TEST_CASE("SET's expire errors") {
    Harness h;
    CHECK(h.run({"SET", "k", "v", "EX"}) == syntax);
    CHECK(h.run({"SET", "k", "v", "EX", "1", "PX", "1"}) == syntax);
    CHECK(h.run({"SET", "k", "v", "EX", "1", "KEEPTTL"}) == syntax);
    CHECK(h.run({"SET", "k", "v", "KEEPTTL", "PX", "1"}) == syntax);
    CHECK(h.run({"SET", "k", "v", "EX", "ten"}) == not_integer);
    CHECK(h.run({"SET", "k", "v", "EX", "1.5"}) == not_integer);
    CHECK(h.run({"SET", "k", "v", "EX", "0"}) == "-ERR invalid expire time in 'set' command\r\n");
    CHECK(h.run({"SET", "k", "v", "PX", "-5"}) == "-ERR invalid expire time in 'set' command\r\n");
    CHECK(h.run({"SET", "k", "v", "EX", "9223372036854775807"}) == "-ERR invalid expire time in 'set' command\r\n");
    CHECK(h.run({"SET", "k", "v", "PX", "9223372036854775807"}) == "-ERR invalid expire time in 'set' command\r\n");
    CHECK(h.run({"GET", "k"}) == nil);
    // Far, but representable: accepted, and never due in practice.
    CHECK(h.run({"SET", "k", "v", "EX", "100000000000"}) == ok);
    CHECK(h.run({"TTL", "k"}) == ":100000000000\r\n");
}

TEST_CASE("keys expire when the clock reaches their deadline") {
    Harness h;
    CHECK(h.run({"SET", "k", "v", "PX", "50"}) == ok);
    h.clock.now += 49ms;
    CHECK(h.run({"GET", "k"}) == "$1\r\nv\r\n");
    CHECK(h.run({"PTTL", "k"}) == ":1\r\n");
    h.clock.now += 1ms;
    CHECK(h.run({"GET", "k"}) == nil);
    CHECK(h.run({"TTL", "k"}) == ":-2\r\n");
    CHECK(h.run({"EXISTS", "k"}) == ":0\r\n");
    CHECK(h.store.stored_count() == 0);  // removed when touched
}

TEST_CASE("DEL and EXISTS count keys, duplicates included") {
    Harness h;
    h.run({"MSET", "a", "1", "b", "2"});
    CHECK(h.run({"EXISTS", "a", "b", "c", "a"}) == ":3\r\n");
    CHECK(h.run({"DEL", "a", "c", "a"}) == ":1\r\n");
    CHECK(h.run({"EXISTS", "a"}) == ":0\r\n");
    CHECK(h.run({"DEL"}) == arity("del"));
    CHECK(h.run({"EXISTS"}) == arity("exists"));
}

TEST_CASE("INCR, DECR, INCRBY and DECRBY") {
    Harness h;
    CHECK(h.run({"INCR", "n"}) == ":1\r\n");
    CHECK(h.run({"INCR", "n"}) == ":2\r\n");
    CHECK(h.run({"DECR", "n"}) == ":1\r\n");
    CHECK(h.run({"INCRBY", "n", "-11"}) == ":-10\r\n");
    CHECK(h.run({"DECRBY", "n", "5"}) == ":-15\r\n");
    CHECK(h.run({"GET", "n"}) == "$3\r\n-15\r\n");
    CHECK(h.run({"INCR"}) == arity("incr"));
    CHECK(h.run({"INCRBY", "n"}) == arity("incrby"));
    CHECK(h.run({"INCRBY", "n", "x"}) == not_integer);
}

TEST_CASE("INCR refuses non-integers and overflow, and leaves the value alone") {
    Harness h;
    for (const std::string_view bad : {"abc", "", " 1", "1 ", "01", "+1", "1.0", "-0", "9223372036854775808"}) {
        INFO(bad);
        h.run({"SET", "k", bad});
        CHECK(h.run({"INCR", "k"}) == not_integer);
    }
    h.run({"SET", "k", "9223372036854775807"});
    CHECK(h.run({"INCR", "k"}) == "-ERR increment or decrement would overflow\r\n");
    CHECK(h.run({"GET", "k"}) == "$19\r\n9223372036854775807\r\n");
    h.run({"SET", "k", "-9223372036854775808"});
    CHECK(h.run({"DECR", "k"}) == "-ERR increment or decrement would overflow\r\n");
    CHECK(h.run({"DECRBY", "k", "-9223372036854775808"}) == "-ERR decrement would overflow\r\n");
    CHECK(h.run({"INCRBY", "k", "9223372036854775807"}) == ":-1\r\n");
}

TEST_CASE("INCR keeps the key's deadline") {
    Harness h;
    h.run({"SET", "n", "1", "EX", "100"});
    CHECK(h.run({"INCR", "n"}) == ":2\r\n");
    CHECK(h.run({"TTL", "n"}) == ":100\r\n");
}

TEST_CASE("MGET and MSET") {
    Harness h;
    CHECK(h.run({"MSET", "a", "1", "b", "22"}) == ok);
    CHECK(h.run({"MGET", "a", "x", "b"}) == "*3\r\n$1\r\n1\r\n$-1\r\n$2\r\n22\r\n");
    CHECK(h.run({"MSET", "a", "1", "b"}) == arity("mset"));
    CHECK(h.run({"MSET", "a"}) == arity("mset"));
    CHECK(h.run({"MGET"}) == arity("mget"));
    h.run({"SET", "t", "v", "EX", "5"});
    h.run({"MSET", "t", "w"});
    CHECK(h.run({"TTL", "t"}) == ":-1\r\n");
}

TEST_CASE("a reply over the output limit is refused before it is built") {
    Harness h;
    const std::string value(1000, 'v');
    h.run({"SET", "big", value});
    const std::string one = "$1000\r\n" + value + "\r\n";
    const std::vector<std::string_view> mget{"MGET", "big", "big", "nothing"};
    const std::string expected = "*3\r\n" + one + one + "$-1\r\n";

    std::string out = "earlier replies";
    const std::size_t before = out.size();
    // Exactly the room needed: built.
    CHECK(h.dispatcher.execute(mget, out, before + expected.size()) == After::keep_open);
    CHECK(out.substr(before) == expected);
    // A byte less: nothing appended, nothing allocated for it.
    out.resize(before);
    out.shrink_to_fit();
    const std::size_t capacity = out.capacity();
    CHECK(h.dispatcher.execute(mget, out, before + expected.size() - 1) == After::over_limit);
    CHECK(out == "earlier replies");
    CHECK(out.capacity() == capacity);

    const std::vector<std::string_view> get{"GET", "big"};
    CHECK(h.dispatcher.execute(get, out, before + one.size() - 1) == After::over_limit);
    CHECK(out == "earlier replies");
    const std::vector<std::string_view> set_get{"SET", "big", "new", "GET"};
    CHECK(h.dispatcher.execute(set_get, out, before + one.size() - 1) == After::over_limit);
    CHECK(out == "earlier replies");
    CHECK(h.run({"GET", "big"}) == one);  // the refused SET ... GET set nothing
    // Small replies are checked once built: the caller discards them.
    const std::vector<std::string_view> ping{"PING"};
    CHECK(h.dispatcher.execute(ping, out, before + 3) == After::over_limit);
    CHECK(h.dispatcher.execute(ping, out, out.size() + 7) == After::keep_open);
    CHECK(resp::bulk_reply_size(1000) == one.size());
    CHECK(resp::bulk_reply_size(0) == 6);
}

TEST_CASE("EXPIRE, PEXPIRE, TTL, PTTL and PERSIST") {
    Harness h;
    CHECK(h.run({"TTL", "k"}) == ":-2\r\n");
    CHECK(h.run({"EXPIRE", "k", "10"}) == ":0\r\n");
    h.run({"SET", "k", "v"});
    CHECK(h.run({"TTL", "k"}) == ":-1\r\n");
    CHECK(h.run({"EXPIRE", "k", "10"}) == ":1\r\n");
    CHECK(h.run({"TTL", "k"}) == ":10\r\n");
    h.clock.now += 2500ms;
    CHECK(h.run({"TTL", "k"}) == ":8\r\n");  // 7.5 s rounds up
    CHECK(h.run({"PTTL", "k"}) == ":7500\r\n");
    CHECK(h.run({"PEXPIRE", "k", "200"}) == ":1\r\n");
    CHECK(h.run({"PTTL", "k"}) == ":200\r\n");
    CHECK(h.run({"PERSIST", "k"}) == ":1\r\n");
    CHECK(h.run({"PERSIST", "k"}) == ":0\r\n");
    CHECK(h.run({"TTL", "k"}) == ":-1\r\n");
    CHECK(h.run({"EXPIRE", "k", "x"}) == not_integer);
    CHECK(h.run({"EXPIRE", "k"}) == arity("expire"));
    CHECK(h.run({"TTL"}) == arity("ttl"));
    CHECK(h.run({"EXPIRE", "k", "9223372036854775807"}) == "-ERR invalid expire time in 'expire' command\r\n");
    CHECK(h.run({"PEXPIRE", "k", "9223372036854775807"}) == "-ERR invalid expire time in 'pexpire' command\r\n");
    // Zero or negative: the key goes at once.
    CHECK(h.run({"EXPIRE", "k", "-1"}) == ":1\r\n");
    CHECK(h.run({"EXISTS", "k"}) == ":0\r\n");
}

TEST_CASE("EXPIRE's NX, XX, GT and LT") {
    Harness h;
    h.run({"SET", "k", "v"});
    CHECK(h.run({"EXPIRE", "k", "10", "XX"}) == ":0\r\n");
    CHECK(h.run({"EXPIRE", "k", "10", "GT"}) == ":0\r\n");  // no deadline is infinite
    CHECK(h.run({"EXPIRE", "k", "10", "NX"}) == ":1\r\n");
    CHECK(h.run({"EXPIRE", "k", "20", "NX"}) == ":0\r\n");
    CHECK(h.run({"EXPIRE", "k", "20", "xx"}) == ":1\r\n");
    CHECK(h.run({"EXPIRE", "k", "5", "GT"}) == ":0\r\n");
    CHECK(h.run({"EXPIRE", "k", "5", "LT"}) == ":1\r\n");
    CHECK(h.run({"EXPIRE", "k", "50", "LT"}) == ":0\r\n");
    CHECK(h.run({"TTL", "k"}) == ":5\r\n");
    CHECK(h.run({"EXPIRE", "k", "5", "NX", "XX"}) ==
          "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n");
    CHECK(h.run({"EXPIRE", "k", "5", "GT", "LT"}) == "-ERR GT and LT options at the same time are not compatible\r\n");
    CHECK(h.run({"EXPIRE", "k", "5", "SOON"}) == "-ERR Unsupported option SOON\r\n");
}

TEST_CASE("DBSIZE, FLUSHALL, FLUSHDB and SELECT") {
    Harness h;
    CHECK(h.run({"DBSIZE"}) == ":0\r\n");
    h.run({"MSET", "a", "1", "b", "2", "c", "3"});
    h.run({"PEXPIRE", "c", "10"});
    CHECK(h.run({"DBSIZE"}) == ":3\r\n");
    h.clock.now += 10ms;
    CHECK(h.run({"DBSIZE"}) == ":2\r\n");  // an expired key does not count
    CHECK(h.run({"DBSIZE", "x"}) == arity("dbsize"));
    CHECK(h.run({"FLUSHALL", "LATER"}) == syntax);
    CHECK(h.run({"FLUSHALL"}) == ok);
    CHECK(h.run({"DBSIZE"}) == ":0\r\n");
    h.run({"SET", "a", "1", "EX", "10"});
    CHECK(h.run({"FLUSHDB", "async"}) == ok);
    CHECK(h.store.next_deadline() == std::nullopt);
    CHECK(h.run({"SELECT", "0"}) == ok);
    CHECK(h.run({"SELECT", "1"}) == "-ERR DB index is out of range\r\n");
    CHECK(h.run({"SELECT", "x"}) == not_integer);
}

TEST_CASE("QUIT replies OK and closes") {
    Harness h;
    CHECK(h.run({"QUIT"}) == ok);
    CHECK(h.last_after == After::close);
    h.run({"PING"});
    CHECK(h.last_after == After::keep_open);
}

TEST_CASE("COMMAND and CONFIG answer what clients ask at startup") {
    Harness h;
    CHECK(h.run({"COMMAND"}) == "*0\r\n");
    CHECK(h.run({"COMMAND", "DOCS"}) == "*0\r\n");
    CHECK(h.run({"command", "count"}) == ":24\r\n");
    CHECK(h.run({"COMMAND", "nope"}) == "-ERR unknown subcommand 'nope'. Try COMMAND HELP.\r\n");
    // What redis-benchmark sends before it starts.
    CHECK(h.run({"CONFIG", "GET", "save"}) == "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
    CHECK(h.run({"CONFIG", "GET", "appendonly"}) == "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n");
    CHECK(h.run({"CONFIG", "GET", "proto-*"}) == "*2\r\n$18\r\nproto-max-bulk-len\r\n$4\r\n1024\r\n");
    CHECK(h.run({"CONFIG", "GET", "nothing"}) == "*0\r\n");
    // The limits, under Redis's names.
    CHECK(h.run({"CONFIG", "GET", "maxclients", "client-*"}) ==
          "*6\r\n$26\r\nclient-output-buffer-limit\r\n$21\r\nnormal 1073741824 0 0\r\n"
          "$25\r\nclient-query-buffer-limit\r\n$10\r\n1073741824\r\n$10\r\nmaxclients\r\n$5\r\n10000\r\n");
    CHECK(h.run({"CONFIG", "GET"}) == arity("config|get"));
    CHECK(h.run({"CONFIG"}) == arity("config"));
    CHECK(h.run({"CONFIG", "REWRITE"}) == "-ERR unknown subcommand 'REWRITE'. Try CONFIG HELP.\r\n");
}

TEST_CASE("glob_match handles the patterns CONFIG GET takes") {
    using resp::glob_match;
    CHECK(glob_match("*", ""));
    CHECK(glob_match("*", "save"));
    CHECK(glob_match("SAVE", "save"));
    CHECK(glob_match("s?ve", "save"));
    CHECK(glob_match("*only", "appendonly"));
    CHECK(glob_match("a*p*y", "appendonly"));
    CHECK(glob_match("[sx]ave", "save"));
    CHECK(glob_match("[^x]ave", "save"));
    CHECK(glob_match("[a-t]ave", "save"));
    CHECK(glob_match("sa\\ve", "save"));
    CHECK_FALSE(glob_match("s?ve", "sve"));
    CHECK_FALSE(glob_match("[^s]ave", "save"));
    CHECK_FALSE(glob_match("*x", "save"));
    CHECK_FALSE(glob_match("save", "saved"));
    CHECK_FALSE(glob_match("[s", "save"));
    // Many stars against a long mismatch stay quick.
    CHECK_FALSE(glob_match("*a*a*a*a*a*a*a*a*b", std::string(2000, 'a')));
}
