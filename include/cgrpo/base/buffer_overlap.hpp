// cgrpo/base/buffer_overlap.hpp: the bytes each array of a call spans, and the check that no output
// shares a byte with an input or another output. Every entry point lists its arrays once, by name.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cgrpo/base/checked_size.hpp"
#include "cgrpo/base/status.hpp"

namespace cgrpo {

// One array of a call: `rows` rows of `row_elems` elements of `elem_bytes` bytes, row r starting
// r * stride_elems elements after `data` (stride_elems >= row_elems). A per-token [T] array is
// one row of T elements; logits are T rows of V elements at the row stride, so the gaps between
// rows belong to nobody. A null or empty array spans no byte.
struct BufferSpan {
  const char* name = "";
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t row_elems = 0;
  int64_t stride_elems = 0;
  int64_t elem_bytes = 0;
  // Outputs only: the input this output may be exactly (same pointer, rows, row length and
  // stride), i.e. computed in place. Any other sharing is an error.
  const char* in_place_of = nullptr;
};

template <typename T>
BufferSpan array_span(const char* name, const T* data, int64_t count) {
  return BufferSpan{name, data, 1, count, count, static_cast<int64_t>(sizeof(T)), nullptr};
}

template <typename T>
BufferSpan row_span(const char* name, const T* data, int64_t rows, int64_t row_elems, int64_t stride_elems,
                    const char* in_place_of = nullptr) {
  return BufferSpan{name, data, rows, row_elems, stride_elems, static_cast<int64_t>(sizeof(T)), in_place_of};
}

// The arrays of one call. Fixed capacity, so checking allocates nothing; adding an array to an
// entry point is one input() or output() line.
struct BufferTable {
  static constexpr int kCapacity = 16;
  BufferSpan inputs[kCapacity];
  BufferSpan outputs[kCapacity];
  int num_inputs = 0;
  int num_outputs = 0;
  bool full = false;  // more than kCapacity of a kind: a library bug, reported by check_buffers

  void input(const BufferSpan& s) {
    if (num_inputs < kCapacity) inputs[num_inputs++] = s;
    else full = true;
  }
  void output(const BufferSpan& s) {
    if (num_outputs < kCapacity) outputs[num_outputs++] = s;
    else full = true;
  }
};

namespace detail {

// A span in bytes. A span whose rows touch (stride == row length) is stored as one row.
struct ByteRange {
  bool present = false;
  uint64_t begin = 0, end = 0;  // end: one past the last byte of the last row
  uint64_t rows = 0, row_bytes = 0, stride_bytes = 0;
};

inline Status byte_range(const BufferSpan& s, ByteRange* r) {
  *r = ByteRange{};
  if (!s.data || s.rows == 0 || s.row_elems == 0) return Status::success();
  if (s.rows < 0 || s.row_elems < 0 || s.stride_elems < s.row_elems || s.elem_bytes <= 0)
    return make_error(StatusCode::invalid_argument, "%s: bad shape (%lld rows of %lld elements, stride %lld)", s.name,
                      static_cast<long long>(s.rows), static_cast<long long>(s.row_elems),
                      static_cast<long long>(s.stride_elems));
  int64_t last_row = 0, elems = 0, bytes = 0, stride_bytes = 0;
  if (!checked_mul(s.rows - 1, s.stride_elems, &last_row) || !checked_add(last_row, s.row_elems, &elems) ||
      !checked_mul(elems, s.elem_bytes, &bytes) || !checked_mul(s.stride_elems, s.elem_bytes, &stride_bytes))
    return make_error(StatusCode::invalid_argument,
                      "%s: %lld rows of %lld elements at a stride of %lld overflow int64 (size in bytes)", s.name,
                      static_cast<long long>(s.rows), static_cast<long long>(s.row_elems),
                      static_cast<long long>(s.stride_elems));
  const uint64_t begin = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(s.data));
  if (static_cast<uint64_t>(bytes) > UINT64_MAX - begin)
    return make_error(StatusCode::invalid_argument, "%s: its %lld bytes run past the end of the address space",
                      s.name, static_cast<long long>(bytes));
  r->present = true;
  r->begin = begin;
  r->end = begin + static_cast<uint64_t>(bytes);
  r->row_bytes = static_cast<uint64_t>(s.row_elems * s.elem_bytes);  // <= bytes: fits
  if (s.rows == 1 || r->row_bytes == static_cast<uint64_t>(stride_bytes)) {
    r->rows = 1;
    r->row_bytes = r->stride_bytes = static_cast<uint64_t>(bytes);
  } else {
    r->rows = static_cast<uint64_t>(s.rows);
    r->stride_bytes = static_cast<uint64_t>(stride_bytes);
  }
  return Status::success();
}

// The first row of `r` that ends after byte x (r.rows when none does).
inline uint64_t first_row_ending_after(const ByteRange& r, uint64_t x) {
  if (x < r.begin + r.row_bytes) return 0;
  const uint64_t j = (x - r.begin - r.row_bytes) / r.stride_bytes + 1;
  return j < r.rows ? j : r.rows;
}

#if defined(__SIZEOF_INT128__)
using Wide = __int128;
#else
using Wide = long double;  // exact for the address differences of any real machine (< 2^64)
#endif

inline Wide floor_div(Wide a, Wide b) {  // b > 0
#if defined(__SIZEOF_INT128__)
  Wide q = a / b;
  if (a % b != 0 && a < 0) --q;
  return q;
#else
  return static_cast<Wide>(static_cast<long long>(std::floor(a / b)));
#endif
}

// Whether two spans share a byte. O(1) unless both have several rows at different strides: then
// a walk over the rows where the two ranges meet, O(rows).
inline bool ranges_overlap(const ByteRange& a, const ByteRange& b) {
  if (!a.present || !b.present || a.end <= b.begin || b.end <= a.begin) return false;
  if (a.rows == 1 && b.rows == 1) return true;
  if (a.rows == 1 || b.rows == 1) {
    const ByteRange& one = a.rows == 1 ? a : b;
    const ByteRange& many = a.rows == 1 ? b : a;
    const uint64_t j = first_row_ending_after(many, one.begin);
    return j < many.rows && many.begin + j * many.stride_bytes < one.end;
  }
  if (a.stride_bytes == b.stride_bytes) {
    // Row i of a meets row j = i + k of b iff d - rb < k s < d + ra (d = a.begin - b.begin):
    // take the smallest k above the lower bound that names two real rows.
    const Wide s = static_cast<Wide>(a.stride_bytes);
    const Wide d = static_cast<Wide>(a.begin) - static_cast<Wide>(b.begin);
    Wide k = floor_div(d - static_cast<Wide>(b.row_bytes), s) + 1;
    const Wide k_min = -(static_cast<Wide>(a.rows) - 1);
    if (k < k_min) k = k_min;
    return k <= static_cast<Wide>(b.rows) - 1 && k * s < d + static_cast<Wide>(a.row_bytes);
  }
  // Different strides: walk both sorted row lists from where the ranges meet.
  uint64_t i = first_row_ending_after(a, b.begin), j = first_row_ending_after(b, a.begin);
  while (i < a.rows && j < b.rows) {
    const uint64_t a0 = a.begin + i * a.stride_bytes, b0 = b.begin + j * b.stride_bytes;
    if (a0 >= b.end || b0 >= a.end) return false;
    if (a0 + a.row_bytes <= b0) i = first_row_ending_after(a, b0);
    else if (b0 + b.row_bytes <= a0) j = first_row_ending_after(b, a0);
    else return true;
  }
  return false;
}

inline bool same_span(const BufferSpan& a, const BufferSpan& b) {
  return a.data == b.data && a.rows == b.rows && a.row_elems * a.elem_bytes == b.row_elems * b.elem_bytes &&
         (a.rows == 1 || a.stride_elems * a.elem_bytes == b.stride_elems * b.elem_bytes);
}

}  // namespace detail

// Checks every array's size (its byte range must fit int64 and the address space), then that no
// output shares a byte with an input or with another output, except an output that is exactly
// the input its in_place_of names. Reads no array. The message names both arrays.
inline Status check_buffers(const BufferTable& t) {
  if (t.full)
    return make_error(StatusCode::invalid_argument, "internal: more than %d arrays of one kind in a buffer table",
                      BufferTable::kCapacity);
  detail::ByteRange in[BufferTable::kCapacity], out[BufferTable::kCapacity];
  for (int i = 0; i < t.num_inputs; ++i) CGRPO_RETURN_IF_ERROR(detail::byte_range(t.inputs[i], &in[i]));
  for (int o = 0; o < t.num_outputs; ++o) CGRPO_RETURN_IF_ERROR(detail::byte_range(t.outputs[o], &out[o]));
  for (int o = 0; o < t.num_outputs; ++o) {
    const BufferSpan& os = t.outputs[o];
    for (int i = 0; i < t.num_inputs; ++i) {
      const BufferSpan& is = t.inputs[i];
      if (!detail::ranges_overlap(out[o], in[i])) continue;
      // Both spans are present, so byte_range has checked their sizes: same_span cannot overflow.
      if (os.in_place_of && std::strcmp(os.in_place_of, is.name) == 0 && detail::same_span(os, is)) continue;
      return make_error(StatusCode::invalid_argument,
                        "%s (output) overlaps %s (input): an output may not share memory with an input or "
                        "another output%s; nothing was written",
                        os.name, is.name, os.in_place_of ? " (in place: the same pointer and stride)" : "");
    }
    for (int p = o + 1; p < t.num_outputs; ++p)
      if (detail::ranges_overlap(out[o], out[p]))
        return make_error(StatusCode::invalid_argument,
                          "%s (output) overlaps %s (output): an output may not share memory with an input or "
                          "another output; nothing was written",
                          os.name, t.outputs[p].name);
  }
  return Status::success();
}

}  // namespace cgrpo
