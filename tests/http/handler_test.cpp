// Handler: routing, static files and their containment, serialization.

#include <doctest/doctest.h>

#include <sys/stat.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "handler.hpp"
#include "http_test_support.hpp"
#include "support/support.hpp"

using muxio::http::Handler;
using muxio::http::HeadOptions;
using muxio::http::Request;
using muxio::http::Response;
using muxio::http::test::parse;
using muxio::http::test::read_fd;
using muxio::http::test::TempDir;

namespace {

Request request(std::string method, std::string target, int minor = 1) {
    Request made;
    made.method = std::move(method);
    made.target = std::move(target);
    made.version_minor = minor;
    made.keep_alive = minor == 1;
    if (minor == 1) {
        made.headers.emplace_back("Host", "test");
    }
    return made;
}

std::string header_of(const Response& response, std::string_view name) {
    for (const auto& [field, value] : response.headers) {
        if (field == name) {
            return std::string{value};
        }
    }
    return {};
}

// A root with a few files, and a secret next to it (outside).
struct Site {
    Site() {
        dir.write("root/hello.txt", "hello file\n");
        dir.write("root/page.HTML", "<p>hi</p>");
        dir.write("root/sub/data.bin", std::string("\0\1\2\3", 4));
        dir.write("root/.hidden", "dot");
        dir.write("secret.txt", "do not serve\n");
        std::filesystem::create_directory_symlink(dir.path() / "secret.txt", dir.path() / "root" / "leak");
        std::filesystem::create_symlink("../secret.txt", dir.path() / "root" / "relative-leak");
        std::filesystem::create_directory_symlink(dir.path(), dir.path() / "root" / "up");
        std::filesystem::create_symlink("hello.txt", dir.path() / "root" / "alias.txt");
        std::filesystem::create_symlink("missing", dir.path() / "root" / "dangling");
    }
    [[nodiscard]] std::string root() const { return (dir.path() / "root").string(); }

    TempDir dir;
};

}  // namespace

TEST_CASE("GET / answers Hello, World! as text/plain") {
    muxio::test::FdLeakCheck leak_check;
    const Handler handler;
    const Response response = handler.handle(request("GET", "/"));
    CHECK(response.status == 200);
    CHECK(response.body == "Hello, World!");
    CHECK(response.content_length == response.body.size());
    CHECK(header_of(response, "Content-Type") == "text/plain; charset=utf-8");
    CHECK(response.send_body);
    CHECK_FALSE(response.close);
    CHECK(handler.handle(request("GET", "/?q=1")).body == "Hello, World!");
    CHECK(handler.handle(request("GET", "http://test/")).body == "Hello, World!");
}

TEST_CASE("HEAD / announces the length and sends no body") {
    muxio::test::FdLeakCheck leak_check;
    const Response response = Handler{}.handle(request("HEAD", "/"));
    CHECK(response.status == 200);
    CHECK(response.content_length == 13);
    CHECK(response.body.empty());
    CHECK_FALSE(response.send_body);
}

TEST_CASE("a file under the root is served with its type and length") {
    muxio::test::FdLeakCheck leak_check;
    const Site site;
    const Handler handler{site.root()};
    Response response = handler.handle(request("GET", "/hello.txt"));
    REQUIRE(response.status == 200);
    REQUIRE(response.file);
    CHECK(read_fd(response.file.get()) == "hello file\n");
    CHECK(response.content_length == 11);
    CHECK(header_of(response, "Content-Type") == "text/plain; charset=utf-8");

    response = handler.handle(request("GET", "/page.HTML"));
    CHECK(header_of(response, "Content-Type") == "text/html; charset=utf-8");
    response = handler.handle(request("GET", "/sub/data.bin"));
    REQUIRE(response.file);
    CHECK(read_fd(response.file.get()) == std::string("\0\1\2\3", 4));
    CHECK(header_of(response, "Content-Type") == "application/octet-stream");
    // Percent-encoded names, redundant slashes and "." segments.
    CHECK(handler.handle(request("GET", "/%68ello.txt")).status == 200);
    CHECK(handler.handle(request("GET", "//sub/./data.bin")).status == 200);
    CHECK(handler.handle(request("GET", "/hello.txt?download=1")).status == 200);
    CHECK(handler.handle(request("GET", "http://test/hello.txt")).status == 200);
}

TEST_CASE("HEAD of a file gives its length without opening a body") {
    muxio::test::FdLeakCheck leak_check;
    const Site site;
    const Response response = Handler{site.root()}.handle(request("HEAD", "/hello.txt"));
    CHECK(response.status == 200);
    CHECK(response.content_length == 11);
    CHECK_FALSE(response.file);
    CHECK_FALSE(response.send_body);
}

TEST_CASE("a missing file is 404, and so is any path without a root") {
    muxio::test::FdLeakCheck leak_check;
    const Site site;
    CHECK(Handler{site.root()}.handle(request("GET", "/nope.txt")).status == 404);
    CHECK(Handler{site.root()}.handle(request("GET", "/hello.txt/more")).status == 404);
    CHECK(Handler{site.root()}.handle(request("GET", "/dangling")).status == 404);
    CHECK(Handler{}.handle(request("GET", "/hello.txt")).status == 404);
}

TEST_CASE("a file named as a directory (a trailing slash or dot segment after it) is 404") {
    muxio::test::FdLeakCheck leak_check;
    const Site site;
    const Handler handler{site.root()};
    for (const std::string_view target :
         {"/hello.txt/", "/hello.txt/.", "/hello.txt//", "/hello.txt/./", "/hello.txt/.//.", "/hello.txt%2f",
          "/hello.txt/%2e", "/hello.txt/?x=1", "/alias.txt/", "/sub/data.bin/", "http://test/hello.txt/"}) {
        CAPTURE(target);
        for (const std::string_view method : {"GET", "HEAD"}) {
            const Response response = handler.handle(request(std::string{method}, std::string{target}));
            CHECK(response.status == 404);
            CHECK_FALSE(response.file);
        }
    }
    // A "." segment or a doubled slash before the file's name changes nothing.
    CHECK(handler.handle(request("GET", "/./hello.txt")).status == 200);
    CHECK(handler.handle(request("GET", "/sub/.//data.bin")).status == 200);
    // A directory is 403 with or without the trailing slash.
    for (const std::string_view target : {"/sub", "/sub/", "/sub/.", "/sub//"}) {
        CAPTURE(target);
        CHECK(handler.handle(request("GET", std::string{target})).status == 403);
    }
}

TEST_CASE("methods other than GET and HEAD are 405 with Allow") {
    muxio::test::FdLeakCheck leak_check;
    const Handler handler;
    for (const char* method : {"POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"}) {
        CAPTURE(method);
        const Response response = handler.handle(request(method, "/"));
        CHECK(response.status == 405);
        CHECK(header_of(response, "Allow") == "GET, HEAD");
        CHECK_FALSE(response.close);
    }
    Request connect = request("CONNECT", "example.test:443");
    connect.upgrade = true;
    const Response response = handler.handle(connect);
    CHECK(response.status == 405);
    CHECK(response.close);
}

TEST_CASE("'..' segments are refused, percent-encoded or not") {
    muxio::test::FdLeakCheck leak_check;
    const Site site;
    const Handler handler{site.root()};
    for (const char* target : {"/../secret.txt", "/sub/../../secret.txt", "/%2e%2e/secret.txt", "/%2E%2e/secret.txt",
                               "/.%2e/secret.txt", "/%2e%2e%2fsecret.txt", "/sub%2f..%2f..%2fsecret.txt", "/..",
                               "http://test/../secret.txt", "/sub/../hello.txt"}) {
        CAPTURE(target);
        const Response response = handler.handle(request("GET", target));
        CHECK(response.status == 400);
        CHECK_FALSE(response.file);
    }
}

TEST_CASE("symbolic links may not lead out of the root") {
    muxio::test::FdLeakCheck leak_check;
    const Site site;
    const Handler handler{site.root()};
    for (const char* target : {"/leak", "/relative-leak", "/up/secret.txt"}) {
        CAPTURE(target);
        const Response response = handler.handle(request("GET", target));
        CHECK(response.status == 404);
        CHECK_FALSE(response.file);
    }
    // A link inside the root is fine.
    Response inside = handler.handle(request("GET", "/alias.txt"));
    REQUIRE(inside.status == 200);
    CHECK(read_fd(inside.file.get()) == "hello file\n");
}

TEST_CASE("a root reached through a symbolic link still contains its files") {
    muxio::test::FdLeakCheck leak_check;
    const Site site;
    std::filesystem::create_directory_symlink(site.dir.path() / "root", site.dir.path() / "link-to-root");
    const Handler handler{(site.dir.path() / "link-to-root").string()};
    CHECK(handler.handle(request("GET", "/hello.txt")).status == 200);
    CHECK(handler.handle(request("GET", "/leak")).status == 404);
}

TEST_CASE("a directory or another non-regular file is 403") {
    muxio::test::FdLeakCheck leak_check;
    const Site site;
    const Handler handler{site.root()};
    CHECK(handler.handle(request("GET", "/sub")).status == 403);
    CHECK(handler.handle(request("GET", "/sub/")).status == 403);
    CHECK(handler.handle(request("GET", "/./")).status == 403);
    // A FIFO: opening it must not block waiting for a writer.
    const std::string fifo = site.root() + "/pipe";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    CHECK(handler.handle(request("GET", "/pipe")).status == 403);
}

TEST_CASE("bad targets and bad escapes are 400") {
    muxio::test::FdLeakCheck leak_check;
    const Site site;
    const Handler handler{site.root()};
    for (const char* target : {"/%", "/%2", "/%zz", "/a%00b", "*", "example.test:80"}) {
        CAPTURE(target);
        CHECK(handler.handle(request("GET", target)).status == 400);
    }
}

TEST_CASE("HTTP/1.1 needs exactly one Host, and other major versions are 505") {
    muxio::test::FdLeakCheck leak_check;
    const Handler handler;
    Request no_host = request("GET", "/");
    no_host.headers.clear();
    CHECK(handler.handle(no_host).status == 400);
    Request two_hosts = request("GET", "/");
    two_hosts.headers.emplace_back("host", "other");
    CHECK(handler.handle(two_hosts).status == 400);
    CHECK(handler.handle(request("GET", "/", 0)).status == 200);  // 1.0 may omit it

    Request two = request("GET", "/");
    two.version_major = 2;
    two.version_minor = 0;
    const Response response = handler.handle(two);
    CHECK(response.status == 505);
    CHECK(response.close);
}

TEST_CASE("a root that is not a directory is refused") {
    muxio::test::FdLeakCheck leak_check;
    const Site site;
    CHECK_THROWS_AS(Handler{site.root() + "/hello.txt"}, std::invalid_argument);
    CHECK_THROWS_AS(Handler{site.root() + "/no-such-dir"}, std::system_error);
}

TEST_CASE("the head carries status, Server, Date, Content-Length and Connection as needed") {
    muxio::test::FdLeakCheck leak_check;
    Response response = Handler::error(404);
    std::string out;
    muxio::http::append_head(out, response, HeadOptions{"Sun, 06 Nov 1994 08:49:37 GMT", true, false});
    CHECK(out ==
          "HTTP/1.1 404 Not Found\r\n"
          "Server: muxio-http\r\n"
          "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
          "Content-Type: text/plain; charset=utf-8\r\n"
          "Content-Length: 14\r\n"
          "\r\n");
    CHECK(response.body == "404 Not Found\n");

    out.clear();
    muxio::http::append_head(out, response, HeadOptions{"D", false, false});
    CHECK(out.find("Connection: close\r\n") != std::string::npos);
    out.clear();
    muxio::http::append_head(out, response, HeadOptions{"D", true, true});
    CHECK(out.find("Connection: keep-alive\r\n") != std::string::npos);
    out.clear();
    muxio::http::append_head(out, Handler::error(405), HeadOptions{"D", true, false});
    CHECK(out.find("Allow: GET, HEAD\r\n") != std::string::npos);
}

TEST_CASE("a head with fields longer than the writer's stack buffer comes out whole, after what came before") {
    muxio::test::FdLeakCheck leak_check;
    const std::string long_value(3000, 'v');
    Response response;
    response.status = 200;
    response.headers.add("X-Long", long_value);
    response.headers.add("X-Short", "s");
    response.content_length = 7;
    std::string out = "earlier response bytes|";
    muxio::http::append_head(out, response, HeadOptions{"D", false, true});
    CHECK(out == "earlier response bytes|HTTP/1.1 200 OK\r\nServer: muxio-http\r\nDate: D\r\nX-Long: " + long_value +
                     "\r\nX-Short: s\r\nContent-Length: 7\r\nConnection: close\r\n\r\n");
}

TEST_CASE("dates, content types and percent-decoding") {
    muxio::test::FdLeakCheck leak_check;
    CHECK(muxio::http::http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT");
    CHECK(muxio::http::http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT");
    muxio::http::DateCache cache;
    CHECK(cache.get(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT");
    CHECK(cache.get(784111778) == "Sun, 06 Nov 1994 08:49:38 GMT");

    CHECK(muxio::http::content_type_for("a/b/index.html") == "text/html; charset=utf-8");
    CHECK(muxio::http::content_type_for("x.PNG") == "image/png");
    CHECK(muxio::http::content_type_for("x.tar.gz") == "application/octet-stream");
    CHECK(muxio::http::content_type_for(".css") == "application/octet-stream");
    CHECK(muxio::http::content_type_for("dir.css/file") == "application/octet-stream");

    CHECK(muxio::http::percent_decode("/a%20b+c%2F") == "/a b+c/");
    CHECK_FALSE(muxio::http::percent_decode("%G0").has_value());
    CHECK_FALSE(muxio::http::percent_decode("abc%4").has_value());
    CHECK_FALSE(muxio::http::percent_decode("%00").has_value());
}

TEST_CASE("parsed requests and the handler agree end to end") {
    muxio::test::FdLeakCheck leak_check;
    const Site site;
    const Handler handler{site.root()};
    const auto parsed = parse(
        "GET /hello.txt HTTP/1.1\r\nHost: a\r\n\r\n"
        "HEAD / HTTP/1.0\r\n\r\n"
        "DELETE /hello.txt HTTP/1.1\r\nHost: a\r\n\r\n");
    REQUIRE(parsed.requests.size() == 3);
    CHECK(handler.handle(parsed.requests[0]).status == 200);
    CHECK(handler.handle(parsed.requests[1]).status == 200);
    CHECK(handler.handle(parsed.requests[2]).status == 405);
}

TEST_CASE("a response keeps up to four extra header fields in place and refuses a fifth") {
    muxio::http::ResponseHeaders headers;
    for (int i = 0; i < 4; ++i) {
        headers.add("X-Field", "value");
    }
    CHECK(headers.size() == 4);
    CHECK_THROWS_AS(headers.add("X-Fifth", "value"), std::length_error);
    CHECK(headers.size() == 4);
    std::size_t seen = 0;
    for (const auto& [name, value] : headers) {
        CHECK(name == "X-Field");
        CHECK(value == "value");
        ++seen;
    }
    CHECK(seen == 4);
}
