// Fused CPU kernels for Mixture of Contexts routed attention (moc impl "fused").
//
// The pure-PyTorch "gather" impl materialises, for every routed (query, chunk) pair, a copy of
// the query, a padded batch for the flash kernel, the partial output, a concatenation and a
// second gather for the merge: at 32k tokens and top_k=16 that is >1 GB of memory traffic for
// ~0.25 s of arithmetic. Here each (batch*head, chunk) group is cut into tiles of routed queries;
// a tile's queries are gathered into a thread-local buffer (cache resident), attend the chunk's
// keys with two BLAS calls and a vectorised softmax, and the normalised partial output and its
// log-sum-exp are written once, straight into the query's slot (row-major: row * K + slot).
// merge_slots() then folds every row's slots into its anchor partial with the log-sum-exp
// trick, exactly, in one pass.
//
// Exactness: every score is computed once, in the input dtype (float32 or float64), with the
// row max subtracted before exp; partial outputs are normalised, merges are weighted by
// exp(lse - max), as in flash attention. Groups of chunks flagged in `skip_c` (chunks that are
// only partly un-anchored for some query) are left to the caller.
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

// Column-major BLAS C(m x n) = op(A) op(B); see the call sites for the row-major reading.
inline void gemm(char ta, char tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                 int ldc) {
  const float one = 1.f, zero = 0.f;
  sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &zero, c, &ldc);
}
inline void gemm(char ta, char tb, int m, int n, int k, const double* a, int lda, const double* b, int ldb,
                 double* c, int ldc) {
  const double one = 1.0, zero = 0.0;
  dgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &zero, c, &ldc);
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

struct Tile {
  int64_t group, begin, end;  // pairs [begin, end) of `group`
};

template <typename T>
void routed_attention_impl(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs,
                           const at::Tensor& group_ptr, const at::Tensor& rows_e, const at::Tensor& slot_e,
                           const at::Tensor& offsets, const at::Tensor& skip_c, double scale_d, int64_t L,
                           at::Tensor& o_slots, at::Tensor& lse_slots) {
  const int64_t D = q.size(1), C = offsets.size(0) - 1, G = group_ptr.size(0) - 1;
  const T* qp = q.data_ptr<T>();
  const T* kp = ks.data_ptr<T>();
  const T* vp = vs.data_ptr<T>();
  const int64_t* gp = group_ptr.data_ptr<int64_t>();
  const int64_t* rows = rows_e.data_ptr<int64_t>();
  const int64_t* slots = slot_e.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const bool* skip = skip_c.data_ptr<bool>();
  T* op = o_slots.data_ptr<T>();
  T* lp = lse_slots.data_ptr<T>();
  const T scale = static_cast<T>(scale_d);

  // Tiles: at most `rows_per_tile` routed queries of one group, so the score tile stays ~1 MB.
  int64_t max_m = 1;
  for (int64_t c = 0; c < C; ++c) max_m = std::max(max_m, off[c + 1] - off[c]);
  const int64_t rows_per_tile = std::clamp<int64_t>((int64_t(1) << 18) / max_m, 16, 256);
  std::vector<Tile> tiles;
  for (int64_t g = 0; g < G; ++g) {
    if (skip[g % C]) continue;
    for (int64_t b = gp[g]; b < gp[g + 1]; b += rows_per_tile) tiles.push_back({g, b, std::min(gp[g + 1], b + rows_per_tile)});
  }
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> q_buf(rows_per_tile * D), s_buf(rows_per_tile * max_m), o_buf(rows_per_tile * D);
    std::vector<std::pair<T, T>> stats(rows_per_tile);  // per row: (max, sum) of the scaled scores
    for (int64_t t = t0; t < t1; ++t) {
      const Tile& tile = tiles[t];
      const int64_t bh = tile.group / C, c = tile.group % C;
      const int n = static_cast<int>(tile.end - tile.begin);
      const int m = static_cast<int>(off[c + 1] - off[c]);
      const int d = static_cast<int>(D);
      const T* k_md = kp + (bh * L + off[c]) * D;  // the chunk's keys: contiguous (chunk-sorted)
      const T* v_md = vp + (bh * L + off[c]) * D;
      for (int i = 0; i < n; ++i)  // gather the tile's queries, pre-scaled
        at::vec::map([scale](Vectorized<T> x) { return x * Vectorized<T>(scale); }, q_buf.data() + int64_t(i) * D,
                     qp + rows[tile.begin + i] * D, D);
      // S (n x m, row-major) = Q K^T  <=>  column-major S^T (m x n) = K (m x D)^T-view * Q^T.
      gemm('T', 'N', m, n, d, k_md, d, q_buf.data(), d, s_buf.data(), m);
      for (int i = 0; i < n; ++i) stats[i] = softmax_row<T>(s_buf.data() + int64_t(i) * m, m);
      // O (n x D, row-major) = P V  <=>  column-major O^T (D x n) = V^T (D x m) * P^T (m x n).
      gemm('N', 'N', d, n, m, v_md, d, s_buf.data(), m, o_buf.data(), d);
      for (int i = 0; i < n; ++i) {
        const int64_t slot = slots[tile.begin + i];
        const T inv = T(1) / stats[i].second;
        at::vec::map([inv](Vectorized<T> x) { return x * Vectorized<T>(inv); }, op + slot * D,
                     o_buf.data() + int64_t(i) * D, D);
        lp[slot] = stats[i].first + std::log(stats[i].second);
      }
    }
  });
}

template <typename T>
void merge_slots_impl(at::Tensor& out, at::Tensor& lse, const at::Tensor& o_slots, const at::Tensor& lse_slots,
                      int64_t K) {
  const int64_t R = out.size(0), D = out.size(1);
  T* outp = out.data_ptr<T>();
  T* lsep = lse.data_ptr<T>();
  const T* op = o_slots.data_ptr<T>();
  const T* lp = lse_slots.data_ptr<T>();
  const T neg_inf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, R, 256, [&](int64_t r0, int64_t r1) {
    using V = Vectorized<T>;
    for (int64_t r = r0; r < r1; ++r) {
      const T* l = lp + r * K;
      T mx = lsep[r];
      for (int64_t k = 0; k < K; ++k) mx = std::max(mx, l[k]);
      if (mx == neg_inf) continue;  // nothing attended (never produced by MoC routing)
      T* o = outp + r * D;
      const T wa = std::exp(lsep[r] - mx);
      T sum = wa;
      at::vec::map([wa](V x) { return x * V(wa); }, o, o, D);
      for (int64_t k = 0; k < K; ++k) {
        if (l[k] == neg_inf) continue;  // empty slot
        const T w = std::exp(l[k] - mx);
        sum += w;
        at::vec::map2([w](V acc, V x) { return acc + x * V(w); }, o, o, op + (r * K + k) * D, D);
      }
      const T inv = T(1) / sum;
      at::vec::map([inv](V x) { return x * V(inv); }, o, o, D);
      lsep[r] = mx + std::log(sum);
    }
  });
}

void check_2d(const at::Tensor& t, const char* name, at::ScalarType dt) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.is_contiguous() && t.scalar_type() == dt, name,
              " must be a contiguous 2-D CPU tensor of dtype ", dt, ", got ", t.sizes(), " ", t.scalar_type(),
              t.is_contiguous() ? "" : " (non-contiguous)");
}

}  // namespace

// Routing (B*H, L, K) -> CSR by (bh, chunk): group_ptr (BH*C+1), rows_e (E,) = bh*L + i (ascending
// within a group), slot_e (E,) = (bh*L + i)*K + k. -1 entries and repeated chunks in a row are dropped.
std::vector<at::Tensor> routed_index(const at::Tensor& selected, int64_t num_chunks) {
  TORCH_CHECK(selected.device().is_cpu() && selected.dim() == 3 && selected.scalar_type() == at::kLong,
              "selected must be a (B*H, L, K) int64 CPU tensor, got ", selected.sizes(), " ", selected.scalar_type());
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
  at::Tensor rows_e = at::empty({E}, at::kLong), slot_e = at::empty({E}, at::kLong);
  std::vector<int64_t> fill(group_ptr.data_ptr<int64_t>(), group_ptr.data_ptr<int64_t>() + BH * C);
  int64_t* rp = rows_e.data_ptr<int64_t>();
  int64_t* sp = slot_e.data_ptr<int64_t>();
  for (int64_t r = 0; r < BH * L; ++r) {
    const int64_t bh = r / L;
    for (int64_t k = 0; k < K; ++k) {
      if (!keep[r * K + k]) continue;
      const int64_t pos = fill[bh * C + s[r * K + k]]++;
      rp[pos] = r;
      sp[pos] = r * K + k;
    }
  }
  return {group_ptr, rows_e, slot_e};
}

// Partial attention of every routed (query, chunk) pair of the non-skipped groups, written into
// o_slots (BH*L*K, D) and lse_slots (BH*L*K,) at slot_e. Other slots are left untouched.
void routed_attention(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs, const at::Tensor& group_ptr,
                      const at::Tensor& rows_e, const at::Tensor& slot_e, const at::Tensor& offsets,
                      const at::Tensor& skip_c, double scale, int64_t L, at::Tensor o_slots, at::Tensor lse_slots) {
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "q must be float32 or float64, got ", dt);
  check_2d(q, "q", dt);
  check_2d(ks, "ks", dt);
  check_2d(vs, "vs", dt);
  check_2d(o_slots, "o_slots", dt);
  TORCH_CHECK(lse_slots.is_contiguous() && lse_slots.scalar_type() == dt, "lse_slots must be contiguous ", dt);
  TORCH_CHECK(skip_c.scalar_type() == at::kBool && skip_c.numel() == offsets.numel() - 1,
              "skip_c must be a bool tensor with one entry per chunk");
  if (dt == at::kFloat)
    routed_attention_impl<float>(q, ks, vs, group_ptr, rows_e, slot_e, offsets, skip_c, scale, L, o_slots, lse_slots);
  else
    routed_attention_impl<double>(q, ks, vs, group_ptr, rows_e, slot_e, offsets, skip_c, scale, L, o_slots, lse_slots);
}

// out (R, D), lse (R,): anchor partial, merged in place with the K slots of every row.
void merge_slots(at::Tensor out, at::Tensor lse, const at::Tensor& o_slots, const at::Tensor& lse_slots, int64_t K) {
  const auto dt = out.scalar_type();
  check_2d(out, "out", dt);
  check_2d(o_slots, "o_slots", dt);
  TORCH_CHECK(o_slots.size(0) == out.size(0) * K && lse.numel() == out.size(0) && lse_slots.numel() == o_slots.size(0),
              "merge_slots: shapes disagree");
  if (dt == at::kFloat)
    merge_slots_impl<float>(out, lse, o_slots, lse_slots, K);
  else
    merge_slots_impl<double>(out, lse, o_slots, lse_slots, K);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mocbench fused CPU kernels for Mixture of Contexts";
  m.def("routed_index", &routed_index, "CSR of routed (query, chunk) pairs by (bh, chunk)");
  m.def("routed_attention", &routed_attention, "partial attention of routed pairs into slots");
  m.def("merge_slots", &merge_slots, "exact log-sum-exp merge of anchor partials with routed slots");
  m.def("cpu_capability", []() { return std::string(C10_STRINGIZE(CPU_CAPABILITY)); });
}
