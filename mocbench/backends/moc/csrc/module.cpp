// Fused CPU MoC kernel: Python entry points. Every size, dtype and index range the kernels rely on
// is checked here (a plan reused with other tensors must raise, never read or write out of range);
// the kernels run without the GIL.
#include "moc_cpu.h"

namespace mocbench_cpu {

void check_2d(const at::Tensor& t, const char* name, at::ScalarType dt) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.is_contiguous() && t.scalar_type() == dt, name,
              " must be a contiguous 2-D CPU tensor of dtype ", dt, ", got ", t.sizes(), " ", t.scalar_type(),
              t.is_contiguous() ? "" : " (non-contiguous)");
}

static void check_index(const at::Tensor& t, const char* name, int64_t numel) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.is_contiguous() && t.scalar_type() == at::kLong, name,
              " must be a contiguous 1-D int64 CPU tensor, got ", t.sizes(), " ", t.scalar_type());
  TORCH_CHECK(numel < 0 || t.numel() == numel, name, " has ", t.numel(), " entries, expected ", numel);
}

void check_routed(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs, const at::Tensor& group_ptr,
                  const at::Tensor& rows_e, const at::Tensor& offsets, const at::Tensor& skip_c, int64_t L) {
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "q must be float32 or float64, got ", dt);
  check_2d(q, "q", dt);
  check_2d(ks, "ks", dt);
  check_2d(vs, "vs", dt);
  TORCH_CHECK(ks.sizes() == q.sizes() && vs.sizes() == q.sizes(), "ks ", ks.sizes(), " and vs ", vs.sizes(),
              " must have q's shape ", q.sizes());
  TORCH_CHECK(L > 0 && q.size(0) % L == 0, "q has ", q.size(0), " rows, not a multiple of L=", L);
  const int64_t BH = q.size(0) / L;
  check_index(offsets, "offsets", -1);
  const int64_t C = offsets.numel() - 1;
  TORCH_CHECK(C >= 1, "offsets must have at least 2 entries");
  const int64_t* off = offsets.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[C] == L, "offsets must run from 0 to L=", L, ", got ", off[0], "..", off[C]);
  for (int64_t c = 0; c < C; ++c) TORCH_CHECK(off[c] <= off[c + 1], "offsets must not decrease (chunk ", c, ")");
  TORCH_CHECK(skip_c.dim() == 1 && skip_c.is_contiguous() && skip_c.scalar_type() == at::kBool && skip_c.numel() == C,
              "skip_c must be a contiguous bool tensor with one entry per chunk (", C, ")");
  check_index(group_ptr, "group_ptr", BH * C + 1);
  check_index(rows_e, "rows_e", -1);
  const int64_t* gp = group_ptr.data_ptr<int64_t>();
  const int64_t* rows = rows_e.data_ptr<int64_t>();
  TORCH_CHECK(gp[0] == 0 && gp[BH * C] == rows_e.numel(), "group_ptr must run from 0 to rows_e's length ",
              rows_e.numel(), " (a plan prepared for other tensors?), got ", gp[0], "..", gp[BH * C]);
  for (int64_t g = 0; g < BH * C; ++g) {
    TORCH_CHECK(gp[g] <= gp[g + 1], "group_ptr must not decrease (group ", g, ")");
    const int64_t lo = (g / C) * L, hi = lo + L;
    for (int64_t e = gp[g]; e < gp[g + 1]; ++e)
      TORCH_CHECK(rows[e] >= lo && rows[e] < hi && (e == gp[g] || rows[e - 1] < rows[e]), "rows_e[", e, "] = ",
                  rows[e], " is not an ascending row of head ", g / C, " (rows ", lo, "..", hi - 1, ")");
  }
}

// Anchor partials of one bucket of equal-shaped groups into out (BH*L, D) and lse (BH*L,).
void anchor_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_idx,
                      const at::Tensor& k_idx, double scale, int64_t L, at::Tensor out, at::Tensor lse) {
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "q must be float32 or float64, got ", dt);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&q, &k, &v, &out}) {
    check_2d(*t, "q, k, v, out", dt);
    TORCH_CHECK(t->sizes() == q.sizes(), "q, k, v, out must share a shape, got ", t->sizes(), " vs ", q.sizes());
  }
  TORCH_CHECK(L > 0 && q.size(0) % L == 0, "q has ", q.size(0), " rows, not a multiple of L=", L);
  TORCH_CHECK(lse.dim() == 1 && lse.is_contiguous() && lse.scalar_type() == dt && lse.numel() == q.size(0),
              "lse must be a contiguous ", dt, " vector with one entry per row");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&q_idx, &k_idx}) {
    TORCH_CHECK(t->dim() == 2 && t->is_contiguous() && t->scalar_type() == at::kLong && t->size(0) == q_idx.size(0),
                "q_idx and k_idx must be contiguous (G, n) int64 tensors with the same G");
    const int64_t* p = t->data_ptr<int64_t>();
    for (int64_t e = 0; e < t->numel(); ++e)
      TORCH_CHECK(p[e] >= 0 && p[e] < L, "anchor index ", p[e], " is outside 0..", L - 1);
  }
  TORCH_CHECK(k_idx.size(1) > 0, "an anchor group must have keys");
  if (dt == at::kFloat)
    anchor_attention_impl<float>(q, k, v, q_idx, k_idx, scale, L, out, lse);
  else
    anchor_attention_impl<double>(q, k, v, q_idx, k_idx, scale, L, out, lse);
}

// Routed partial attention of every non-skipped group, merged in place into out (BH*L, D) and
// lse (BH*L,), which hold the anchor partials on entry and the MoC output and LSE on return.
void routed_attention(const at::Tensor& q, const at::Tensor& ks, const at::Tensor& vs, const at::Tensor& group_ptr,
                      const at::Tensor& rows_e, const at::Tensor& offsets, const at::Tensor& skip_c,
                      const at::Tensor& row_bounds, double scale, int64_t L, at::Tensor out, at::Tensor lse) {
  check_routed(q, ks, vs, group_ptr, rows_e, offsets, skip_c, L);
  const auto dt = q.scalar_type();
  check_2d(out, "out", dt);
  TORCH_CHECK(out.sizes() == q.sizes(), "out ", out.sizes(), " must have q's shape ", q.sizes());
  TORCH_CHECK(lse.dim() == 1 && lse.is_contiguous() && lse.scalar_type() == dt && lse.numel() == q.size(0),
              "lse must be a contiguous ", dt, " vector with one entry per row");
  const int64_t BH = q.size(0) / L;
  TORCH_CHECK(row_bounds.dim() == 2 && row_bounds.scalar_type() == at::kLong && row_bounds.is_contiguous() &&
                  row_bounds.size(0) == BH && row_bounds.size(1) >= 2,
              "row_bounds must be a contiguous (", BH, ", P+1) int64 tensor, got ", row_bounds.sizes());
  const int64_t P = row_bounds.size(1) - 1;
  const int64_t* rb = row_bounds.data_ptr<int64_t>();
  for (int64_t bh = 0; bh < BH; ++bh) {
    TORCH_CHECK(rb[bh * (P + 1)] == bh * L && rb[bh * (P + 1) + P] == (bh + 1) * L,
                "row_bounds of head ", bh, " must run from ", bh * L, " to ", (bh + 1) * L);
    for (int64_t p = 0; p < P; ++p)
      TORCH_CHECK(rb[bh * (P + 1) + p] <= rb[bh * (P + 1) + p + 1], "row_bounds must not decrease");
  }
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
  check_routed(q, ks, vs, group_ptr, rows_e, offsets, skip_c, L);
  const auto dt = q.scalar_type();
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&dout, &dq, &dks, &dvs}) {
    check_2d(*t, "dout, dq, dks, dvs", dt);
    TORCH_CHECK(t->sizes() == q.sizes(), "dout, dq, dks, dvs must have q's shape ", q.sizes(), ", got ", t->sizes());
  }
  TORCH_CHECK(lse.dim() == 1 && delta.dim() == 1 && lse.is_contiguous() && delta.is_contiguous() &&
                  lse.scalar_type() == dt && delta.scalar_type() == dt && lse.numel() == q.size(0) &&
                  delta.numel() == q.size(0),
              "lse and delta must be contiguous ", dt, " vectors with one entry per row");
  if (dt == at::kFloat)
    routed_backward_impl<float>(q, ks, vs, dout, lse, delta, group_ptr, rows_e, offsets, skip_c, scale, L, dq, dks, dvs);
  else
    routed_backward_impl<double>(q, ks, vs, dout, lse, delta, group_ptr, rows_e, offsets, skip_c, scale, L, dq, dks,
                                 dvs);
}

}  // namespace mocbench_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace mc = mocbench_cpu;
  using release = pybind11::call_guard<pybind11::gil_scoped_release>;
  m.doc() = "mocbench fused CPU kernels for Mixture of Contexts";
  m.def("routed_index", &mc::routed_index, "CSR of routed (query, chunk) pairs by (bh, chunk) + work ranges",
        release());
  m.def("anchor_attention", &mc::anchor_attention, "anchor partials of one bucket into (out, lse)", release());
  m.def("routed_attention", &mc::routed_attention, "routed partial attention merged in place into (out, lse)",
        release());
  m.def("routed_backward", &mc::routed_backward, "routed partials' share of dq, dk, dv, added in place", release());
  m.def("cpu_capability", []() { return std::string(C10_STRINGIZE(CPU_CAPABILITY)); });
}
