// ChunkedTable: an index-addressed table whose elements never move.
#pragma once

#include <cstddef>
#include <iterator>
#include <memory>
#include <vector>

namespace muxio::detail {

/// A table indexed by small integers (descriptors) that grows in fixed-size
/// chunks: elements keep their addresses as it grows, and a lookup is two
/// dependent loads (chunk pointer, element), fewer than std::deque's.
template <class T, std::size_t ChunkBits = 8>
class ChunkedTable {
public:
    static constexpr std::size_t chunk_size = std::size_t{1} << ChunkBits;

    class const_iterator {
    public:
        using iterator_category = std::forward_iterator_tag;
        using value_type = T;
        using difference_type = std::ptrdiff_t;
        using pointer = const T*;
        using reference = const T&;

        const_iterator() = default;
        reference operator*() const { return (*table_)[index_]; }
        pointer operator->() const { return &(*table_)[index_]; }
        const_iterator& operator++() {
            ++index_;
            return *this;
        }
        const_iterator operator++(int) {
            auto before = *this;
            ++index_;
            return before;
        }
        friend bool operator==(const const_iterator& a, const const_iterator& b) noexcept {
            return a.index_ == b.index_;
        }

    private:
        friend class ChunkedTable;
        const_iterator(const ChunkedTable* table, std::size_t index) : table_{table}, index_{index} {}
        const ChunkedTable* table_ = nullptr;
        std::size_t index_ = 0;
    };

    [[nodiscard]] std::size_t size() const noexcept { return chunks_.size() << ChunkBits; }

    T& operator[](std::size_t index) noexcept { return chunks_[index >> ChunkBits][index & (chunk_size - 1)]; }
    const T& operator[](std::size_t index) const noexcept {
        return chunks_[index >> ChunkBits][index & (chunk_size - 1)];
    }

    /// Makes `index` addressable; existing elements stay where they are.
    void grow_to(std::size_t index) {
        while (size() <= index) {
            chunks_.push_back(std::make_unique<T[]>(chunk_size));
        }
    }

    void clear() noexcept { chunks_.clear(); }

    [[nodiscard]] const_iterator begin() const noexcept { return {this, 0}; }
    [[nodiscard]] const_iterator end() const noexcept { return {this, size()}; }

private:
    std::vector<std::unique_ptr<T[]>> chunks_;
};

}  // namespace muxio::detail
