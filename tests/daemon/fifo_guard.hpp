// Keeps a test that reads a FIFO bounded: a reader that opens a FIFO without
// O_NONBLOCK waits for a writer, and would hang the test for ever.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

namespace muxio::test {

/// Unless disarmed (or destroyed) within `limit`, opens `fifo` for writing
/// and closes it again, which ends a reader's wait in open() (the reader
/// then reads an empty file); fired() says whether it had to.
class FifoUnblocker {
public:
    FifoUnblocker(std::string fifo, std::chrono::milliseconds limit)
        : fifo_{std::move(fifo)}, thread_{[this, limit] { watch(limit); }} {}
    ~FifoUnblocker() { disarm(); }
    FifoUnblocker(const FifoUnblocker&) = delete;
    FifoUnblocker& operator=(const FifoUnblocker&) = delete;

    /// Stops watching; returns whether the writer had to be opened.
    bool disarm() {
        {
            const std::lock_guard lock{mutex_};
            done_ = true;
        }
        wake_.notify_all();
        if (thread_.joinable()) {
            thread_.join();
        }
        return fired_;
    }

private:
    void watch(std::chrono::milliseconds limit) {
        std::unique_lock lock{mutex_};
        if (wake_.wait_for(lock, limit, [this] { return done_; })) {
            return;
        }
        // O_NONBLOCK: fails at once (ENXIO) if nobody is reading after all.
        // Whatever else the path names now is left alone.
        struct stat info {};
        if (::stat(fifo_.c_str(), &info) != 0 || !S_ISFIFO(info.st_mode)) {
            return;
        }
        const int fd = ::open(fifo_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) {
            fired_ = true;
            ::close(fd);
        }
    }

    std::string fifo_;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool done_ = false;
    bool fired_ = false;  // written by the thread before join()
    std::thread thread_;
};

}  // namespace muxio::test
