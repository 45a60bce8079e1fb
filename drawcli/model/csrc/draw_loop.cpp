// DRAW's training time loop (eq 3-8, 17-29) and its backpropagation through time, in C++.
//
// The same computation as drawcli/model/fused.py's loop(save=True) and loop_backward for the
// attention model with one channel, into the same buffers (see native.py's workspace), so that
// Python's weight-gradient products and everything after them are shared. What changes:
//   * no Python and one dispatcher call per product: the per-step elementwise work (LSTM cells,
//     filterbanks, read and write) runs as plain loops that the compiler vectorises;
//   * the batch is cut into one chunk per thread and each thread runs the whole recurrence of
//     its chunk on its own core (the products then run single-threaded on half the rows, which
//     costs nothing: a (64 x K) product takes half the time of a (128 x K) one);
//   * with bfloat16 products (lowp), every product input is written in bfloat16 once, when it
//     is made, into buffers that the weight-gradient products read again: no bulk casts.
// native.py compiles this file once per machine; tests/test_native.py checks it against the
// Python engine (float64 to 1e-10, float32 and bfloat16 to their tolerances).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// The inner loops below run over a few dozen contiguous values (an image row, a filter row): no
// two of their pointers overlap, and saying so spares gcc the run-time overlap checks.
#define IVDEP _Pragma("GCC ivdep")

namespace {

using at::Tensor;
using BF = c10::BFloat16;

// Clamped so that exp never overflows (this file is compiled with -ffast-math).
template <typename T>
inline T sigm(T x) {
  x = std::min(std::max(x, T(-80)), T(80));
  return T(1) / (T(1) + std::exp(-x));
}

// tanh(x) = 2 sigmoid(2x) - 1, as the Python engine computes it.
template <typename T>
inline T tanh2(T x) {
  x = std::min(std::max(x, T(-40)), T(40));
  return T(2) / (T(1) + std::exp(T(-2) * x)) - T(1);
}

// bfloat16 <-> float by bit arithmetic, rounding to nearest even as c10::BFloat16 does (NaN
// stays NaN): unlike c10's conversions, these loops vectorise.
inline float from_lp(const BF& v) {
  uint32_t u = static_cast<uint32_t>(reinterpret_cast<const uint16_t&>(v)) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t lp_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

template <typename T>
inline void to_lp(BF* dst, const T* src, int64_t n) {
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  IVDEP
  for (int64_t k = 0; k < n; ++k) d[k] = lp_bits(static_cast<float>(src[k]));
}

template <typename T>
inline T as(const T& v) { return v; }

template <typename T>
inline T as(const BF& v) { return static_cast<T>(from_lp(v)); }

// x @ W^T with W packed once by oneDNN (torch.ops.mkldnn._reorder_linear_weight, in Python): the
// op PyTorch's compiler uses for CPU linear layers, 5-40% faster than at::mm at these shapes.
Tensor packed_linear(const Tensor& x, const Tensor& packed) {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  std::vector<c10::IValue> stack{x, packed, c10::IValue(), std::string("none"), c10::List<std::optional<at::Scalar>>(),
                                 std::string("")};
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

struct Dims {
  int64_t T, B, H, W, L, hd, Z, n, nw, kw, R, ke, kd, hw;
};

// ---------------------------------------------------------------- filterbanks (eq 19-26)
// F_X (a = 0, W columns) and F_Y (a = 1, H columns) of one window p = (g_X, g_Y, delta,
// sigma^2, gamma) into f (2, N, L), and grid - mu into d; padding columns are never touched.
template <typename T>
void filters(const T* p, const T* off, const T* grid, int64_t N, int64_t L, int64_t W, int64_t H, T eps,
             T* f, T* d) {
  const T scale = T(-0.5) / p[3];
  for (int64_t a = 0; a < 2; ++a) {
    const int64_t len = a == 0 ? W : H;
    const T* ga = grid + a * L;
    for (int64_t i = 0; i < N; ++i) {
      const T mu = p[a] + off[i] * p[2];
      T* fr = f + (a * N + i) * L;
      T* dr = d + (a * N + i) * L;
      T s = 0;
      IVDEP
      for (int64_t l = 0; l < len; ++l) {
        const T dl = ga[l] - mu;
        dr[l] = dl;
        const T e = std::exp(dl * dl * scale);
        fr[l] = e;
        s += e;
      }
      const T inv = T(1) / (s + eps);
      IVDEP
      for (int64_t l = 0; l < len; ++l) fr[l] *= inv;
    }
  }
}

// dL/d(g_X, g_Y, log delta, log sigma^2) into out[0..3] from dL/dF in df (2, N, L).
template <typename T>
void filters_backward(const T* df, const T* f, const T* d, const T* p, const T* off, int64_t N, int64_t L,
                      int64_t W, int64_t H, T* out) {
  T smu[2] = {0, 0};
  T sdelta = 0, ssig = 0;
  for (int64_t a = 0; a < 2; ++a) {
    const int64_t len = a == 0 ? W : H;
    for (int64_t i = 0; i < N; ++i) {
      const int64_t o = (a * N + i) * L;
      const T *g = df + o, *fr = f + o, *dr = d + o;
      T z = 0;
      IVDEP
      for (int64_t l = 0; l < len; ++l) z += g[l] * fr[l];
      T sm = 0, ss = 0;
      IVDEP
      for (int64_t l = 0; l < len; ++l) {
        const T ed = (g[l] - z) * fr[l] * dr[l];  // dL/d(exponent) times (a - mu)
        sm += ed;
        ss += ed * dr[l];
      }
      smu[a] += sm;
      sdelta += off[i] * sm;
      ssig += ss;
    }
  }
  const T inv = T(1) / p[3];
  out[0] = smu[0] * inv;
  out[1] = smu[1] * inv;
  out[2] = sdelta * inv * p[2];
  out[3] = T(0.5) * ssig * inv;
}

// ---------------------------------------------------------------- LSTM cell (eq 5, 7)
// Gates in the order (i, f, o, g); pre may alias a.
template <typename T, typename P>
void lstm_forward(const P* pre, T* a, const T* cp, T* c, T* tc, T* h, int64_t hd) {
  IVDEP
  for (int64_t j = 0; j < 3 * hd; ++j) a[j] = sigm<T>(as<T>(pre[j]));
  IVDEP
  for (int64_t j = 3 * hd; j < 4 * hd; ++j) a[j] = tanh2<T>(as<T>(pre[j]));
IVDEP
  for (int64_t j = 0; j < hd; ++j) {
    const T cj = a[hd + j] * cp[j] + a[j] * a[3 * hd + j];
    c[j] = cj;
    const T tj = tanh2<T>(cj);
    tc[j] = tj;
    h[j] = a[2 * hd + j] * tj;
  }
}

// Overwrites the activated gates a with dL/d(pre-activations); dc: dL/dc_t in, dL/dc_{t-1} out.
template <typename T>
void lstm_backward(T* a, const T* dh, T* dc, const T* cp, const T* tc, int64_t hd) {
IVDEP
  for (int64_t j = 0; j < hd; ++j) {
    const T i = a[j], f = a[hd + j], o = a[2 * hd + j], g = a[3 * hd + j], t = tc[j];
    const T dcj = dc[j] + dh[j] * o * (T(1) - t * t);
    const T di = dcj * g, df = dcj * cp[j], d_o = dh[j] * t, dg = dcj * i;
    dc[j] = dcj * f;
    a[j] = di * i * (T(1) - i);
    a[hd + j] = df * f * (T(1) - f);
    a[2 * hd + j] = d_o * o * (T(1) - o);
    a[3 * hd + j] = dg * (T(1) - g * g);
  }
}

// ---------------------------------------------------------------- the loop
template <typename T>
struct Loop {
  Dims D;
  bool lowp;
  // inputs
  const T *x, *eps, *grid, *roff, *woff;
  Tensor enc_w, dec_w, q_w, q_b, heads_w, heads_b, enc_w_lp, dec_w_lp;
  Tensor enc_pk, dec_pk, enc_pk_t, dec_pk_t;  // packed weights (or undefined): forward, and input gradients
  // buffers (see native.py's workspace for the layouts)
  Tensor enc_in, dec_in, mu_ls, heads, g_enc, g_dec, enc_lp, dec_lp, g_enc_lp, g_dec_lp;
  T *p_enc_in, *p_dec_in, *c_enc, *c_dec, *p_g_enc, *p_g_dec, *tc_enc, *tc_dec, *se, *p_heads, *p_mu_ls,
      *xhat, *f_r, *d_r, *f_w, *d_w, *left, *u, *wdiv, *canvas, *lz;
  BF *p_enc_lp, *p_dec_lp, *p_g_enc_lp, *p_g_dec_lp;
  T feps;

  T* row(T* base, int64_t t, int64_t b, int64_t width) const { return base + (t * D.B + b) * width; }
  BF* row(BF* base, int64_t t, int64_t b, int64_t width) const { return base + (t * D.B + b) * width; }

  // One encoder or decoder step for rows [b0, b0 + nb): the product, then the cell.
  void cell(int64_t t, int64_t b0, int64_t nb, const Tensor& in, const Tensor& in_lp, const Tensor& w,
            const Tensor& w_lp, const Tensor& pk, Tensor& pre_lp, const Tensor& gates, T* g, T* c, T* tc,
            T* h_first, int64_t h_stride, int64_t h_off) {
    const int64_t hd = D.hd;
    if (pk.defined() && !lowp) {
      Tensor pre_t = packed_linear(in[t].narrow(0, b0, nb), pk);
      const T* pre = pre_t.data_ptr<T>();
      for (int64_t b = 0; b < nb; ++b)
        lstm_forward<T, T>(pre + b * 4 * hd, row(g, t, b0 + b, 4 * hd), row(c, t, b0 + b, hd),
                           row(c, t + 1, b0 + b, hd), row(tc, t, b0 + b, hd), h_first + (b0 + b) * h_stride + h_off,
                           hd);
    } else if (lowp) {
      if (pk.defined())
        pre_lp = packed_linear(in_lp[t].narrow(0, b0, nb), pk);
      else
        at::mm_out(pre_lp, in_lp[t].narrow(0, b0, nb), w_lp.t());
      const BF* pre = pre_lp.data_ptr<BF>();
      for (int64_t b = 0; b < nb; ++b)
        lstm_forward<T, BF>(pre + b * 4 * hd, row(g, t, b0 + b, 4 * hd), row(c, t, b0 + b, hd),
                            row(c, t + 1, b0 + b, hd), row(tc, t, b0 + b, hd),
                            h_first + (b0 + b) * h_stride + h_off, hd);
    } else {
      Tensor pre = gates[t].narrow(0, b0, nb);
      at::mm_out(pre, in[t].narrow(0, b0, nb), w.t());
      for (int64_t b = 0; b < nb; ++b) {
        T* a = row(g, t, b0 + b, 4 * hd);
        lstm_forward<T, T>(a, a, row(c, t, b0 + b, hd), row(c, t + 1, b0 + b, hd), row(tc, t, b0 + b, hd),
                           h_first + (b0 + b) * h_stride + h_off, hd);
      }
    }
  }

  void forward_chunk(int64_t b0, int64_t nb) {
    const Dims& d = D;
    const int64_t HW = d.H * d.W, L = d.L, R = d.R, hd = d.hd, Z = d.Z, n = d.n, nw = d.nw, kw = d.kw;
    Tensor pre_lp = lowp ? at::empty({nb, 4 * hd}, enc_in.options().dtype(at::kBFloat16)) : Tensor();
    for (int64_t t = 0; t < d.T; ++t) {
      const bool next_lp = lowp && t + 1 < d.T;
      // eq 3 and the read, eq 17, 27 (window from h^dec_{t-1})
      for (int64_t b = b0; b < b0 + nb; ++b) {
        const T* xb = x + b * HW;
        const T* cb = canvas + b * HW;
        T* xh = row(xhat, t, b, HW);
        IVDEP
        for (int64_t k = 0; k < HW; ++k) xh[k] = xb[k] - sigm<T>(cb[k]);
        const T* p = row(p_heads, t, b, d.hw) + kw + 5;
        T* f = row(f_r, t, b, 2 * n * L);
        filters<T>(p, roff, grid, n, L, d.W, d.H, feps, f, row(d_r, t, b, 2 * n * L));
        const T *fx = f, *fy = f + n * L;
        T* lf = row(left, t, b, 2 * n * d.W);
        for (int64_t i = 0; i < n; ++i) {
          T* lx = lf + i * 2 * d.W;
          T* lh = lx + d.W;
          std::fill(lx, lx + 2 * d.W, T(0));
          for (int64_t h = 0; h < d.H; ++h) {
            const T cf = fy[i * L + h];
            const T *xr = xb + h * d.W, *hr = xh + h * d.W;
            IVDEP
            for (int64_t w = 0; w < d.W; ++w) {
              lx[w] += cf * xr[w];
              lh[w] += cf * hr[w];
            }
          }
        }
        T* r = row(p_enc_in, t, b, d.ke);
        for (int64_t q = 0; q < 2 * n; ++q) {
          const T* lq = lf + q * d.W;
          for (int64_t j = 0; j < n; ++j) {
            T s = 0;
            IVDEP
            for (int64_t w = 0; w < d.W; ++w) s += lq[w] * fx[j * L + w];
            r[q * n + j] = p[4] * s;
          }
        }
        if (lowp) to_lp(row(p_enc_lp, t, b, d.ke), r, R);
      }
      // eq 5: the encoder
      cell(t, b0, nb, enc_in, enc_lp, enc_w, enc_w_lp, enc_pk, pre_lp, g_enc, p_g_enc, c_enc, tc_enc,
           p_enc_in + (t + 1) * d.B * d.ke, d.ke, R + hd);
      if (next_lp)
        for (int64_t b = b0; b < b0 + nb; ++b)
          to_lp(row(p_enc_lp, t + 1, b, d.ke) + R + hd, row(p_enc_in, t + 1, b, d.ke) + R + hd, hd);
      // eq 1-2, 6: q and z
      Tensor mu_rows = mu_ls[t].narrow(0, b0, nb);
      at::addmm_out(mu_rows, q_b, enc_in[t + 1].narrow(0, b0, nb).narrow(1, R + hd, hd), q_w.t());
      for (int64_t b = b0; b < b0 + nb; ++b) {
        const T* ml = row(p_mu_ls, t, b, 2 * Z);
        const T* e = row(const_cast<T*>(eps), t, b, Z);
        T* s = row(se, t, b, Z);
        T* z = row(p_dec_in, t, b, d.kd);
        T kl = 0;  // eq 11 per step: 1/2 sum_z (mu^2 + sigma^2 - log sigma^2 - 1)
        IVDEP
        for (int64_t k = 0; k < Z; ++k) {
          const T sig = std::exp(ml[Z + k]);
          s[k] = sig * e[k];
          z[k] = ml[k] + s[k];
          kl += ml[k] * ml[k] + sig * sig - T(2) * ml[Z + k] - T(1);
        }
        lz[b] += T(0.5) * kl;
        if (lowp) to_lp(row(p_dec_lp, t, b, d.kd), z, Z);
      }
      // eq 7: the decoder; h^dec_t goes to step t+1's encoder and decoder inputs
      cell(t, b0, nb, dec_in, dec_lp, dec_w, dec_w_lp, dec_pk, pre_lp, g_dec, p_g_dec, c_dec, tc_dec,
           p_enc_in + (t + 1) * d.B * d.ke, d.ke, R);
      for (int64_t b = b0; b < b0 + nb; ++b) {
        const T* h = row(p_enc_in, t + 1, b, d.ke) + R;
        std::copy(h, h + hd, row(p_dec_in, t + 1, b, d.kd) + Z);
        if (next_lp) {
          to_lp(row(p_enc_lp, t + 1, b, d.ke) + R, h, hd);
          to_lp(row(p_dec_lp, t + 1, b, d.kd) + Z, h, hd);
        }
      }
      // eq 18/28, 21: the heads over h^dec_t, then the write, eq 8, 29
      Tensor head_rows = heads[t + 1].narrow(0, b0, nb);
      at::addmm_out(head_rows, heads_b, enc_in[t + 1].narrow(0, b0, nb).narrow(1, R, hd), heads_w.t());
      for (int64_t b = b0; b < b0 + nb; ++b) {
        T* hh = row(p_heads, t + 1, b, d.hw);
        for (int64_t k = 2; k < 5; ++k) {
          hh[kw + k] = std::exp(hh[kw + k]);
          hh[kw + 5 + k] = std::exp(hh[kw + 5 + k]);
        }
        const T* p = hh + kw;
        T* f = row(f_w, t, b, 2 * nw * L);
        filters<T>(p, woff, grid, nw, L, d.W, d.H, feps, f, row(d_w, t, b, 2 * nw * L));
        const T *fx = f, *fy = f + nw * L;
        T* wd = row(wdiv, t, b, nw * nw);
        IVDEP
        for (int64_t k = 0; k < nw * nw; ++k) wd[k] = hh[k] / p[4];
        T* ub = row(u, t, b, nw * d.W);
        for (int64_t i = 0; i < nw; ++i) {
          T* ui = ub + i * d.W;
          std::fill(ui, ui + d.W, T(0));
          for (int64_t j = 0; j < nw; ++j) {
            const T cf = wd[i * nw + j];
            IVDEP
            for (int64_t w = 0; w < d.W; ++w) ui[w] += cf * fx[j * L + w];
          }
        }
        T* cb = canvas + b * HW;
        for (int64_t h = 0; h < d.H; ++h) {
          T* ch = cb + h * d.W;
          for (int64_t i = 0; i < nw; ++i) {
            const T cf = fy[i * L + h];
            const T* ui = ub + i * d.W;
            IVDEP
            for (int64_t w = 0; w < d.W; ++w) ch[w] += cf * ui[w];
          }
        }
      }
    }
  }

  // backward ------------------------------------------------------------------------
  T *d_heads, *dq, *dC, *dx;
  const T *dlz, *dmu_ls;

  // d_out (nb x cols) = g (nb x 4hd) @ w[:, :cols]
  void input_grads(int64_t t, int64_t b0, int64_t nb, const Tensor& gates, const Tensor& g_lp, const Tensor& w,
                   const Tensor& w_lp, const Tensor& pk, int64_t cols, Tensor& out, Tensor& out_lp) {
    if (lowp) {
      if (pk.defined())
        out_lp = packed_linear(g_lp[t].narrow(0, b0, nb), pk);
      else
        at::mm_out(out_lp, g_lp[t].narrow(0, b0, nb), w_lp.narrow(1, 0, cols));
      const BF* s = out_lp.data_ptr<BF>();
      T* o = out.data_ptr<T>();
      IVDEP
      for (int64_t k = 0; k < nb * cols; ++k) o[k] = as<T>(s[k]);
    } else if (pk.defined()) {
      out = packed_linear(gates[t].narrow(0, b0, nb), pk);
    } else {
      at::mm_out(out, gates[t].narrow(0, b0, nb), w.narrow(1, 0, cols));
    }
  }

  void backward_chunk(int64_t b0, int64_t nb) {
    const Dims& d = D;
    const int64_t HW = d.H * d.W, L = d.L, R = d.R, hd = d.hd, Z = d.Z, n = d.n, nw = d.nw, kw = d.kw, W = d.W;
    const int64_t ce = R + 2 * hd, cd = Z + hd;
    auto opt = enc_in.options();
    Tensor dc_enc = at::zeros({nb, hd}, opt), dc_dec = at::zeros({nb, hd}, opt), dh = at::empty({nb, hd}, opt);
    Tensor dei[2] = {at::zeros({nb, ce}, opt), at::zeros({nb, ce}, opt)};
    Tensor ddi[2] = {at::zeros({nb, cd}, opt), at::zeros({nb, cd}, opt)};
    Tensor ei_lp, di_lp;
    if (lowp) {
      ei_lp = at::empty({nb, ce}, opt.dtype(at::kBFloat16));
      di_lp = at::empty({nb, cd}, opt.dtype(at::kBFloat16));
    }
    const int64_t nmax = std::max(n, nw);
    std::vector<T> df(2 * nmax * L, T(0)), du(nmax * W), dw(nmax * nmax), dg(2 * n * n), dleft(2 * n * W);
    T* pdh = dh.data_ptr<T>();
    T *pdce = dc_enc.data_ptr<T>(), *pdcd = dc_dec.data_ptr<T>();
    int cur = 0;
    for (int64_t t = d.T - 1; t >= 0; --t) {
      const T* ei_next = dei[1 - cur].data_ptr<T>();
      const T* di_next = ddi[1 - cur].data_ptr<T>();
      // the write of step t (eq 8, 29; eq 18): dL/dc_t reaches it unchanged
      for (int64_t b = b0; b < b0 + nb; ++b) {
        const T* hh = row(p_heads, t + 1, b, d.hw);
        const T* p = hh + kw;
        const T* f = row(f_w, t, b, 2 * nw * L);
        const T *fx = f, *fy = f + nw * L;
        const T* ub = row(u, t, b, nw * W);
        const T* wd = row(wdiv, t, b, nw * nw);
        const T* dcb = dC + b * HW;
        T* dfx = df.data();
        T* dfy = df.data() + nw * L;
        std::fill(du.begin(), du.begin() + nw * W, T(0));
        for (int64_t h = 0; h < d.H; ++h) {
          const T* dch = dcb + h * W;
          for (int64_t i = 0; i < nw; ++i) {
            const T cf = fy[i * L + h];
            T* dui = du.data() + i * W;
            T s = 0;
            const T* ui = ub + i * W;
            IVDEP
            for (int64_t w = 0; w < W; ++w) {
              dui[w] += cf * dch[w];
              s += ui[w] * dch[w];
            }
            dfy[i * L + h] = s;
          }
        }
        for (int64_t j = 0; j < nw; ++j) std::fill(dfx + j * L, dfx + j * L + W, T(0));
        T* dhh = row(d_heads, t + 1, b, d.hw);
        T gsum = 0;
        for (int64_t i = 0; i < nw; ++i) {
          const T* dui = du.data() + i * W;
          for (int64_t j = 0; j < nw; ++j) {
            T s = 0;
            IVDEP
            for (int64_t w = 0; w < W; ++w) s += dui[w] * fx[j * L + w];
            const T cf = wd[i * nw + j];
            gsum += s * cf;
            dhh[i * nw + j] = s / p[4];
            T* dfj = dfx + j * L;
            IVDEP
            for (int64_t w = 0; w < W; ++w) dfj[w] += cf * dui[w];
          }
        }
        dhh[kw + 4] = -gsum;
        filters_backward<T>(df.data(), f, row(d_w, t, b, 2 * nw * L), p, woff, nw, L, W, d.H, dhh + kw);
      }
      // h^dec_t feeds the heads and step t+1's encoder and decoder
      for (int64_t b = 0; b < nb; ++b) {
        const T *a = ei_next + b * ce + R, *c = di_next + b * cd + Z;
        T* o = pdh + b * hd;
        IVDEP
        for (int64_t j = 0; j < hd; ++j) o[j] = a[j] + c[j];
      }
      dh.addmm_(at::from_blob(row(d_heads, t + 1, b0, d.hw), {nb, d.hw}, enc_in.options()), heads_w);
      for (int64_t b = 0; b < nb; ++b) {
        T* a = row(p_g_dec, t, b0 + b, 4 * hd);
        lstm_backward<T>(a, pdh + b * hd, pdcd + b * hd, row(c_dec, t, b0 + b, hd), row(tc_dec, t, b0 + b, hd), hd);
        if (lowp) to_lp(row(p_g_dec_lp, t, b0 + b, 4 * hd), a, 4 * hd);
      }
      input_grads(t, b0, nb, g_dec, g_dec_lp, dec_w, dec_w_lp, dec_pk_t, cd, ddi[cur], di_lp);  // [dz_t | dh^dec_{t-1}]
      const T* ddc = ddi[cur].data_ptr<T>();
      for (int64_t b = 0; b < nb; ++b) {
        const T* dz = ddc + b * cd;
        T* q = row(dq, t, b0 + b, 2 * Z);
        const T* ml = row(p_mu_ls, t, b0 + b, 2 * Z);
        const T* s = row(se, t, b0 + b, Z);
        const T g = dlz[b0 + b];
        // eq 11: dL^z/dmu = mu, dL^z/dlog sigma = sigma^2 - 1; eq 6: z = mu + sigma eps
        IVDEP
        for (int64_t k = 0; k < Z; ++k) {
          q[k] = g * ml[k] + dz[k];
          q[Z + k] = g * (std::exp(T(2) * ml[Z + k]) - T(1)) + dz[k] * s[k];
        }
        if (dmu_ls) {
          const T* o = row(const_cast<T*>(dmu_ls), t, b0 + b, 2 * Z);
          IVDEP
          for (int64_t k = 0; k < 2 * Z; ++k) q[k] += o[k];
        }
      }
      // h^enc_t feeds q and step t+1's encoder
      for (int64_t b = 0; b < nb; ++b) std::copy(ei_next + b * ce + R + hd, ei_next + b * ce + R + 2 * hd, pdh + b * hd);
      dh.addmm_(at::from_blob(row(dq, t, b0, 2 * Z), {nb, 2 * Z}, enc_in.options()), q_w);
      for (int64_t b = 0; b < nb; ++b) {
        T* a = row(p_g_enc, t, b0 + b, 4 * hd);
        lstm_backward<T>(a, pdh + b * hd, pdce + b * hd, row(c_enc, t, b0 + b, hd), row(tc_enc, t, b0 + b, hd), hd);
        if (lowp) to_lp(row(p_g_enc_lp, t, b0 + b, 4 * hd), a, 4 * hd);
      }
      input_grads(t, b0, nb, g_enc, g_enc_lp, enc_w, enc_w_lp, enc_pk_t, ce, dei[cur], ei_lp);  // [dr_t | dh^dec | dh^enc]
      // the read of step t (eq 27, 17) and x_hat = x - sigmoid(c_{t-1}) (eq 3)
      const T* dec_ = dei[cur].data_ptr<T>();
      for (int64_t b = b0; b < b0 + nb; ++b) {
        const T* dr = dec_ + (b - b0) * ce;
        const T* r = row(p_enc_in, t, b, d.ke);
        T* dhr = row(d_heads, t, b, d.hw) + kw + 5;
        const T* p = row(p_heads, t, b, d.hw) + kw + 5;
        const T* f = row(f_r, t, b, 2 * n * L);
        const T *fx = f, *fy = f + n * L;
        const T* lf = row(left, t, b, 2 * n * W);
        const T* xb = x + b * HW;
        const T* xh = row(xhat, t, b, HW);
        T gsum = 0;
        IVDEP
        for (int64_t k = 0; k < 2 * n * n; ++k) {
          gsum += dr[k] * r[k];
          dg[k] = dr[k] * p[4];
        }
        dhr[4] = gsum;
        T* dfx = df.data();
        T* dfy = df.data() + n * L;
        for (int64_t j = 0; j < n; ++j) std::fill(dfx + j * L, dfx + j * L + W, T(0));
        for (int64_t q = 0; q < 2 * n; ++q) {
          T* dl = dleft.data() + q * W;
          const T* lq = lf + q * W;
          std::fill(dl, dl + W, T(0));
          for (int64_t j = 0; j < n; ++j) {
            const T cf = dg[q * n + j];
            const T* fj = fx + j * L;
            T* dfj = dfx + j * L;
            IVDEP
            for (int64_t w = 0; w < W; ++w) {
              dl[w] += cf * fj[w];
              dfj[w] += cf * lq[w];
            }
          }
        }
        for (int64_t i = 0; i < n; ++i) {
          const T *dlx = dleft.data() + i * 2 * W, *dlh = dlx + W;
          for (int64_t h = 0; h < d.H; ++h) {
            const T *xr = xb + h * W, *hr = xh + h * W;
            T s = 0;
            IVDEP
            for (int64_t w = 0; w < W; ++w) s += dlx[w] * xr[w] + dlh[w] * hr[w];
            dfy[i * L + h] = s;
          }
        }
        T* dcb = dC + b * HW;
        T* dxr = dx ? dx + b * HW : nullptr;
        for (int64_t h = 0; h < d.H; ++h) {
          const T *xr = xb + h * W, *hr = xh + h * W;
          T* dch = dcb + h * W;
          for (int64_t i = 0; i < n; ++i) {
            const T cf = fy[i * L + h];
            const T *dlx = dleft.data() + i * 2 * W, *dlh = dlx + W;
            IVDEP
            for (int64_t w = 0; w < W; ++w) {
              const T s = xr[w] - hr[w];  // sigmoid(c_{t-1})
              dch[w] -= cf * dlh[w] * s * (T(1) - s);
              if (dxr) dxr[h * W + w] += cf * (dlx[w] + dlh[w]);
            }
          }
        }
        filters_backward<T>(df.data(), f, row(d_r, t, b, 2 * n * L), p, roff, n, L, W, d.H, dhr);
      }
      cur = 1 - cur;
    }
  }
};

template <typename T>
Loop<T> make_loop(const std::vector<Tensor>& in, const std::vector<Tensor>& buf, const std::vector<int64_t>& dims,
                  bool lowp, double filter_eps) {
  Loop<T> lp;
  Dims& d = lp.D;
  d.T = dims[0], d.B = dims[1], d.H = dims[2], d.W = dims[3], d.hd = dims[4], d.Z = dims[5], d.n = dims[6],
  d.nw = dims[7];
  d.L = std::max(d.H, d.W);
  d.kw = d.nw * d.nw;
  d.R = 2 * d.n * d.n;
  d.hw = d.kw + 10;
  lp.lowp = lowp;
  lp.feps = static_cast<T>(filter_eps);
  // in: x, eps, grid, read offsets, write offsets, enc_w, dec_w, q_w, q_b, heads_w, heads_b, enc_w_lp, dec_w_lp
  // (bfloat16, or empty), then the packed weights of enc_w, dec_w, enc_w[:, :R + 2hd]^T, dec_w[:, :Z + hd]^T
  // (each empty where at::mm is to be used)
  lp.x = in[0].data_ptr<T>();
  lp.eps = in[1].data_ptr<T>();
  lp.grid = in[2].data_ptr<T>();
  lp.roff = in[3].data_ptr<T>();
  lp.woff = in[4].data_ptr<T>();
  lp.enc_w = in[5], lp.dec_w = in[6], lp.q_w = in[7], lp.q_b = in[8], lp.heads_w = in[9], lp.heads_b = in[10];
  if (lowp) lp.enc_w_lp = in[11], lp.dec_w_lp = in[12];
  Tensor* packs[] = {&lp.enc_pk, &lp.dec_pk, &lp.enc_pk_t, &lp.dec_pk_t};
  for (size_t k = 0; k < 4; ++k)
    if (in[13 + k].numel()) *packs[k] = in[13 + k];
  d.ke = lp.enc_w.size(1);
  d.kd = lp.dec_w.size(1);
  // buf: enc_in, dec_in, c_enc, c_dec, g_enc, g_dec, tc_enc, tc_dec, se, heads, mu_ls, xhat, f_r, d_r, f_w, d_w,
  //      left, u, wdiv, canvas, lz (, enc_lp, dec_lp, g_enc_lp, g_dec_lp)
  lp.enc_in = buf[0], lp.dec_in = buf[1], lp.g_enc = buf[4], lp.g_dec = buf[5], lp.heads = buf[9], lp.mu_ls = buf[10];
  T** ptrs[] = {&lp.p_enc_in, &lp.p_dec_in, &lp.c_enc, &lp.c_dec, &lp.p_g_enc, &lp.p_g_dec, &lp.tc_enc,
                &lp.tc_dec, &lp.se, &lp.p_heads, &lp.p_mu_ls, &lp.xhat, &lp.f_r, &lp.d_r, &lp.f_w, &lp.d_w,
                &lp.left, &lp.u, &lp.wdiv, &lp.canvas, &lp.lz};
  for (size_t k = 0; k < 21; ++k) *ptrs[k] = buf[k].data_ptr<T>();
  if (lowp) {
    lp.enc_lp = buf[21], lp.dec_lp = buf[22], lp.g_enc_lp = buf[23], lp.g_dec_lp = buf[24];
    lp.p_enc_lp = buf[21].data_ptr<BF>();
    lp.p_dec_lp = buf[22].data_ptr<BF>();
    lp.p_g_enc_lp = buf[23].data_ptr<BF>();
    lp.p_g_dec_lp = buf[24].data_ptr<BF>();
  }
  return lp;
}

// Rows per chunk: one chunk per thread, none under 8 rows.
template <typename F>
void over_chunks(int64_t B, int64_t chunks, const F& run) {
  chunks = std::max<int64_t>(1, std::min<int64_t>(chunks, B / 8));
  if (chunks == 1) {  // the products may use every thread
    run(0, B);
    return;
  }
  const int64_t per = (B + chunks - 1) / chunks;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b0 = c * per, nb = std::min(per, B - b0);
      if (nb > 0) run(b0, nb);
    }
  });
}

void check(const std::vector<Tensor>& in, const std::vector<Tensor>& buf, bool lowp) {
  TORCH_CHECK(in.size() == 17u && buf.size() == (lowp ? 25u : 21u), "drawcli loop: wrong arguments");
  for (const auto& t : buf) TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "drawcli loop: buffers must be contiguous CPU tensors");
  for (size_t k = 0; k < 5; ++k) TORCH_CHECK(in[k].is_contiguous(), "drawcli loop: inputs must be contiguous");
}

void loop_forward(std::vector<Tensor> in, std::vector<Tensor> buf, std::vector<int64_t> dims, bool lowp,
                  double filter_eps, int64_t chunks) {
  check(in, buf, lowp);
  at::NoGradGuard no_grad;
  AT_DISPATCH_FLOATING_TYPES(in[0].scalar_type(), "drawcli_loop_forward", [&] {
    TORCH_CHECK(!lowp || (std::is_same<scalar_t, float>::value), "drawcli loop: bfloat16 products need float32");
    auto lp = make_loop<scalar_t>(in, buf, dims, lowp, filter_eps);
    over_chunks(lp.D.B, chunks, [&](int64_t b0, int64_t nb) { lp.forward_chunk(b0, nb); });
  });
}

// grads: d_heads (T+1, B, hw) zeroed, dq (T, B, 2Z) (written), d_canvas (B, H, W) = dL/dc_T (overwritten),
// dx (B, H, W) zeroed or empty, dL/dL^z (B,), dL/d[mu | log sigma] (T, B, 2Z) or empty.
void loop_backward(std::vector<Tensor> in, std::vector<Tensor> buf, std::vector<Tensor> grads,
                   std::vector<int64_t> dims, bool lowp, double filter_eps, int64_t chunks) {
  check(in, buf, lowp);
  TORCH_CHECK(grads.size() == 6, "drawcli loop: wrong gradient buffers");
  for (const auto& t : grads) TORCH_CHECK(t.is_contiguous(), "drawcli loop: gradients must be contiguous");
  at::NoGradGuard no_grad;
  AT_DISPATCH_FLOATING_TYPES(in[0].scalar_type(), "drawcli_loop_backward", [&] {
    auto lp = make_loop<scalar_t>(in, buf, dims, lowp, filter_eps);
    lp.d_heads = grads[0].data_ptr<scalar_t>();
    lp.dq = grads[1].data_ptr<scalar_t>();
    lp.dC = grads[2].data_ptr<scalar_t>();
    lp.dx = grads[3].numel() ? grads[3].data_ptr<scalar_t>() : nullptr;
    lp.dlz = grads[4].data_ptr<scalar_t>();
    lp.dmu_ls = grads[5].numel() ? grads[5].data_ptr<scalar_t>() : nullptr;
    over_chunks(lp.D.B, chunks, [&](int64_t b0, int64_t nb) { lp.backward_chunk(b0, nb); });
  });
}

}  // namespace

TORCH_LIBRARY(drawcli, m) {
  m.def("loop_forward(Tensor[] inputs, Tensor[] buffers, int[] dims, bool lowp, float filter_eps, int chunks) -> ()",
        &loop_forward);
  m.def("loop_backward(Tensor[] inputs, Tensor[] buffers, Tensor[] grads, int[] dims, bool lowp, float filter_eps, "
        "int chunks) -> ()",
        &loop_backward);
  m.def("abi_version() -> int", []() -> int64_t { return 1; });
}
