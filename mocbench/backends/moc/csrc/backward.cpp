// Fused CPU MoC kernel, backward of the routed partials (moc impl "fused"; see forward.cpp for the design).
#include "moc_cpu.h"

namespace mocbench_cpu {

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
  const int threads = std::max(1, at::get_num_threads());
  // per-thread dQ of the current head; zero on entry to every head (the reduction re-zeroes them)
  std::vector<std::vector<T>> dq_local(threads, std::vector<T>(L * D, T(0)));
  using V = Vectorized<T>;
  std::vector<int64_t> order(C);
  for (int64_t bh = 0; bh < BH; ++bh) {
    // Chunks dealt to the threads' contiguous blocks by routed work, largest first, in snake order
    // (causal routing sends most queries to early chunks), so torch's static split balances.
    std::vector<int64_t> by_work(C);
    for (int64_t c = 0; c < C; ++c) by_work[c] = c;
    std::stable_sort(by_work.begin(), by_work.end(), [&](int64_t a, int64_t b) {
      return gp[bh * C + a + 1] - gp[bh * C + a] > gp[bh * C + b + 1] - gp[bh * C + b];
    });
    const int64_t T_ = std::min<int64_t>(threads, C), per = (C + T_ - 1) / T_;
    std::vector<std::vector<int64_t>> dealt(T_);
    for (int64_t i = 0; i < C; ++i) {
      const int64_t round = i / T_, pos = i % T_;
      dealt[round % 2 ? T_ - 1 - pos : pos].push_back(by_work[i]);
    }
    int64_t n_ord = 0;
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t c : dealt[t]) order[n_ord++] = c;
    at::parallel_for(0, C, per, [&](int64_t c0, int64_t c1) {
      std::vector<T>& dql = dq_local[at::get_thread_num()];
      std::vector<T> q_buf(rows_per_tile * D), do_buf(rows_per_tile * D), p_buf(rows_per_tile * max_m),
          ds_buf(rows_per_tile * max_m), dq_buf(rows_per_tile * D);
      for (int64_t t = c0; t < c1; ++t) {
        const int64_t c = order[t];
        const int64_t g = bh * C + c;
        const int m = static_cast<int>(off[c + 1] - off[c]);
        if (skip[c] || gp[g + 1] == gp[g] || m == 0) continue;
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
    });
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

template void routed_backward_impl<float>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, const at::Tensor&, double, int64_t, at::Tensor&, at::Tensor&,
                                          at::Tensor&);
template void routed_backward_impl<double>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, double, int64_t, at::Tensor&,
                                           at::Tensor&, at::Tensor&);

}  // namespace mocbench_cpu
