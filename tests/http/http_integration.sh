#!/usr/bin/env bash
# Drives muxio-http with curl (and python3 for raw bytes) on an ephemeral
# port with a temporary --root.
#
#   bash tests/http/http_integration.sh path/to/muxio-http
#
# Exit status: 0 if every check passed, 1 if one failed, 77 (CTest's skip)
# if curl or python3 is missing. Every network step has a timeout, and the
# server is killed on exit whatever happens.
set -euo pipefail

server_bin="${1:?usage: http_integration.sh path/to/muxio-http}"

for tool in curl python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "SKIP: $tool is not installed"
        exit 77
    fi
done

work="$(mktemp -d "${TMPDIR:-/tmp}/muxio-http-it.XXXXXX")"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

failures=0
pass() { printf 'ok   %s\n' "$*"; }
fail() {
    printf 'FAIL %s\n' "$*"
    failures=$((failures + 1))
}
check() {  # check DESCRIPTION EXPECTED ACTUAL
    if [[ "$2" == "$3" ]]; then
        pass "$1"
    else
        fail "$1: expected '$2', got '$3'"
    fi
}

# The site: a text file, a binary file large enough to need several writes
# (and back-pressure), a directory, a secret outside the root and links to it.
root="$work/root"
mkdir -p "$root/sub"
printf 'plain text\n' >"$root/hello.txt"
head -c 3000000 /dev/urandom >"$root/big.bin"
printf 'secret\n' >"$work/secret.txt"
ln -s "$work/secret.txt" "$root/leak"

curl_opts=(--silent --show-error --max-time 10)

"$server_bin" --port 0 --root "$root" --idle-timeout 1 --header-timeout 2 --body-timeout 2 --max-connections 64 \
    >"$work/stdout" 2>"$work/stderr" &
server_pid=$!

port=""
for _ in $(seq 1 100); do
    port="$(head -n 1 "$work/stdout" 2>/dev/null || true)"
    [[ -n "$port" ]] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$work/stderr" >&2
        echo "FAIL the server exited before printing its port"
        exit 1
    fi
    sleep 0.05
done
if [[ ! "$port" =~ ^[0-9]+$ ]]; then
    echo "FAIL no port on the server's first line (got '$port')"
    exit 1
fi
base="http://127.0.0.1:$port"
echo "server pid $server_pid on port $port"

# Sends raw bytes (a Python bytes literal's contents) on one connection,
# then half-closes unless told to keep writing, and prints all that comes
# back until the server closes or 5 s pass.
raw() {
    python3 - "$port" "$1" "${2:-shutdown}" <<'PY'
import socket, sys
port, payload, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
data = payload.encode("latin-1").decode("unicode_escape").encode("latin-1")
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.sendall(data)
if mode == "shutdown":
    s.shutdown(socket.SHUT_WR)
got = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except socket.timeout:
    got += b"\n<timeout>"
sys.stdout.buffer.write(got)
PY
}

# --- hello -------------------------------------------------------------------
check "GET / says hello" "Hello, World!" "$(curl "${curl_opts[@]}" "$base/")"
check "GET / is text/plain" "text/plain; charset=utf-8" \
    "$(curl "${curl_opts[@]}" -o /dev/null -w '%{content_type}' "$base/")"
head_out="$(curl "${curl_opts[@]}" -I "$base/")"
if grep -q '^Content-Length: 13' <<<"$head_out" && grep -q '^Date: ' <<<"$head_out" &&
    grep -q '^Server: muxio-http' <<<"$head_out"; then
    pass "HEAD / has Content-Length, Date and Server"
else
    fail "HEAD / headers: $head_out"
fi

# --- static files ------------------------------------------------------------
curl "${curl_opts[@]}" -o "$work/got.txt" "$base/hello.txt"
if cmp -s "$root/hello.txt" "$work/got.txt"; then pass "a text file comes back byte for byte"; else fail "hello.txt differs"; fi
curl "${curl_opts[@]}" -o "$work/got.bin" "$base/big.bin"
if cmp -s "$root/big.bin" "$work/got.bin"; then pass "a 3 MB file comes back byte for byte"; else fail "big.bin differs"; fi
check "HEAD of a file gives its size" "3000000" \
    "$(curl "${curl_opts[@]}" -I "$base/big.bin" | tr -d '\r' | sed -n 's/^Content-Length: //p')"

# --- errors ------------------------------------------------------------------
code() { curl "${curl_opts[@]}" -o /dev/null -w '%{http_code}' "$@"; }
check "a missing file is 404" 404 "$(code "$base/nope.txt")"
check "a directory is 403" 403 "$(code "$base/sub")"
check "a file named as a directory is 404" "404 404 404" \
    "$(code --path-as-is "$base/hello.txt/") $(code --path-as-is "$base/hello.txt/.") $(code --path-as-is "$base/hello.txt//")"
check "'..' is refused" 400 "$(code --path-as-is "$base/../secret.txt")"
check "'%2e%2e' is refused" 400 "$(code --path-as-is "$base/%2e%2e/secret.txt")"
check "a link out of the root is not followed" 404 "$(code "$base/leak")"
if curl "${curl_opts[@]}" --path-as-is "$base/../secret.txt" "$base/leak" | grep -q secret; then
    fail "the secret leaked"
else
    pass "the secret stays secret"
fi
check "POST is 405" 405 "$(code -X POST --data x "$base/")"
# curl holds the body back until 100 Continue comes; without one it would
# wait out --expect100-timeout (20 s) and then --max-time (10 s) ends it.
head -c 200000 "$root/big.bin" >"$work/body.bin"
check "Expect: 100-continue gets 100, then the answer" 405 \
    "$(code --expect100-timeout 20 -H 'Expect: 100-continue' --data-binary @"$work/body.bin" "$base/")"
check "Expect: 100-continue with a body over the limit gets 413 at once" 413 \
    "$(code --expect100-timeout 20 -H 'Expect: 100-continue' --data-binary @"$work/got.bin" "$base/")"
if curl "${curl_opts[@]}" -i -X DELETE "$base/hello.txt" | tr -d '\r' | grep -q '^Allow: GET, HEAD$'; then
    pass "405 says Allow: GET, HEAD"
else
    fail "405 without Allow"
fi
check "an oversized head is 431" 431 "$(code -H "X-Big: $(head -c 9000 /dev/zero | tr '\0' a)" "$base/")"

malformed="$(raw 'BLAH BLAH BLAH\r\n\r\n')"
if [[ "$malformed" == "HTTP/1.1 400 Bad Request"* ]] && grep -q 'Connection: close' <<<"$malformed"; then
    pass "a malformed request is 400 and closes"
else
    fail "malformed request: $malformed"
fi
check "HTTP/2.0 is 505" "HTTP/1.1 505 HTTP Version Not Supported" \
    "$(raw 'GET / HTTP/2.0\r\nHost: a\r\n\r\n' | head -n 1 | tr -d '\r')"

# --- connections ---------------------------------------------------------------
if curl "${curl_opts[@]}" -v -o /dev/null -o /dev/null "$base/" "$base/hello.txt" 2>&1 |
    grep -q 'Re-using existing connection'; then
    pass "keep-alive: curl reuses the connection"
else
    fail "keep-alive: curl did not reuse the connection"
fi

pipelined="$(raw 'GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /hello.txt HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n' keep)"
check "pipelined requests are answered in order" "200 200 404" \
    "$(grep -ao 'HTTP/1.1 [0-9]*' <<<"$pipelined" | cut -d' ' -f2 | tr '\n' ' ' | sed 's/ $//')"
if [[ "$pipelined" != *"<timeout>"* ]]; then pass "Connection: close closes"; else fail "Connection: close left it open"; fi

http10="$(raw 'GET / HTTP/1.0\r\n\r\n' keep)"
if [[ "$http10" == *"Hello, World!" && "$http10" != *"<timeout>"* ]]; then
    pass "HTTP/1.0 gets its answer and the connection closes"
else
    fail "HTTP/1.0: $http10"
fi
http10ka="$(raw 'GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /hello.txt HTTP/1.0\r\n\r\n' keep)"
check "HTTP/1.0 keep-alive serves a second request" 2 "$(grep -ao 'HTTP/1.1 200' <<<"$http10ka" | wc -l)"

# Many pipelined requests for the big file in one write, the last one
# closing: the server must hold back reading while the output queues up.
check "8 pipelined 3 MB responses arrive whole" 24000000 \
    "$(python3 - "$port" <<'PY'
import socket, sys
req = b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n" * 7 + b"GET /big.bin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(req)
data = bytearray()
while True:
    chunk = s.recv(1 << 20)
    if not chunk:
        break
    data += chunk
body = 0
pos = 0
while True:
    end = data.find(b"\r\n\r\n", pos)
    if end < 0:
        break
    head = bytes(data[pos:end]).decode("latin-1")
    length = int([l.split(":")[1] for l in head.split("\r\n") if l.lower().startswith("content-length")][0])
    body += length
    pos = end + 4 + length
print(body if pos == len(data) else -1)
PY
)"

idle_start=$(date +%s%N)
idle="$(raw '' keep)"
idle_ms=$((($(date +%s%N) - idle_start) / 1000000))
if [[ -z "$idle" && "$idle_ms" -lt 4500 ]]; then
    pass "an idle connection is closed by the 1 s timeout (${idle_ms} ms)"
else
    fail "idle connection: '$idle' after ${idle_ms} ms"
fi

stalled="$(raw 'GET / HTTP/1.1\r\nHost: a\r\n' keep)"
if [[ "$stalled" == "HTTP/1.1 408 Request Timeout"* && "$stalled" != *"<timeout>"* ]]; then
    pass "a request left unfinished is 408 and closes"
else
    fail "unfinished request: $stalled"
fi

# --- shutdown ------------------------------------------------------------------
kill -TERM "$server_pid"
status=""
for _ in $(seq 1 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        wait "$server_pid" && status=0 || status=$?
        break
    fi
    sleep 0.05
done
check "SIGTERM stops the server cleanly" 0 "${status:-still running}"
server_pid=""

if ((failures > 0)); then
    echo "--- server stderr ---"
    cat "$work/stderr"
    echo "$failures check(s) failed"
    exit 1
fi
echo "all checks passed"
