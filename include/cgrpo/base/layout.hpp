// cgrpo/base/layout.hpp: which response each token row belongs to.
// Padded [B, L] batches and packed (ragged, offset-indexed) batches share one view.
#pragma once

#include <cstdint>

#include "cgrpo/base/buffer_overlap.hpp"
#include "cgrpo/base/checked_size.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo {

struct SequenceLayout {
  int64_t num_sequences = 0;
  // Packed: offsets[i]..offsets[i+1] are the rows of response i (size num_sequences + 1,
  // offsets[0] == 0). nullptr means padded: response i owns rows [i*L, (i+1)*L).
  const int64_t* offsets = nullptr;
  int64_t padded_length = 0;  // L, used when offsets == nullptr

  static SequenceLayout padded(int64_t num_sequences, int64_t length) {
    SequenceLayout s;
    s.num_sequences = num_sequences;
    s.padded_length = length;
    return s;
  }
  static SequenceLayout packed(int64_t num_sequences, const int64_t* offsets) {
    SequenceLayout s;
    s.num_sequences = num_sequences;
    s.offsets = offsets;
    return s;
  }

  // begin, end, num_tokens and max_length assume a layout that validate() accepted.
  int64_t begin(int64_t i) const { return offsets ? offsets[i] : i * padded_length; }
  int64_t end(int64_t i) const { return offsets ? offsets[i + 1] : (i + 1) * padded_length; }
  int64_t num_tokens() const { return num_sequences == 0 ? 0 : end(num_sequences - 1); }

  // The longest response in rows (the padded length L for a padded layout).
  int64_t max_length() const {
    if (!offsets) return padded_length;
    int64_t m = 0;
    for (int64_t i = 0; i < num_sequences; ++i) m = end(i) - begin(i) > m ? end(i) - begin(i) : m;
    return m;
  }

  // The offsets as an array of the overlap check (an empty span for a padded layout).
  BufferSpan offsets_span() const {
    return array_span("layout.offsets", offsets, num_sequences >= 0 && num_sequences < INT64_MAX ? num_sequences + 1 : 0);
  }

  // Checks that the layout is well formed and writes the number of rows it covers (computed
  // without overflow: a padded num_sequences x padded_length past int64 is an error).
  Status count_tokens(int64_t* covered) const {
    if (num_sequences < 0)
      return make_error(StatusCode::invalid_argument, "layout.num_sequences must be >= 0, got %lld",
                        static_cast<long long>(num_sequences));
    if (offsets) {
      if (offsets[0] != 0)
        return make_error(StatusCode::invalid_argument, "layout.offsets[0] must be 0, got %lld",
                          static_cast<long long>(offsets[0]));
      for (int64_t i = 0; i < num_sequences; ++i)
        if (offsets[i + 1] < offsets[i])
          return make_error(StatusCode::invalid_argument,
                            "layout.offsets must be non-decreasing: offsets[%lld] = %lld < offsets[%lld] = %lld",
                            static_cast<long long>(i + 1), static_cast<long long>(offsets[i + 1]),
                            static_cast<long long>(i), static_cast<long long>(offsets[i]));
      *covered = num_sequences == 0 ? 0 : offsets[num_sequences];
      return Status::success();
    }
    if (padded_length < 0)
      return make_error(StatusCode::invalid_argument, "layout.padded_length must be >= 0, got %lld",
                        static_cast<long long>(padded_length));
    if (!checked_mul(num_sequences, padded_length, covered))
      return make_error(StatusCode::invalid_argument,
                        "layout: num_sequences (%lld) x padded_length (%lld) rows overflow int64",
                        static_cast<long long>(num_sequences), static_cast<long long>(padded_length));
    return Status::success();
  }

  // Checks that the layout is well formed and covers exactly `expected_tokens` rows.
  Status validate(int64_t expected_tokens) const {
    int64_t covered = 0;
    CGRPO_RETURN_IF_ERROR(count_tokens(&covered));
    if (covered != expected_tokens)
      return make_error(StatusCode::invalid_argument,
                        "layout covers %lld token rows but the batch has %lld",
                        static_cast<long long>(covered), static_cast<long long>(expected_tokens));
    return Status::success();
  }
};

}  // namespace cgrpo
