#include "chat_room.hpp"

#include <algorithm>
#include <cctype>
#include <utility>

#include <fmt/format.h>

namespace chat {

namespace {

constexpr std::size_t max_nickname = 24;

bool valid_nickname(std::string_view name) {
    return !name.empty() && name.size() <= max_nickname && std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '-';
    });
}

Message make_message(std::string text) {
    text += '\n';
    return std::make_shared<const std::string>(std::move(text));
}

}  // namespace

void ChatRoom::on_connect(ClientId client) {
    std::string name = fmt::format("guest{}", ++guests_);
    tell(client, fmt::format("* welcome, you are {}; /nick NAME to rename, /who to list, /quit to leave", name));
    broadcast(client, fmt::format("* {} joined", name));
    nicknames_.emplace(client, std::move(name));
}

void ChatRoom::on_line(ClientId client, std::string_view line) {
    const auto member = nicknames_.find(client);
    if (member == nicknames_.end() || line.empty()) {
        return;
    }
    if (line.front() != '/') {
        broadcast(client, fmt::format("{}: {}", member->second, line));
        return;
    }
    const std::size_t space = line.find(' ');
    const std::string_view command = line.substr(0, space);
    const std::string_view argument = space == std::string_view::npos ? std::string_view{} : line.substr(space + 1);
    if (command == "/nick") {
        rename(client, argument);
    } else if (command == "/who") {
        list_members(client);
    } else if (command == "/quit") {
        tell(client, "* bye");
        link_.disconnect(client);
    } else {
        tell(client, fmt::format("* unknown command {}; try /nick NAME, /who or /quit", command));
    }
}

void ChatRoom::on_disconnect(ClientId client, std::string_view reason) {
    const auto member = nicknames_.find(client);
    if (member == nicknames_.end()) {
        return;
    }
    const std::string name = std::move(member->second);
    nicknames_.erase(member);
    broadcast(client, reason.empty() ? fmt::format("* {} left", name) : fmt::format("* {} left ({})", name, reason));
}

void ChatRoom::rename(ClientId client, std::string_view wanted) {
    if (!valid_nickname(wanted)) {
        tell(client, fmt::format("* a nickname is 1 to {} letters, digits, '_' or '-'", max_nickname));
        return;
    }
    const bool taken = std::any_of(nicknames_.begin(), nicknames_.end(),
                                   [&](const auto& entry) { return entry.first != client && entry.second == wanted; });
    if (taken) {
        tell(client, fmt::format("* {} is taken", wanted));
        return;
    }
    std::string& name = nicknames_.at(client);
    broadcast(0, fmt::format("* {} is now {}", name, wanted));  // 0: no client has it, so everyone hears
    name = wanted;
}

void ChatRoom::list_members(ClientId client) {
    std::string names;
    for (const auto& [id, name] : nicknames_) {
        names += names.empty() ? name : ", " + name;
    }
    tell(client, fmt::format("* {} here: {}", nicknames_.size(), names));
}

void ChatRoom::tell(ClientId client, std::string text) {
    link_.send(client, make_message(std::move(text)));
}

void ChatRoom::broadcast(ClientId except, std::string text) {
    const Message message = make_message(std::move(text));
    for (const auto& entry : nicknames_) {
        if (entry.first != except) {
            link_.send(entry.first, message);
        }
    }
}

}  // namespace chat
