// Fused CPU kernels for Mixture of Contexts routed attention (moc impl "fused").
//
// The pure-PyTorch "gather" impl materialises, for every routed (query, chunk) pair, a copy of
// the query, a padded batch for the flash kernel, the partial output, a concatenation and a
// second gather for the merge: at 32k tokens and top_k=16 that is >1 GB of memory traffic for
// ~0.25 s of arithmetic. Here the work is split into items (batch*head, range of query rows)
// of about equal routed work; an item walks every chunk c, takes the queries of its row range
// that routed to c (a sub-range of the (bh, c) CSR group, found by binary search), and in tiles
// gathers them into a cache-resident buffer, attends c's keys with two BLAS calls and a
// vectorised softmax, and folds each tile row's partial into that row's output with the
// log-sum-exp trick, in place. An item owns its rows, so no two threads touch the same output
// row and the running outputs stay in cache; nothing of size (pairs x D) is ever materialised.
//
// Exactness: every score is computed once, in the input dtype (float32 or float64), with the
// row max subtracted before exp; partials are merged as o <- o*exp(m - m') + o_p*exp(l_p - m'),
// m' = logaddexp(m, l_p), as in flash attention. Groups of chunks flagged in `skip_c` (chunks
// that are only partly un-anchored for some query) are left to the caller.
//
// This file: the forward kernels (routing index, anchor partials, routed partials).
// Built at first use by mocbench/backends/moc/cpu_ext.py (torch.utils.cpp_extension, -march=native).

#include "moc_cpu.h"

namespace mocbench_cpu {

// Routing (B*H, L, K) -> CSR by (bh, chunk): group_ptr (BH*C+1), rows_e (E,) = bh*L + i (ascending
// within a group), and row_bounds (BH, P+1): for each bh, P contiguous ranges of rows holding about
// equal numbers of routed pairs (the work items of routed_attention). -1 entries and repeated
// chunks in a row are dropped.
std::vector<at::Tensor> routed_index(const at::Tensor& selected, int64_t num_chunks, int64_t parts) {
  TORCH_CHECK(selected.device().is_cpu() && selected.dim() == 3 && selected.scalar_type() == at::kLong,
              "selected must be a (B*H, L, K) int64 CPU tensor, got ", selected.sizes(), " ", selected.scalar_type());
  TORCH_CHECK(parts >= 1, "parts must be >= 1, got ", parts);
  const at::Tensor sel = selected.contiguous();
  const int64_t BH = sel.size(0), L = sel.size(1), K = sel.size(2), C = num_chunks;
  const int64_t* s = sel.data_ptr<int64_t>();
  for (int64_t e = 0; e < sel.numel(); ++e)
    TORCH_CHECK(s[e] >= -1 && s[e] < C, "selected holds chunk ", s[e], "; expected -1 or 0..", C - 1);
  // keep[e]: first occurrence of a valid chunk in its row
  std::vector<uint8_t> keep(sel.numel(), 0);
  at::Tensor counts = at::zeros({BH * C + 1}, at::kLong);
  int64_t* cnt = counts.data_ptr<int64_t>();
  for (int64_t r = 0; r < BH * L; ++r) {
    const int64_t bh = r / L;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t c = s[r * K + k];
      if (c < 0) continue;
      bool dup = false;
      for (int64_t j = 0; j < k && !dup; ++j) dup = s[r * K + j] == c;
      if (dup) continue;
      keep[r * K + k] = 1;
      ++cnt[bh * C + c + 1];
    }
  }
  at::Tensor group_ptr = counts.cumsum(0);
  const int64_t E = group_ptr[BH * C].item<int64_t>();
  at::Tensor rows_e = at::empty({E}, at::kLong);
  std::vector<int64_t> fill(group_ptr.data_ptr<int64_t>(), group_ptr.data_ptr<int64_t>() + BH * C);
  int64_t* rp = rows_e.data_ptr<int64_t>();
  at::Tensor row_bounds = at::empty({BH, parts + 1}, at::kLong);
  int64_t* rb = row_bounds.data_ptr<int64_t>();
  for (int64_t bh = 0; bh < BH; ++bh) {
    int64_t total = 0;
    for (int64_t e = bh * L * K; e < (bh + 1) * L * K; ++e) total += keep[e];
    int64_t done = 0, p = 1;
    rb[bh * (parts + 1)] = bh * L;
    for (int64_t i = 0; i < L; ++i) {
      const int64_t r = bh * L + i;
      int64_t cnt = 0;
      for (int64_t k = 0; k < K; ++k) {
        if (!keep[r * K + k]) continue;
        rp[fill[bh * C + s[r * K + k]]++] = r;
        ++cnt;
      }
      // a range ends before row r when r's midpoint lies past the range's share of the work
      while (p < parts && (2 * done + cnt) * parts > 2 * total * p) rb[bh * (parts + 1) + p++] = r;
      done += cnt;
    }
    while (p <= parts) rb[bh * (parts + 1) + p++] = (bh + 1) * L;
  }
  return {group_ptr, rows_e, row_bounds};
}

template <typename T>
void routed_attention_impl(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs,
                           const at::Tensor& group_ptr, const at::Tensor& rows_e, const at::Tensor& offsets,
                           const at::Tensor& skip_c, const at::Tensor& row_bounds, double scale_d, int64_t L,
                           at::Tensor& out, at::Tensor& lse) {
  const int64_t D = q.size(1), C = offsets.size(0) - 1;
  const int64_t BH = row_bounds.size(0), P = row_bounds.size(1) - 1;
  const T* qp = q.data_ptr<T>();
  const T* kp = ks.data_ptr<T>();
  const T* vp = vs.data_ptr<T>();
  const int64_t* gp = group_ptr.data_ptr<int64_t>();
  const int64_t* rows = rows_e.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* rb = row_bounds.data_ptr<int64_t>();
  const bool* skip = skip_c.data_ptr<bool>();
  T* outp = out.data_ptr<T>();
  T* lsep = lse.data_ptr<T>();
  const T scale = static_cast<T>(scale_d);

  // Tiles: at most `rows_per_tile` routed queries, so the score tile stays ~1 MB.
  int64_t max_m = 1;
  for (int64_t c = 0; c < C; ++c) max_m = std::max(max_m, off[c + 1] - off[c]);
  const int64_t rows_per_tile = std::clamp<int64_t>((int64_t(1) << 18) / max_m, 16, 256);
  // Items have about equal work (row ranges cut at equal routed pairs), so torch's static split of
  // the item range over its threads balances; at::parallel_for rather than a raw `omp parallel`:
  // the latter ran small calls 3x slower here (threads of two regions spinning against each other).
  const int64_t items = BH * P;
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    using V = Vectorized<T>;
    std::vector<T> q_buf(rows_per_tile * D), s_buf(rows_per_tile * max_m), o_buf(rows_per_tile * D);
    std::vector<std::pair<T, T>> stats(rows_per_tile);  // per row: (max, sum) of the scaled scores
    std::vector<T> m_run, l_run;
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t bh = item / P, p = item % P;
      const int64_t r0 = rb[bh * (P + 1) + p], r1 = rb[bh * (P + 1) + p + 1];
      if (r0 >= r1) continue;
      // Running state of the item's rows: output rows hold sum_j exp(s_j - m) v_j, l = sum_j exp(s_j - m).
      // On entry they hold the anchor partial (normalised output, LSE): m = LSE, l = 1 states exactly that.
      m_run.assign(lsep + r0, lsep + r1);
      l_run.assign(r1 - r0, T(1));
      for (int64_t c = 0; c < C; ++c) {
        if (skip[c]) continue;
        const int64_t g = bh * C + c;
        const int64_t lo = std::lower_bound(rows + gp[g], rows + gp[g + 1], r0) - rows;
        const int64_t hi = std::lower_bound(rows + lo, rows + gp[g + 1], r1) - rows;
        const int m = static_cast<int>(off[c + 1] - off[c]);
        if (m == 0 || lo == hi) continue;
        const int d = static_cast<int>(D);
        const T* k_md = kp + (bh * L + off[c]) * D;  // the chunk's keys: contiguous (chunk-sorted)
        const T* v_md = vp + (bh * L + off[c]) * D;
        for (int64_t b = lo; b < hi; b += rows_per_tile) {
          const int n = static_cast<int>(std::min(hi, b + rows_per_tile) - b);
          for (int i = 0; i < n; ++i)  // gather the tile's queries, pre-scaled
            at::vec::map([scale](V x) { return x * V(scale); }, q_buf.data() + int64_t(i) * D, qp + rows[b + i] * D, D);
          // S (n x m, row-major) = Q K^T  <=>  column-major S^T (m x n) = K (m x D)^T-view * Q^T.
          gemm('T', 'N', m, n, d, k_md, d, q_buf.data(), d, s_buf.data(), m);
          for (int i = 0; i < n; ++i) stats[i] = softmax_row<T>(s_buf.data() + int64_t(i) * m, m);
          // O (n x D, row-major) = P V  <=>  column-major O^T (D x n) = V^T (D x m) * P^T (m x n).
          gemm('N', 'N', d, n, m, v_md, d, s_buf.data(), m, o_buf.data(), d);
          for (int i = 0; i < n; ++i) {  // fold the partial into the row's running state
            const int64_t r = rows[b + i];
            T* acc = outp + r * D;
            const T* o = o_buf.data() + int64_t(i) * D;
            T& run_m = m_run[r - r0];
            T& run_l = l_run[r - r0];
            const T mx = stats[i].first, sum = stats[i].second;
            if (mx > run_m) {  // rescale the running sum to the new reference
              const T w = std::exp(run_m - mx);
              at::vec::map2([w](V a, V x) { return a * V(w) + x; }, acc, acc, o, D);
              run_l = run_l * w + sum;
              run_m = mx;
            } else {
              const T w = std::exp(mx - run_m);
              at::vec::map2([w](V a, V x) { return a + x * V(w); }, acc, acc, o, D);
              run_l += sum * w;
            }
          }
        }
      }
      for (int64_t r = r0; r < r1; ++r) {  // normalise; LSE = m + log(l)
        const T inv = T(1) / l_run[r - r0];
        at::vec::map([inv](V a) { return a * V(inv); }, outp + r * D, outp + r * D, D);
        lsep[r] = m_run[r - r0] + std::log(l_run[r - r0]);
      }
    }
  });
}


// Anchor partials: for every (bh, group g) of a bucket of equal-shaped anchor groups, the queries
// q_idx[g] (token positions) attend the keys k_idx[g]; the normalised output and LSE of each query
// are written to out, lse (rows bh*L + position). Every token is a query of exactly one anchor
// group, so rows have one writer. Keys of a group are gathered once into a thread-local buffer.
template <typename T>
void anchor_attention_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_idx,
                           const at::Tensor& k_idx, double scale_d, int64_t L, at::Tensor& out, at::Tensor& lse) {
  const int64_t D = q.size(1), BH = q.size(0) / L, G = q_idx.size(0), n_q = q_idx.size(1), n_k = k_idx.size(1);
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const int64_t* qi = q_idx.data_ptr<int64_t>();
  const int64_t* ki = k_idx.data_ptr<int64_t>();
  T* outp = out.data_ptr<T>();
  T* lsep = lse.data_ptr<T>();
  const T scale = static_cast<T>(scale_d);
  const int64_t rows_per_tile = std::clamp<int64_t>((int64_t(1) << 18) / std::max<int64_t>(n_k, 1), 16, 256);
  const int64_t items = BH * G;
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    using V = Vectorized<T>;
    std::vector<T> k_buf(n_k * D), v_buf(n_k * D), q_buf(rows_per_tile * D), s_buf(rows_per_tile * n_k),
        o_buf(rows_per_tile * D);
    std::vector<std::pair<T, T>> stats(rows_per_tile);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t bh = item / G, g = item % G;
      for (int64_t j = 0; j < n_k; ++j) {
        std::copy_n(kp + (bh * L + ki[g * n_k + j]) * D, D, k_buf.data() + j * D);
        std::copy_n(vp + (bh * L + ki[g * n_k + j]) * D, D, v_buf.data() + j * D);
      }
      const int m = static_cast<int>(n_k), d = static_cast<int>(D);
      for (int64_t b = 0; b < n_q; b += rows_per_tile) {
        const int n = static_cast<int>(std::min(n_q, b + rows_per_tile) - b);
        for (int i = 0; i < n; ++i)
          at::vec::map([scale](V x) { return x * V(scale); }, q_buf.data() + int64_t(i) * D,
                       qp + (bh * L + qi[g * n_q + b + i]) * D, D);
        gemm('T', 'N', m, n, d, k_buf.data(), d, q_buf.data(), d, s_buf.data(), m);
        for (int i = 0; i < n; ++i) stats[i] = softmax_row<T>(s_buf.data() + int64_t(i) * m, m);
        gemm('N', 'N', d, n, m, v_buf.data(), d, s_buf.data(), m, o_buf.data(), d);
        for (int i = 0; i < n; ++i) {
          const int64_t r = bh * L + qi[g * n_q + b + i];
          const T inv = T(1) / stats[i].second;
          at::vec::map([inv](V x) { return x * V(inv); }, outp + r * D, o_buf.data() + int64_t(i) * D, D);
          lsep[r] = stats[i].first + std::log(stats[i].second);
        }
      }
    }
  });
}

template void routed_attention_impl<float>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           double, int64_t, at::Tensor&, at::Tensor&);
template void routed_attention_impl<double>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            double, int64_t, at::Tensor&, at::Tensor&);
template void anchor_attention_impl<float>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, double, int64_t, at::Tensor&, at::Tensor&);
template void anchor_attention_impl<double>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, double, int64_t, at::Tensor&, at::Tensor&);

}  // namespace mocbench_cpu
