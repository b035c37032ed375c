// README.md's examples are copies of code that the other files of
// tests/docs/ compile and run. There, a region of a file is marked
//
//     // readme-begin: NAME
//     ...
//     // readme-end: NAME
//
// and README.md prints it in the fenced block that follows the line
//
//     <!-- tested: tests/docs/FILE.cpp, NAME -->
//
// These cases fail when a copy differs from its region, or when a region is
// not shown, so an example cannot drift from the code that is tested.
#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "support/support.hpp"

namespace {

namespace fs = std::filesystem;

const fs::path source_dir{MUXIO_SOURCE_DIR};

std::vector<std::string> read_lines(const fs::path& path) {
    std::ifstream in{path};
    REQUIRE_MESSAGE(in.good(), "cannot open " << path.string());
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) {
        lines.push_back(line);
    }
    return lines;
}

bool starts_with(const std::string& text, const std::string& prefix) {
    return text.compare(0, prefix.size(), prefix) == 0;
}

// The marked regions of one file, by name.
std::map<std::string, std::vector<std::string>> regions_of(const fs::path& path) {
    const std::string begin = "// readme-begin: ";
    const std::string end = "// readme-end: ";
    std::map<std::string, std::vector<std::string>> regions;
    std::optional<std::string> open;
    for (const std::string& line : read_lines(path)) {
        if (starts_with(line, begin)) {
            REQUIRE_MESSAGE(!open, path.string() << ": region " << *open << " is not ended");
            open = line.substr(begin.size());
            REQUIRE_MESSAGE(regions.count(*open) == 0, path.string() << ": region " << *open << " twice");
            regions[*open];
        } else if (starts_with(line, end)) {
            REQUIRE_MESSAGE((open && line.substr(end.size()) == *open), path.string() << ": stray " << line);
            open.reset();
        } else if (open) {
            regions[*open].push_back(line);
        }
    }
    REQUIRE_MESSAGE(!open, path.string() << ": region " << *open << " is not ended");
    return regions;
}

struct ShownBlock {
    std::string file;  // relative to the source directory
    std::string name;
    std::size_t line = 0;  // of the marker in README.md, from 1
    std::vector<std::string> code;
};

// Every block of README.md announced by a "tested:" marker.
std::vector<ShownBlock> shown_blocks() {
    const std::string prefix = "<!-- tested: ";
    const std::string suffix = " -->";
    const std::vector<std::string> lines = read_lines(source_dir / "README.md");
    std::vector<ShownBlock> blocks;
    for (std::size_t i = 0; i < lines.size(); ++i) {
        const std::string& line = lines[i];
        if (!starts_with(line, prefix)) {
            continue;
        }
        const std::size_t comma = line.find(", ", prefix.size());
        REQUIRE_MESSAGE((comma != std::string::npos && line.size() > suffix.size() &&
                         line.compare(line.size() - suffix.size(), suffix.size(), suffix) == 0),
                        "README.md:" << i + 1 << ": expected <!-- tested: FILE, NAME -->");
        ShownBlock block;
        block.file = line.substr(prefix.size(), comma - prefix.size());
        block.name = line.substr(comma + 2, line.size() - suffix.size() - comma - 2);
        block.line = i + 1;
        REQUIRE_MESSAGE((i + 1 < lines.size() && lines[i + 1] == "```cpp"),
                        "README.md:" << i + 1 << ": the marker must be followed by a ```cpp block");
        std::size_t j = i + 2;
        for (; j < lines.size() && lines[j] != "```"; ++j) {
            block.code.push_back(lines[j]);
        }
        REQUIRE_MESSAGE(j < lines.size(), "README.md:" << i + 1 << ": the block is not closed");
        blocks.push_back(std::move(block));
        i = j;
    }
    return blocks;
}

// Where two copies first differ, for the failure message.
std::string first_difference(const std::vector<std::string>& shown, const std::vector<std::string>& tested) {
    std::ostringstream out;
    for (std::size_t i = 0; i < std::max(shown.size(), tested.size()); ++i) {
        const std::string* a = i < shown.size() ? &shown[i] : nullptr;
        const std::string* b = i < tested.size() ? &tested[i] : nullptr;
        if (a == nullptr || b == nullptr || *a != *b) {
            out << "line " << i + 1 << " of the block: README has \"" << (a != nullptr ? *a : "<end>")
                << "\", the test has \"" << (b != nullptr ? *b : "<end>") << "\"";
            break;
        }
    }
    return out.str();
}

}  // namespace

TEST_CASE("each tested example in the README is its test's code, line for line") {
    muxio::test::FdLeakCheck leak_check;
    const std::vector<ShownBlock> blocks = shown_blocks();
    CHECK(blocks.size() >= 3);
    for (const ShownBlock& block : blocks) {
        CAPTURE(block.line);
        CAPTURE(block.file);
        CAPTURE(block.name);
        const auto regions = regions_of(source_dir / block.file);
        const auto region = regions.find(block.name);
        REQUIRE_MESSAGE(region != regions.end(), block.file << " has no region " << block.name);
        CHECK_MESSAGE(block.code == region->second, first_difference(block.code, region->second));
    }
}

TEST_CASE("every region marked for the README in tests/docs is shown there once") {
    muxio::test::FdLeakCheck leak_check;
    std::map<std::pair<std::string, std::string>, int> shown;
    for (const ShownBlock& block : shown_blocks()) {
        ++shown[{block.file, block.name}];
    }
    int regions_found = 0;
    for (const fs::directory_entry& entry : fs::directory_iterator{source_dir / "tests" / "docs"}) {
        if (entry.path().extension() != ".cpp") {
            continue;
        }
        const std::string file = "tests/docs/" + entry.path().filename().string();
        for (const auto& region : regions_of(entry.path())) {
            ++regions_found;
            const int times = shown[std::make_pair(file, region.first)];
            CHECK_MESSAGE(times == 1,
                          file << ", region " << region.first << ": shown " << times << " times in README.md");
        }
    }
    CHECK(regions_found >= 3);
}
