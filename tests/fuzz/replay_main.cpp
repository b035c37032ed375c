// Runs a libFuzzer harness over files and directories of inputs, without
// libFuzzer: how the checked-in corpora are replayed in every build (g++,
// sanitizers, Debug), so an input that once crashed a harness stays a test.
//
//   <harness>_replay PATH...   each PATH a file or a directory (recursed)
//
// Exits non-zero when a path cannot be read or holds no input at all; a
// failing input aborts inside the harness, naming itself on stderr first.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

bool run_file(const std::filesystem::path& path) {
    std::ifstream file{path, std::ios::binary};
    if (!file) {
        std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
        return false;
    }
    const std::vector<char> bytes{std::istreambuf_iterator<char>{file}, std::istreambuf_iterator<char>{}};
    // Named before it runs: a harness that fails aborts without a word about its input.
    std::fprintf(stderr, "replay: %s (%zu bytes)\n", path.c_str(), bytes.size());
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t inputs = 0;
    bool ok = true;
    for (int index = 1; index < argc; ++index) {
        const std::filesystem::path root{argv[index]};
        std::error_code error;
        if (std::filesystem::is_directory(root, error)) {
            std::vector<std::filesystem::path> files;
            for (const auto& entry : std::filesystem::recursive_directory_iterator{root}) {
                if (entry.is_regular_file()) {
                    files.push_back(entry.path());
                }
            }
            std::sort(files.begin(), files.end());  // the same order on every machine
            for (const auto& file : files) {
                ok = run_file(file) && ok;
                ++inputs;
            }
        } else {
            ok = run_file(root) && ok;
            ++inputs;
        }
    }
    // The empty input, which no corpus directory can hold as a file name.
    LLVMFuzzerTestOneInput(nullptr, 0);
    if (inputs == 0) {
        std::fprintf(stderr, "replay: no inputs given\n");
        return 2;
    }
    std::fprintf(stderr, "replay: %zu inputs passed\n", inputs);
    return ok ? 0 : 1;
}
