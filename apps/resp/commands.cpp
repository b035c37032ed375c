#include "commands.hpp"

#include <algorithm>
#include <array>
#include <iterator>
#include <limits>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "resp_parser.hpp"

namespace resp {

namespace reply {

void simple(std::string& out, std::string_view text) {
    out.push_back('+');
    out.append(text);
    out.append("\r\n");
}

void error(std::string& out, std::string_view message) {
    out.push_back('-');
    const std::size_t start = out.size();
    out.append(message);
    std::replace_if(
        out.begin() + static_cast<std::ptrdiff_t>(start), out.end(), [](char c) { return c == '\r' || c == '\n'; },
        ' ');
    out.append("\r\n");
}

void integer(std::string& out, std::int64_t value) {
    fmt::format_to(std::back_inserter(out), ":{}\r\n", value);
}

void bulk(std::string& out, std::string_view value) {
    fmt::format_to(std::back_inserter(out), "${}\r\n", value.size());
    out.append(value);
    out.append("\r\n");
}

void null_bulk(std::string& out) {
    out.append("$-1\r\n");
}

void array_header(std::string& out, std::size_t count) {
    fmt::format_to(std::back_inserter(out), "*{}\r\n", count);
}

}  // namespace reply

namespace {

std::size_t decimal_digits(std::size_t value) noexcept {
    std::size_t digits = 1;
    for (; value >= 10; value /= 10) {
        ++digits;
    }
    return digits;
}

}  // namespace

std::size_t bulk_reply_size(std::size_t size) noexcept {
    return 1 + decimal_digits(size) + 2 + size + 2;
}

namespace {

using Args = std::span<const std::string_view>;
constexpr std::int64_t int64_max = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t int64_min = std::numeric_limits<std::int64_t>::min();

constexpr std::string_view not_integer = "ERR value is not an integer or out of range";
constexpr std::string_view syntax_error = "ERR syntax error";

struct Context {
    Store& store;
    const ServerInfo& info;
    std::size_t out_limit;  // the size the output may reach

    // Whether `bytes` more fit in `out` within the limit.
    [[nodiscard]] bool fits(const std::string& out, std::size_t bytes) const noexcept {
        return out.size() <= out_limit && bytes <= out_limit - out.size();
    }
};

constexpr std::size_t null_bulk_size = 5;  // $-1\r\n

char lower(char c) noexcept {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) noexcept {
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return lower(x) == lower(y); });
}

void arity_error(std::string& out, std::string_view name) {
    reply::error(out, fmt::format("ERR wrong number of arguments for '{}' command", name));
}

void ok(std::string& out) {
    reply::simple(out, "OK");
}

// ----- Strings ---------------------------------------------------------------

After cmd_ping(Context&, Args args, std::string& out) {
    if (args.size() > 2) {
        arity_error(out, "ping");
    } else if (args.size() == 2) {
        reply::bulk(out, args[1]);
    } else {
        reply::simple(out, "PONG");
    }
    return After::keep_open;
}

After cmd_echo(Context&, Args args, std::string& out) {
    reply::bulk(out, args[1]);
    return After::keep_open;
}

After cmd_get(Context& ctx, Args args, std::string& out) {
    if (const Entry* entry = ctx.store.find(args[1])) {
        if (!ctx.fits(out, bulk_reply_size(entry->value.size()))) {
            return After::over_limit;
        }
        reply::bulk(out, entry->value);
    } else {
        reply::null_bulk(out);
    }
    return After::keep_open;
}

// Turns a relative expire time into a deadline: `amount` in seconds or
// milliseconds from now. nullopt when the result would not fit in 64-bit
// milliseconds (Redis's "invalid expire time"); a zero or negative `amount`
// is the caller's to judge.
std::optional<Millis> deadline_after(const Store& store, std::int64_t amount, bool seconds) {
    if (seconds) {
        if (amount > int64_max / 1000 || amount < int64_min / 1000) {
            return std::nullopt;
        }
        amount *= 1000;
    }
    const std::int64_t now = store.now().count();
    if (amount > 0 && amount > int64_max - now) {
        return std::nullopt;
    }
    return Millis{now + amount};
}

After cmd_set(Context& ctx, Args args, std::string& out) {
    bool nx = false;
    bool xx = false;
    bool get = false;
    bool keep_ttl = false;
    bool has_expire = false;
    bool seconds = false;
    std::string_view expire_text;
    for (std::size_t i = 3; i < args.size(); ++i) {
        const std::string_view option = args[i];
        const bool has_next = i + 1 < args.size();
        if (iequals(option, "nx") && !xx) {
            nx = true;
        } else if (iequals(option, "xx") && !nx) {
            xx = true;
        } else if (iequals(option, "get")) {
            get = true;
        } else if (iequals(option, "keepttl") && !has_expire) {
            keep_ttl = true;
        } else if (iequals(option, "ex") && !keep_ttl && !(has_expire && !seconds) && has_next) {
            has_expire = true;
            seconds = true;
            expire_text = args[++i];
        } else if (iequals(option, "px") && !keep_ttl && !(has_expire && seconds) && has_next) {
            has_expire = true;
            seconds = false;
            expire_text = args[++i];
        } else {
            reply::error(out, syntax_error);
            return After::keep_open;
        }
    }
    std::optional<Millis> deadline;
    if (has_expire) {
        std::int64_t amount = 0;
        if (!parse_int64(expire_text, amount)) {
            reply::error(out, not_integer);
            return After::keep_open;
        }
        if (amount <= 0 || !(deadline = deadline_after(ctx.store, amount, seconds))) {
            reply::error(out, "ERR invalid expire time in 'set' command");
            return After::keep_open;
        }
    }
    const Entry* existing = ctx.store.find(args[1]);
    if (get) {
        if (existing != nullptr && !ctx.fits(out, bulk_reply_size(existing->value.size()))) {
            return After::over_limit;  // and nothing is set, as for any refused command
        }
        if (existing != nullptr) {
            reply::bulk(out, existing->value);
        } else {
            reply::null_bulk(out);
        }
    }
    if ((nx && existing != nullptr) || (xx && existing == nullptr)) {
        if (!get) {
            reply::null_bulk(out);
        }
        return After::keep_open;
    }
    if (keep_ttl) {
        ctx.store.set_keep_ttl(args[1], std::string{args[2]});
    } else {
        ctx.store.set(args[1], std::string{args[2]}, deadline);
    }
    if (!get) {
        ok(out);
    }
    return After::keep_open;
}

After cmd_del(Context& ctx, Args args, std::string& out) {
    std::int64_t removed = 0;
    for (std::size_t i = 1; i < args.size(); ++i) {
        removed += ctx.store.erase(args[i]) ? 1 : 0;
    }
    reply::integer(out, removed);
    return After::keep_open;
}

After cmd_exists(Context& ctx, Args args, std::string& out) {
    std::int64_t found = 0;
    for (std::size_t i = 1; i < args.size(); ++i) {
        found += ctx.store.find(args[i]) != nullptr ? 1 : 0;
    }
    reply::integer(out, found);
    return After::keep_open;
}

void increment(Context& ctx, std::string_view key, std::int64_t delta, std::string& out) {
    Entry* entry = ctx.store.find(key);
    std::int64_t value = 0;
    if (entry != nullptr && !parse_int64(entry->value, value)) {
        reply::error(out, not_integer);
        return;
    }
    if ((delta > 0 && value > int64_max - delta) || (delta < 0 && value < int64_min - delta)) {
        reply::error(out, "ERR increment or decrement would overflow");
        return;
    }
    value += delta;
    if (entry != nullptr) {
        entry->value = fmt::format("{}", value);  // in place: the deadline stays
    } else {
        ctx.store.set(key, fmt::format("{}", value), std::nullopt);
    }
    reply::integer(out, value);
}

After cmd_incr(Context& ctx, Args args, std::string& out) {
    increment(ctx, args[1], 1, out);
    return After::keep_open;
}

After cmd_decr(Context& ctx, Args args, std::string& out) {
    increment(ctx, args[1], -1, out);
    return After::keep_open;
}

After cmd_incrby(Context& ctx, Args args, std::string& out) {
    std::int64_t delta = 0;
    if (!parse_int64(args[2], delta)) {
        reply::error(out, not_integer);
    } else {
        increment(ctx, args[1], delta, out);
    }
    return After::keep_open;
}

After cmd_decrby(Context& ctx, Args args, std::string& out) {
    std::int64_t delta = 0;
    if (!parse_int64(args[2], delta)) {
        reply::error(out, not_integer);
    } else if (delta == int64_min) {
        reply::error(out, "ERR decrement would overflow");
    } else {
        increment(ctx, args[1], -delta, out);
    }
    return After::keep_open;
}

After cmd_mget(Context& ctx, Args args, std::string& out) {
    // Sized before it is built: many copies of a large value would otherwise
    // take memory far beyond the limit before the limit could be checked.
    std::size_t size = 1 + decimal_digits(args.size() - 1) + 2;
    for (std::size_t i = 1; i < args.size(); ++i) {
        const Entry* entry = ctx.store.find(args[i]);
        size += entry != nullptr ? bulk_reply_size(entry->value.size()) : null_bulk_size;
        if (!ctx.fits(out, size)) {
            return After::over_limit;
        }
    }
    out.reserve(out.size() + size);
    reply::array_header(out, args.size() - 1);
    for (std::size_t i = 1; i < args.size(); ++i) {
        if (const Entry* entry = ctx.store.find(args[i])) {
            reply::bulk(out, entry->value);
        } else {
            reply::null_bulk(out);
        }
    }
    return After::keep_open;
}

After cmd_mset(Context& ctx, Args args, std::string& out) {
    if (args.size() % 2 != 1) {
        arity_error(out, "mset");
        return After::keep_open;
    }
    for (std::size_t i = 1; i < args.size(); i += 2) {
        ctx.store.set(args[i], std::string{args[i + 1]}, std::nullopt);
    }
    ok(out);
    return After::keep_open;
}

// ----- Expiry ----------------------------------------------------------------

After expire_generic(Context& ctx, Args args, std::string& out, bool seconds, std::string_view name) {
    std::int64_t amount = 0;
    if (!parse_int64(args[2], amount)) {
        reply::error(out, not_integer);
        return After::keep_open;
    }
    bool nx = false;
    bool xx = false;
    bool gt = false;
    bool lt = false;
    for (std::size_t i = 3; i < args.size(); ++i) {
        if (iequals(args[i], "nx")) {
            nx = true;
        } else if (iequals(args[i], "xx")) {
            xx = true;
        } else if (iequals(args[i], "gt")) {
            gt = true;
        } else if (iequals(args[i], "lt")) {
            lt = true;
        } else {
            reply::error(out, fmt::format("ERR Unsupported option {}", args[i]));
            return After::keep_open;
        }
    }
    if (nx && (xx || gt || lt)) {
        reply::error(out, "ERR NX and XX, GT or LT options at the same time are not compatible");
        return After::keep_open;
    }
    if (gt && lt) {
        reply::error(out, "ERR GT and LT options at the same time are not compatible");
        return After::keep_open;
    }
    const std::optional<Millis> deadline = deadline_after(ctx.store, amount, seconds);
    if (!deadline) {
        reply::error(out, fmt::format("ERR invalid expire time in '{}' command", name));
        return After::keep_open;
    }
    const Entry* entry = ctx.store.find(args[1]);
    if (entry == nullptr) {
        reply::integer(out, 0);
        return After::keep_open;
    }
    // No deadline counts as an infinite one for GT and LT.
    const std::optional<Millis> current = entry->deadline;
    const bool refused = (nx && current) || (xx && !current) || (gt && (!current || *deadline <= *current)) ||
                         (lt && current && *deadline >= *current);
    if (refused) {
        reply::integer(out, 0);
        return After::keep_open;
    }
    ctx.store.set_deadline(args[1], deadline);  // a deadline already past removes the key
    reply::integer(out, 1);
    return After::keep_open;
}

After cmd_expire(Context& ctx, Args args, std::string& out) {
    return expire_generic(ctx, args, out, true, "expire");
}

After cmd_pexpire(Context& ctx, Args args, std::string& out) {
    return expire_generic(ctx, args, out, false, "pexpire");
}

After cmd_persist(Context& ctx, Args args, std::string& out) {
    const Entry* entry = ctx.store.find(args[1]);
    const bool had_deadline = entry != nullptr && entry->deadline.has_value();
    if (had_deadline) {
        ctx.store.set_deadline(args[1], std::nullopt);
    }
    reply::integer(out, had_deadline ? 1 : 0);
    return After::keep_open;
}

void ttl_generic(Context& ctx, Args args, std::string& out, bool seconds) {
    const Entry* entry = ctx.store.find(args[1]);
    if (entry == nullptr) {
        reply::integer(out, -2);
        return;
    }
    if (!entry->deadline) {
        reply::integer(out, -1);
        return;
    }
    const std::int64_t left = std::max<std::int64_t>((*entry->deadline - ctx.store.now()).count(), 0);
    // Rounded to the nearest second, as Redis does: SET EX 10 then TTL says 10.
    reply::integer(out, seconds ? (left + 500) / 1000 : left);
}

After cmd_ttl(Context& ctx, Args args, std::string& out) {
    ttl_generic(ctx, args, out, true);
    return After::keep_open;
}

After cmd_pttl(Context& ctx, Args args, std::string& out) {
    ttl_generic(ctx, args, out, false);
    return After::keep_open;
}

// ----- Server ----------------------------------------------------------------

After cmd_dbsize(Context& ctx, Args, std::string& out) {
    reply::integer(out, static_cast<std::int64_t>(ctx.store.size()));
    return After::keep_open;
}

After flush_generic(Context& ctx, Args args, std::string& out) {
    // ASYNC and SYNC are accepted; freeing is synchronous either way.
    if (args.size() > 2 || (args.size() == 2 && !iequals(args[1], "async") && !iequals(args[1], "sync"))) {
        reply::error(out, syntax_error);
        return After::keep_open;
    }
    ctx.store.clear();
    ok(out);
    return After::keep_open;
}

After cmd_select(Context&, Args args, std::string& out) {
    std::int64_t index = 0;
    if (!parse_int64(args[1], index)) {
        reply::error(out, not_integer);
    } else if (index != 0) {
        reply::error(out, "ERR DB index is out of range");
    } else {
        ok(out);
    }
    return After::keep_open;
}

After cmd_quit(Context&, Args, std::string& out) {
    ok(out);
    return After::close;
}

void unknown_subcommand(std::string& out, std::string_view subcommand, std::string_view command) {
    reply::error(out, fmt::format("ERR unknown subcommand '{:.128}'. Try {} HELP.", subcommand, command));
}

After cmd_command(Context&, Args args, std::string& out);

After cmd_config(Context& ctx, Args args, std::string& out) {
    const std::string_view sub = args[1];
    if (iequals(sub, "get")) {
        if (args.size() < 3) {
            arity_error(out, "config|get");
            return After::keep_open;
        }
        // Plausible answers, no more: redis-benchmark asks for save and
        // appendonly before it starts.
        const ServerInfo& info = ctx.info;
        const std::string max_bulk = fmt::format("{}", info.max_bulk);
        const std::string port = fmt::format("{}", info.port);
        const std::string max_query_buffer = fmt::format("{}", info.max_query_buffer);
        const std::string output_limits =
            fmt::format("normal {} {} {}", info.max_output_buffer, info.output_soft_limit, info.output_soft_seconds);
        const std::string max_clients = fmt::format("{}", info.max_clients);
        const std::array<std::pair<std::string_view, std::string_view>, 8> parameters{{
            {"appendonly", "no"},
            {"client-output-buffer-limit", output_limits},
            {"client-query-buffer-limit", max_query_buffer},
            {"databases", "1"},
            {"maxclients", max_clients},
            {"port", port},
            {"proto-max-bulk-len", max_bulk},
            {"save", ""},
        }};
        std::vector<std::pair<std::string_view, std::string_view>> matched;
        for (const auto& parameter : parameters) {
            for (std::size_t i = 2; i < args.size(); ++i) {
                if (glob_match(args[i], parameter.first)) {
                    matched.push_back(parameter);
                    break;
                }
            }
        }
        reply::array_header(out, matched.size() * 2);
        for (const auto& [name, value] : matched) {
            reply::bulk(out, name);
            reply::bulk(out, value);
        }
    } else if (iequals(sub, "resetstat") && args.size() == 2) {
        ok(out);
    } else if (iequals(sub, "set")) {
        reply::error(out, "ERR CONFIG SET is not supported by muxio-resp");
    } else {
        unknown_subcommand(out, sub, "CONFIG");
    }
    return After::keep_open;
}

struct CommandSpec {
    std::string_view name;  // lower case, as in error messages
    // Redis's convention: n > 0 exactly n words (name included), n < 0 at least -n.
    int arity;
    After (*run)(Context&, Args, std::string&);
};

constexpr std::array<CommandSpec, 24> commands{{
    {"get", 2, cmd_get},
    {"set", -3, cmd_set},
    {"ping", -1, cmd_ping},
    {"echo", 2, cmd_echo},
    {"del", -2, cmd_del},
    {"exists", -2, cmd_exists},
    {"incr", 2, cmd_incr},
    {"decr", 2, cmd_decr},
    {"incrby", 3, cmd_incrby},
    {"decrby", 3, cmd_decrby},
    {"mget", -2, cmd_mget},
    {"mset", -3, cmd_mset},
    {"expire", -3, cmd_expire},
    {"pexpire", -3, cmd_pexpire},
    {"persist", 2, cmd_persist},
    {"ttl", 2, cmd_ttl},
    {"pttl", 2, cmd_pttl},
    {"dbsize", 1, cmd_dbsize},
    {"flushall", -1, flush_generic},
    {"flushdb", -1, flush_generic},
    {"select", 2, cmd_select},
    {"quit", -1, cmd_quit},
    {"command", -1, cmd_command},
    {"config", -2, cmd_config},
}};

const CommandSpec* find_command(std::string_view name) noexcept {
    for (const CommandSpec& spec : commands) {
        if (iequals(spec.name, name)) {
            return &spec;
        }
    }
    return nullptr;
}

After run(Context& ctx, Args args, std::string& out) {
    const std::string_view name = args[0];
    const CommandSpec* spec = find_command(name);
    if (spec == nullptr) {
        // Redis quotes the first arguments, up to about 128 bytes of them.
        std::string quoted;
        for (std::size_t i = 1; i < args.size() && quoted.size() < 128; ++i) {
            fmt::format_to(std::back_inserter(quoted), "'{}' ", args[i].substr(0, 128 - quoted.size()));
        }
        reply::error(
            out, fmt::format("ERR unknown command '{}', with args beginning with: {}", name.substr(0, 128), quoted));
        return After::keep_open;
    }
    const auto count = static_cast<std::ptrdiff_t>(args.size());
    if ((spec->arity > 0 && count != spec->arity) || (spec->arity < 0 && count < -spec->arity)) {
        arity_error(out, spec->name);
        return After::keep_open;
    }
    return spec->run(ctx, args, out);
}

After cmd_command(Context&, Args args, std::string& out) {
    if (args.size() > 1 && iequals(args[1], "count")) {
        reply::integer(out, static_cast<std::int64_t>(commands.size()));
    } else if (args.size() == 1 || iequals(args[1], "docs") || iequals(args[1], "info")) {
        // No client here needs the command table in Redis's format (redis-cli
        // asks for the docs only to show hints); an empty one is valid.
        reply::array_header(out, 0);
    } else {
        unknown_subcommand(out, args[1], "COMMAND");
    }
    return After::keep_open;
}

}  // namespace

namespace {

// Whether `c` is in the class starting at pattern[at] ('['); sets `next` past
// the closing ']' (or to the end of an unterminated class).
bool class_matches(std::string_view pattern, std::size_t at, char c, std::size_t& next) noexcept {
    std::size_t i = at + 1;
    const bool negate = i < pattern.size() && pattern[i] == '^';
    if (negate) {
        ++i;
    }
    const char wanted = lower(c);
    bool found = false;
    while (i < pattern.size() && pattern[i] != ']') {
        if (pattern[i] == '\\' && i + 1 < pattern.size()) {
            found = found || lower(pattern[i + 1]) == wanted;
            i += 2;
        } else if (i + 2 < pattern.size() && pattern[i + 1] == '-' && pattern[i + 2] != ']') {
            // By value: std::minmax of temporaries returns dangling references.
            const char first = lower(pattern[i]);
            const char last = lower(pattern[i + 2]);
            const char low = std::min(first, last);
            const char high = std::max(first, last);
            found = found || (wanted >= low && wanted <= high);
            i += 3;
        } else {
            found = found || lower(pattern[i]) == wanted;
            ++i;
        }
    }
    next = i < pattern.size() ? i + 1 : i;
    return found != negate;
}

// Whether the pattern element at pattern[at] (not '*') matches `c`; sets
// `next` past it.
bool element_matches(std::string_view pattern, std::size_t at, char c, std::size_t& next) noexcept {
    const char pc = pattern[at];
    if (pc == '?') {
        next = at + 1;
        return true;
    }
    if (pc == '\\' && at + 1 < pattern.size()) {
        next = at + 2;
        return lower(pattern[at + 1]) == lower(c);
    }
    if (pc == '[') {
        return class_matches(pattern, at, c, next);
    }
    next = at + 1;
    return lower(pc) == lower(c);
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view text) noexcept {
    // Iterative with one backtrack point: the last '*' and where its match
    // ended, which is enough for globs (no pattern blows up).
    std::size_t p = 0;
    std::size_t t = 0;
    std::size_t star = std::string_view::npos;
    std::size_t star_text = 0;
    while (t < text.size()) {
        std::size_t next = 0;
        if (p < pattern.size() && pattern[p] == '*') {
            star = p++;
            star_text = t;
        } else if (p < pattern.size() && element_matches(pattern, p, text[t], next)) {
            p = next;
            ++t;
        } else if (star != std::string_view::npos) {
            p = star + 1;
            t = ++star_text;
        } else {
            return false;
        }
    }
    while (p < pattern.size() && pattern[p] == '*') {
        ++p;
    }
    return p == pattern.size();
}

After Dispatcher::execute(std::span<const std::string_view> args, std::string& out, std::size_t out_limit) {
    ++commands_run_;
    Context ctx{store_, info_, out_limit};
    std::unique_lock<std::mutex> lock;
    if (store_guard_ != nullptr) {
        lock = std::unique_lock{*store_guard_};
    }
    const After after = run(ctx, args, out);
    return out.size() > out_limit ? After::over_limit : after;
}

}  // namespace resp
