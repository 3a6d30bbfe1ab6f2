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
// Built at first use by mocbench/backends/moc/cpu_ext.py (torch.utils.cpp_extension, -march=native).

// Select the widest at::vec implementation the compiler targets, before any ATen header.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define CPU_CAPABILITY DEFAULT
#endif

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// Fortran BLAS exported by libtorch_cpu (MKL on x86-64 wheels), as ATen's own cpublas calls it.
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace {

using at::vec::Vectorized;

// Column-major BLAS C(m x n) = op(A) op(B) + beta C; see the call sites for the row-major reading.
inline void gemm(char ta, char tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                 int ldc, float beta = 0.f) {
  const float one = 1.f;
  sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void gemm(char ta, char tb, int m, int n, int k, const double* a, int lda, const double* b, int ldb,
                 double* c, int ldc, double beta = 0.0) {
  const double one = 1.0;
  dgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
}

template <typename T>
inline Vectorized<T> vexp(const Vectorized<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// row <- exp(row - max(row)); returns (max, sum). Scores arrive already scaled (the queries are).
template <typename T>
inline std::pair<T, T> softmax_row(T* row, int64_t m) {
  using V = Vectorized<T>;
  const int64_t W = V::size(), body = m - m % W;
  V vmax(-std::numeric_limits<T>::infinity());
  for (int64_t j = 0; j < body; j += W) vmax = at::vec::maximum(vmax, V::loadu(row + j));
  T mx = at::vec::vec_reduce_all<T>([](V& a, V& b) { return at::vec::maximum(a, b); }, vmax);
  for (int64_t j = body; j < m; ++j) mx = std::max(mx, row[j]);
  V vm(mx), vsum(T(0));
  for (int64_t j = 0; j < body; j += W) {
    V p = vexp(V::loadu(row + j) - vm);
    p.store(row + j);
    vsum = vsum + p;
  }
  T sum = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, vsum);
  for (int64_t j = body; j < m; ++j) {
    row[j] = std::exp(row[j] - mx);
    sum += row[j];
  }
  return {mx, sum};
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
  const int64_t items = BH * P;
  const int threads = std::max<int>(1, std::min<int64_t>(at::get_num_threads(), items));

#pragma omp parallel num_threads(threads)
  {
    using V = Vectorized<T>;
    std::vector<T> q_buf(rows_per_tile * D), s_buf(rows_per_tile * max_m), o_buf(rows_per_tile * D);
    std::vector<std::pair<T, T>> stats(rows_per_tile);  // per row: (max, sum) of the scaled scores
    std::vector<T> m_run, l_run;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
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
  }
}


// Backward of the routed partials, given the final output's LSE and delta = rowsum(dO * O):
// P = exp(scale * Q K^T - lse), dV += P^T dO, dS = scale * P * (dO V^T - delta), dK += dS^T Q,
// dQ += dS K (flash attention's decomposition: each partial's exact share). Heads are processed one
// after another; within a head, threads take whole chunks (so a chunk's dK, dV rows have one writer)
// and accumulate dQ in a per-thread (L, D) buffer, summed into dq at the end of the head.
template <typename T>
void routed_backward_impl(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs, const at::Tensor& dout,
                          const at::Tensor& lse, const at::Tensor& delta, const at::Tensor& group_ptr,
                          const at::Tensor& rows_e, const at::Tensor& offsets, const at::Tensor& skip_c, double scale_d,
                          int64_t L, at::Tensor& dq, at::Tensor& dks, at::Tensor& dvs) {
  const int64_t D = q.size(1), C = offsets.size(0) - 1, BH = q.size(0) / L;
  const T* qp = q.data_ptr<T>();
  const T* kp = ks.data_ptr<T>();
  const T* vp = vs.data_ptr<T>();
  const T* dop = dout.data_ptr<T>();
  const T* lsep = lse.data_ptr<T>();
  const T* dlp = delta.data_ptr<T>();
  const int64_t* gp = group_ptr.data_ptr<int64_t>();
  const int64_t* rows = rows_e.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const bool* skip = skip_c.data_ptr<bool>();
  T* dqp = dq.data_ptr<T>();
  T* dkp = dks.data_ptr<T>();
  T* dvp = dvs.data_ptr<T>();
  const T scale = static_cast<T>(scale_d);
  int64_t max_m = 1;
  for (int64_t c = 0; c < C; ++c) max_m = std::max(max_m, off[c + 1] - off[c]);
  const int64_t rows_per_tile = std::clamp<int64_t>((int64_t(1) << 17) / max_m, 16, 256);
  const int threads = std::max<int>(1, std::min<int64_t>(at::get_num_threads(), C));
  // per-thread dQ of the current head; zero on entry to every head (the reduction re-zeroes them)
  std::vector<std::vector<T>> dq_local(threads, std::vector<T>(L * D, T(0)));
  using V = Vectorized<T>;
  for (int64_t bh = 0; bh < BH; ++bh) {
#pragma omp parallel num_threads(threads)
    {
      std::vector<T>& dql = dq_local[omp_get_thread_num()];
      std::vector<T> q_buf(rows_per_tile * D), do_buf(rows_per_tile * D), p_buf(rows_per_tile * max_m),
          ds_buf(rows_per_tile * max_m), dq_buf(rows_per_tile * D);
#pragma omp for schedule(dynamic, 1)
      for (int64_t c = 0; c < C; ++c) {
        const int64_t g = bh * C + c;
        if (skip[c] || gp[g + 1] == gp[g]) continue;
        const int m = static_cast<int>(off[c + 1] - off[c]);
        const int d = static_cast<int>(D);
        const T* k_md = kp + (bh * L + off[c]) * D;
        const T* v_md = vp + (bh * L + off[c]) * D;
        T* dk_md = dkp + (bh * L + off[c]) * D;  // this thread is the only writer of chunk c's rows
        T* dv_md = dvp + (bh * L + off[c]) * D;
        for (int64_t b = gp[g]; b < gp[g + 1]; b += rows_per_tile) {
          const int n = static_cast<int>(std::min(gp[g + 1], b + rows_per_tile) - b);
          for (int i = 0; i < n; ++i) {
            std::copy_n(qp + rows[b + i] * D, D, q_buf.data() + int64_t(i) * D);
            std::copy_n(dop + rows[b + i] * D, D, do_buf.data() + int64_t(i) * D);
          }
          gemm('T', 'N', m, n, d, k_md, d, q_buf.data(), d, p_buf.data(), m);  // S = Q K^T (n x m)
          gemm('T', 'N', m, n, d, v_md, d, do_buf.data(), d, ds_buf.data(), m);  // dP = dO V^T (n x m)
          for (int i = 0; i < n; ++i) {
            const T l = lsep[rows[b + i]], dl = dlp[rows[b + i]];
            T* p = p_buf.data() + int64_t(i) * m;
            T* ds = ds_buf.data() + int64_t(i) * m;
            at::vec::map([scale, l](V s) { return vexp(s * V(scale) - V(l)); }, p, p, m);
            at::vec::map2([scale, dl](V pp, V dp) { return pp * (dp - V(dl)) * V(scale); }, ds, p, ds, m);
          }
          // dV (m x D) += P^T dO  <=>  column-major dV^T (D x m) += dO^T (D x n) * P (n x m)
          gemm('N', 'T', d, m, n, do_buf.data(), d, p_buf.data(), m, dv_md, d, T(1));
          // dK (m x D) += dS^T Q  <=>  column-major dK^T (D x m) += Q^T (D x n) * dS (n x m)
          gemm('N', 'T', d, m, n, q_buf.data(), d, ds_buf.data(), m, dk_md, d, T(1));
          // dQ (n x D) = dS K  <=>  column-major dQ^T (D x n) = K^T (D x m) * dS^T (m x n)
          gemm('N', 'N', d, n, m, k_md, d, ds_buf.data(), m, dq_buf.data(), d);
          for (int i = 0; i < n; ++i) {
            T* acc = dql.data() + (rows[b + i] - bh * L) * D;
            at::vec::map2([](V a, V x) { return a + x; }, acc, acc, dq_buf.data() + int64_t(i) * D, D);
          }
        }
      }
    }
    at::parallel_for(0, L, 1024, [&](int64_t i0, int64_t i1) {  // dq[bh] += sum of the thread buffers
      for (int t = 0; t < threads; ++t) {
        T* buf = dq_local[t].data();
        for (int64_t i = i0; i < i1; ++i)
          at::vec::map2([](V a, V x) { return a + x; }, dqp + (bh * L + i) * D, dqp + (bh * L + i) * D,
                        buf + i * D, D);
        std::fill(buf + i0 * D, buf + i1 * D, T(0));
      }
    });
  }
}

void check_2d(const at::Tensor& t, const char* name, at::ScalarType dt) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.is_contiguous() && t.scalar_type() == dt, name,
              " must be a contiguous 2-D CPU tensor of dtype ", dt, ", got ", t.sizes(), " ", t.scalar_type(),
              t.is_contiguous() ? "" : " (non-contiguous)");
}

}  // namespace

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

// Routed partial attention of every non-skipped group, merged in place into out (BH*L, D) and
// lse (BH*L,), which hold the anchor partials on entry and the MoC output and LSE on return.
void routed_attention(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs, const at::Tensor& group_ptr,
                      const at::Tensor& rows_e, const at::Tensor& offsets, const at::Tensor& skip_c,
                      const at::Tensor& row_bounds, double scale, int64_t L, at::Tensor out, at::Tensor lse) {
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "q must be float32 or float64, got ", dt);
  check_2d(q, "q", dt);
  check_2d(ks, "ks", dt);
  check_2d(vs, "vs", dt);
  check_2d(out, "out", dt);
  TORCH_CHECK(lse.is_contiguous() && lse.scalar_type() == dt && lse.numel() == out.size(0),
              "lse must be a contiguous ", dt, " vector with one entry per output row");
  TORCH_CHECK(skip_c.scalar_type() == at::kBool && skip_c.numel() == offsets.numel() - 1,
              "skip_c must be a bool tensor with one entry per chunk");
  TORCH_CHECK(row_bounds.dim() == 2 && row_bounds.scalar_type() == at::kLong && row_bounds.is_contiguous(),
              "row_bounds must be a contiguous (BH, P+1) int64 tensor");
  if (dt == at::kFloat)
    routed_attention_impl<float>(q, ks, vs, group_ptr, rows_e, offsets, skip_c, row_bounds, scale, L, out, lse);
  else
    routed_attention_impl<double>(q, ks, vs, group_ptr, rows_e, offsets, skip_c, row_bounds, scale, L, out, lse);
}

// Routed partials' share of the gradients, added in place to dq (BH*L, D) and to dks, dvs (BH*L, D,
// chunk-sorted like ks, vs). lse and delta are the final output's log-sum-exp and rowsum(dO * O).
void routed_backward(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs, const at::Tensor& dout,
                     const at::Tensor& lse, const at::Tensor& delta, const at::Tensor& group_ptr,
                     const at::Tensor& rows_e, const at::Tensor& offsets, const at::Tensor& skip_c, double scale,
                     int64_t L, at::Tensor dq, at::Tensor dks, at::Tensor dvs) {
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "q must be float32 or float64, got ", dt);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&q, &ks, &vs, &dout, &dq, &dks, &dvs})
    check_2d(*t, "q, ks, vs, dout, dq, dks, dvs", dt);
  TORCH_CHECK(lse.is_contiguous() && delta.is_contiguous() && lse.scalar_type() == dt && delta.scalar_type() == dt &&
                  lse.numel() == q.size(0) && delta.numel() == q.size(0),
              "lse and delta must be contiguous ", dt, " vectors with one entry per row");
  TORCH_CHECK(L > 0 && q.size(0) % L == 0, "q has ", q.size(0), " rows, not a multiple of L=", L);
  if (dt == at::kFloat)
    routed_backward_impl<float>(q, ks, vs, dout, lse, delta, group_ptr, rows_e, offsets, skip_c, scale, L, dq, dks, dvs);
  else
    routed_backward_impl<double>(q, ks, vs, dout, lse, delta, group_ptr, rows_e, offsets, skip_c, scale, L, dq, dks,
                                 dvs);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mocbench fused CPU kernels for Mixture of Contexts";
  m.def("routed_index", &routed_index, "CSR of routed (query, chunk) pairs by (bh, chunk)");
  m.def("routed_attention", &routed_attention, "routed partial attention merged in place into (out, lse)");
  m.def("routed_backward", &routed_backward, "routed partials' share of dq, dk, dv, added in place");
  m.def("cpu_capability", []() { return std::string(C10_STRINGIZE(CPU_CAPABILITY)); });
}
