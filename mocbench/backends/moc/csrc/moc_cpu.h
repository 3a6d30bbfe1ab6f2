// Shared by the fused CPU MoC kernel's translation units: instruction-set selection for at::vec,
// the BLAS entry points, a vectorised softmax row, and the kernels' declarations.
#pragma once

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

namespace mocbench_cpu {

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

void check_2d(const at::Tensor& t, const char* name, at::ScalarType dt);
// The routed CSR against the tensors: sizes, ranges, dtypes (user-reachable through a mismatched plan).
void check_routed(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs, const at::Tensor& group_ptr,
                  const at::Tensor& rows_e, const at::Tensor& offsets, const at::Tensor& skip_c, int64_t L);

template <typename T>
void routed_attention_impl(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs,
                           const at::Tensor& group_ptr, const at::Tensor& rows_e, const at::Tensor& offsets,
                           const at::Tensor& skip_c, const at::Tensor& row_bounds, double scale_d, int64_t L,
                           at::Tensor& out, at::Tensor& lse);
template <typename T>
void anchor_attention_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_idx,
                           const at::Tensor& k_idx, double scale_d, int64_t L, at::Tensor& out, at::Tensor& lse);
template <typename T>
void routed_backward_impl(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs, const at::Tensor& dout,
                          const at::Tensor& lse, const at::Tensor& delta, const at::Tensor& group_ptr,
                          const at::Tensor& rows_e, const at::Tensor& offsets, const at::Tensor& skip_c, double scale_d,
                          int64_t L, at::Tensor& dq, at::Tensor& dks, at::Tensor& dvs);
std::vector<at::Tensor> routed_index(const at::Tensor& selected, int64_t num_chunks, int64_t parts);

}  // namespace mocbench_cpu
