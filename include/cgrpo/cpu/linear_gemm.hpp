// cgrpo/cpu/linear_gemm.hpp: the three GEMMs of an LM head on a chunk of tokens (z = h W^T + b,
// dJ/dh = G W, dJ/dW (+)= G^T h), as Eigen products in fixed blocks spread over a workspace's threads.
#pragma once

#include <Eigen/Core>
#include <cstdint>

#include "cgrpo/cpu/thread_pool.hpp"

namespace cgrpo::cpu {

// Each product is cut into blocks whose shapes depend only on the problem (never on the thread
// count), and each block is one Eigen product computed by one thread: any number of threads gives
// the same bits. Blocks of 1024 vocabulary rows keep a block of W (4 MB at H = 1024 in float) in L2
// on the way through; 256 hidden columns give 4 to 16 blocks at H = 1024 to 4096.
constexpr int64_t kVocabBlock = 1024;
constexpr int64_t kHiddenBlock = 256;

template <typename Real>
using RowMajorMatrix = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename Real>
using MatrixView = Eigen::Map<RowMajorMatrix<Real>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <typename Real>
using ConstMatrixView = Eigen::Map<const RowMajorMatrix<Real>, Eigen::Unaligned, Eigen::OuterStride<>>;

// z [rows, V] (row stride ldz) = h [rows, H] (ldh) W^T + bias; W [V, H] (ldw), bias [V] or null.
template <typename Real>
void head_logits(ThreadPool& pool, int threads, const Real* h, int64_t ldh, int64_t rows, int64_t H, const Real* W,
                 int64_t ldw, const Real* bias, int64_t V, Real* z, int64_t ldz) {
  const int64_t blocks = (V + kVocabBlock - 1) / kVocabBlock;
  pool.run(blocks, threads, [&](int64_t b0, int64_t b1) {
    const ConstMatrixView<Real> hc(h, rows, H, Eigen::OuterStride<>(ldh));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t v0 = b * kVocabBlock, n = V - v0 < kVocabBlock ? V - v0 : kVocabBlock;
      const ConstMatrixView<Real> wb(W + v0 * ldw, n, H, Eigen::OuterStride<>(ldw));
      MatrixView<Real> zb(z + v0, rows, n, Eigen::OuterStride<>(ldz));
      if (bias) {
        zb = Eigen::Map<const Eigen::Matrix<Real, 1, Eigen::Dynamic>>(bias + v0, n).replicate(rows, 1);
        zb.noalias() += hc * wb.transpose();
      } else {
        zb.noalias() = hc * wb.transpose();
      }
    }
  });
}

// dJ/dh [rows, H] (ldgh) = G [rows, V] (ldz) W [V, H] (ldw). gh may be the h of this chunk (in place):
// the product does not read h.
template <typename Real>
void head_hidden_grad(ThreadPool& pool, int threads, const Real* G, int64_t ldz, int64_t rows, int64_t V, const Real* W,
                      int64_t ldw, int64_t H, Real* gh, int64_t ldgh) {
  const int64_t blocks = (H + kHiddenBlock - 1) / kHiddenBlock;
  pool.run(blocks, threads, [&](int64_t b0, int64_t b1) {
    const ConstMatrixView<Real> g(G, rows, V, Eigen::OuterStride<>(ldz));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t k0 = b * kHiddenBlock, n = H - k0 < kHiddenBlock ? H - k0 : kHiddenBlock;
      const ConstMatrixView<Real> wb(W + k0, V, n, Eigen::OuterStride<>(ldw));
      MatrixView<Real>(gh + k0, rows, n, Eigen::OuterStride<>(ldgh)).noalias() = g * wb;
    }
  });
}

// dJ/dW [V, H] (ldgw) = G^T h, or += when accumulate; dJ/db [V] likewise with the column sums of G
// (gb null: not computed; gw null: only the bias). Column sums run over the rows in order.
template <typename Real>
void head_weight_grad(ThreadPool& pool, int threads, const Real* G, int64_t ldz, int64_t rows, int64_t V, const Real* h,
                      int64_t ldh, int64_t H, Real* gw, int64_t ldgw, Real* gb, bool accumulate) {
  const int64_t blocks = (V + kVocabBlock - 1) / kVocabBlock;
  pool.run(blocks, threads, [&](int64_t b0, int64_t b1) {
    const ConstMatrixView<Real> hc(h, rows, H, Eigen::OuterStride<>(ldh));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t v0 = b * kVocabBlock, n = V - v0 < kVocabBlock ? V - v0 : kVocabBlock;
      const ConstMatrixView<Real> gb_cols(G + v0, rows, n, Eigen::OuterStride<>(ldz));
      if (gw) {
        MatrixView<Real> out(gw + v0 * ldgw, n, H, Eigen::OuterStride<>(ldgw));
        if (accumulate) out.noalias() += gb_cols.transpose() * hc;
        else out.noalias() = gb_cols.transpose() * hc;
      }
      if (gb) {
        Eigen::Map<Eigen::Array<Real, Eigen::Dynamic, 1>> sums(gb + v0, n);
        if (!accumulate) sums.setZero();
        for (int64_t r = 0; r < rows; ++r) sums += Eigen::Map<const Eigen::Array<Real, Eigen::Dynamic, 1>>(G + r * ldz + v0, n);
      }
    }
  });
}

}  // namespace cgrpo::cpu
