// A latency histogram with bounded memory: 64 linear sub-buckets per power
// of two (HdrHistogram's layout), so any recorded value is reported within
// 1/64 (1.6%) of itself, whatever the run's length.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace muxio::apps {

class LatencyHistogram {
public:
    static constexpr unsigned sub_bucket_bits = 6;
    static constexpr std::uint64_t sub_buckets = std::uint64_t{1} << sub_bucket_bits;

    void record(std::uint64_t value) {
        const std::size_t index = index_of(value);
        if (index >= counts_.size()) {
            counts_.resize(index + 1, 0);
        }
        ++counts_[index];
        ++total_;
        max_ = std::max(max_, value);
        min_ = total_ == 1 ? value : std::min(min_, value);
    }

    void merge(const LatencyHistogram& other) {
        if (other.counts_.size() > counts_.size()) {
            counts_.resize(other.counts_.size(), 0);
        }
        for (std::size_t i = 0; i < other.counts_.size(); ++i) {
            counts_[i] += other.counts_[i];
        }
        if (other.total_ != 0) {
            min_ = total_ == 0 ? other.min_ : std::min(min_, other.min_);
            max_ = std::max(max_, other.max_);
        }
        total_ += other.total_;
    }

    [[nodiscard]] std::uint64_t count() const noexcept { return total_; }
    [[nodiscard]] std::uint64_t max() const noexcept { return max_; }
    [[nodiscard]] std::uint64_t min() const noexcept { return min_; }

    /// The value at `quantile` (0..1): the highest value of the bucket that
    /// holds that rank, capped at the largest value recorded; 0 when empty.
    [[nodiscard]] std::uint64_t quantile(double quantile) const noexcept {
        if (total_ == 0) {
            return 0;
        }
        const auto rank = std::max<std::uint64_t>(
            1, static_cast<std::uint64_t>(std::ceil(std::clamp(quantile, 0.0, 1.0) * static_cast<double>(total_))));
        std::uint64_t seen = 0;
        for (std::size_t index = 0; index < counts_.size(); ++index) {
            seen += counts_[index];
            if (seen >= rank) {
                return std::min(highest_in(index), max_);
            }
        }
        return max_;
    }

    [[nodiscard]] static std::size_t index_of(std::uint64_t value) noexcept {
        if (value < sub_buckets) {
            return static_cast<std::size_t>(value);
        }
        // shift makes value >> shift land in [sub_buckets, 2 * sub_buckets).
        const auto shift = static_cast<unsigned>(std::bit_width(value)) - (sub_bucket_bits + 1);
        return static_cast<std::size_t>((shift + 1) * sub_buckets + ((value >> shift) - sub_buckets));
    }

    [[nodiscard]] static std::uint64_t highest_in(std::size_t index) noexcept {
        if (index < sub_buckets) {
            return index;
        }
        const std::uint64_t shift = index / sub_buckets - 1;
        const std::uint64_t sub = index % sub_buckets + sub_buckets;
        return ((sub + 1) << shift) - 1;
    }

private:
    std::vector<std::uint64_t> counts_;
    std::uint64_t total_ = 0;
    std::uint64_t max_ = 0;
    std::uint64_t min_ = 0;
};

}  // namespace muxio::apps
