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

// NaN tested on the bits: -ffast-math lets the compiler assume that x != x is never true.
inline bool is_nan(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u & 0x7FFFFFFFu) > 0x7F800000u;
}

inline bool is_nan(double x) {
  uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u & 0x7FFFFFFFFFFFFFFFull) > 0x7FF0000000000000ull;
}

// Clamped so that exp never overflows: under -ffast-math, 1 / (1 + inf) may be computed through a
// reciprocal estimate that gives NaN. A NaN input stays NaN (not a saturated gate), so training's
// finite-loss check sees it.
template <typename T>
inline T sigm(T x) {
  const T y = T(1) / (T(1) + std::exp(-std::min(std::max(x, T(-80)), T(80))));
  return is_nan(x) ? x : y;
}

// tanh(x) = 2 sigmoid(2x) - 1, as the Python engine computes it.
template <typename T>
inline T tanh2(T x) {
  const T y = T(2) / (T(1) + std::exp(T(-2) * std::min(std::max(x, T(-40)), T(40)))) - T(1);
  return is_nan(x) ? x : y;
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
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;  // quiet, whatever the payload
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? nan : rounded);
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
// The attention work is done for V images at once, image innermost ("lanes"): every array below
// is (..., V), so each loop runs over the V images of a chunk, with no per-image short loops and
// no horizontal sums. p: the window (g_X, g_Y, delta, sigma^2, gamma) as (5, V).
// F_X (a = 0, W columns) and F_Y (a = 1, H columns) into f (2, N, L, V).
template <typename T>
void filters(const T* p, const T* off, const T* grid, int64_t N, int64_t L, int64_t W, int64_t H, int64_t V,
             T eps, T* f, T* mu, T* scale, T* s) {
  IVDEP
  for (int64_t v = 0; v < V; ++v) scale[v] = T(-0.5) / p[3 * V + v];
  for (int64_t a = 0; a < 2; ++a) {
    const int64_t len = a == 0 ? W : H;
    for (int64_t i = 0; i < N; ++i) {
      IVDEP
      for (int64_t v = 0; v < V; ++v) {
        mu[v] = p[a * V + v] + off[i] * p[2 * V + v];
        s[v] = 0;
      }
      T* fr = f + (a * N + i) * L * V;
      for (int64_t l = 0; l < len; ++l) {
        const T gl = grid[a * L + l];
        IVDEP
        for (int64_t v = 0; v < V; ++v) {
          const T dl = gl - mu[v];
          const T e = std::exp(dl * dl * scale[v]);
          fr[l * V + v] = e;
          s[v] += e;
        }
      }
      IVDEP
      for (int64_t v = 0; v < V; ++v) s[v] = T(1) / (s[v] + eps);
      for (int64_t l = 0; l < len; ++l) {
        IVDEP
        for (int64_t v = 0; v < V; ++v) fr[l * V + v] *= s[v];
      }
    }
  }
}

// dL/d(g_X, g_Y, log delta, log sigma^2) of each image into out (4, V), from dL/dF in df (2, N, L, V)
// (grid - mu is recomputed: cheaper than storing it for every step).
template <typename T>
void filters_backward(const T* df, const T* f, const T* p, const T* off, const T* grid, int64_t N, int64_t L,
                      int64_t W, int64_t H, int64_t V, T* out, T* z, T* mu) {
  std::fill(out, out + 4 * V, T(0));
  for (int64_t a = 0; a < 2; ++a) {
    const int64_t len = a == 0 ? W : H;
    for (int64_t i = 0; i < N; ++i) {
      const int64_t o = (a * N + i) * L * V;
      const T *g = df + o, *fr = f + o;
      IVDEP
      for (int64_t v = 0; v < V; ++v) mu[v] = p[a * V + v] + off[i] * p[2 * V + v];
      std::fill(z, z + V, T(0));
      for (int64_t l = 0; l < len; ++l) {
        IVDEP
        for (int64_t v = 0; v < V; ++v) z[v] += g[l * V + v] * fr[l * V + v];
      }
      for (int64_t l = 0; l < len; ++l) {
        const T gl = grid[a * L + l];
        IVDEP
        for (int64_t v = 0; v < V; ++v) {
          const int64_t k = l * V + v;
          const T dl = gl - mu[v];
          const T ed = (g[k] - z[v]) * fr[k] * dl;  // dL/d(exponent) times (a - mu)
          out[a * V + v] += ed;
          out[2 * V + v] += off[i] * ed;
          out[3 * V + v] += ed * dl;
        }
      }
    }
  }
  IVDEP
  for (int64_t v = 0; v < V; ++v) {
    const T inv = T(1) / p[3 * V + v];
    out[v] *= inv;
    out[V + v] *= inv;
    out[2 * V + v] *= inv * p[2 * V + v];
    out[3 * V + v] *= T(0.5) * inv;
  }
}

// ---------------------------------------------------------------- LSTM cell (eq 5, 7)
// Gates in LSTMCell's order (i, f, g, o), so that the weights need no reordering; pre may alias a.
template <typename T, typename P>
void lstm_forward(const P* pre, T* a, const T* cp, T* c, T* tc, T* h, int64_t hd) {
  IVDEP
  for (int64_t j = 0; j < 2 * hd; ++j) a[j] = sigm<T>(as<T>(pre[j]));
  IVDEP
  for (int64_t j = 2 * hd; j < 3 * hd; ++j) a[j] = tanh2<T>(as<T>(pre[j]));
  IVDEP
  for (int64_t j = 3 * hd; j < 4 * hd; ++j) a[j] = sigm<T>(as<T>(pre[j]));
  IVDEP
  for (int64_t j = 0; j < hd; ++j) {
    const T cj = a[hd + j] * cp[j] + a[j] * a[2 * hd + j];
    c[j] = cj;
    const T tj = tanh2<T>(cj);
    tc[j] = tj;
    h[j] = a[3 * hd + j] * tj;
  }
}

inline void store(float* p, float v) { *p = v; }
inline void store(double* p, double v) { *p = v; }
inline void store(BF* p, float v) { *reinterpret_cast<uint16_t*>(p) = lp_bits(v); }

// dL/d(pre-activations) into g (T, or bfloat16 when the products take bfloat16: the float32 copy would
// never be read) from the activated gates a; g may be a itself. dc: dL/dc_t in, dL/dc_{t-1} out.
template <typename T, typename G>
void lstm_backward(const T* a, G* g, const T* dh, T* dc, const T* cp, const T* tc, int64_t hd) {
  IVDEP
  for (int64_t j = 0; j < hd; ++j) {
    const T i = a[j], f = a[hd + j], gg = a[2 * hd + j], o = a[3 * hd + j], t = tc[j];
    const T dcj = dc[j] + dh[j] * o * (T(1) - t * t);
    const T di = dcj * gg, df = dcj * cp[j], d_o = dh[j] * t, dg = dcj * i;
    dc[j] = dcj * f;
    store(g + j, di * i * (T(1) - i));
    store(g + hd + j, df * f * (T(1) - f));
    store(g + 2 * hd + j, dg * (T(1) - gg * gg));
    store(g + 3 * hd + j, d_o * o * (T(1) - o));
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
      *xhat, *f_r, *f_w, *left, *u, *wdiv, *canvas, *lz;
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

  // A chunk's block of a per-image buffer, laid out (T, size, V) with the chunk's V images innermost.
  T* lanes(T* base, int64_t b0, int64_t V, int64_t size, int64_t t) const {
    return base + b0 * D.T * size + t * size * V;
  }

  // dst (cols, V) = src[b0 + v][off + c] (rows of width `width`)
  static void gather(T* dst, const T* src, int64_t b0, int64_t V, int64_t width, int64_t off, int64_t cols) {
    for (int64_t v = 0; v < V; ++v) {
      const T* r = src + (b0 + v) * width + off;
      for (int64_t c = 0; c < cols; ++c) dst[c * V + v] = r[c];
    }
  }

  // (HW, V) image lanes <-> rows
  void to_lanes(T* dst, const T* rows, int64_t b0, int64_t V) const {
    const int64_t HW = D.H * D.W;
    for (int64_t v = 0; v < V; ++v)
      for (int64_t k = 0; k < HW; ++k) dst[k * V + v] = rows[(b0 + v) * HW + k];
  }

  void forward_chunk(int64_t b0, int64_t nb) {
    const Dims& d = D;
    const int64_t HW = d.H * d.W, L = d.L, R = d.R, hd = d.hd, Z = d.Z, n = d.n, nw = d.nw, kw = d.kw, V = nb;
    Tensor pre_lp = lowp ? at::empty({nb, 4 * hd}, enc_in.options().dtype(at::kBFloat16)) : Tensor();
    std::vector<T> xs_(HW * V), cv_(HW * V, T(0)), win(5 * V), s1(V), s2(V), s3(V);
    T *xs = xs_.data(), *cv = cv_.data();  // x and the canvas c_t, as (HW, V)
    to_lanes(xs, x, b0, V);
    for (int64_t t = 0; t < d.T; ++t) {
      const bool next_lp = lowp && t + 1 < d.T;
      // eq 3 and the read, eq 17, 27 (window from h^dec_{t-1}), for the chunk's V images at once
      T* xh = lanes(xhat, b0, V, HW, t);  // (HW, V)
      IVDEP
      for (int64_t k = 0; k < HW * V; ++k) xh[k] = xs[k] - sigm<T>(cv[k]);
      gather(win.data(), p_heads + t * d.B * d.hw, b0, V, d.hw, kw + 5, 5);
      T* fr = lanes(f_r, b0, V, 2 * n * L, t);
      filters<T>(win.data(), roff, grid, n, L, d.W, d.H, V, feps, fr, s1.data(),
                 s2.data(), s3.data());
      const T *fx = fr, *fy = fr + n * L * V;
      T* lf = lanes(left, b0, V, 2 * n * d.W, t);  // rows (i, image): F_Y x | F_Y x_hat, (2n, W, V)
      std::fill(lf, lf + 2 * n * d.W * V, T(0));
      for (int64_t i = 0; i < n; ++i)
        for (int64_t h = 0; h < d.H; ++h) {
          const T* c = fy + (i * L + h) * V;
          for (int64_t w = 0; w < d.W; ++w) {
            T *lx = lf + ((2 * i) * d.W + w) * V, *lh = lf + ((2 * i + 1) * d.W + w) * V;
            const T *xv = xs + (h * d.W + w) * V, *hv = xh + (h * d.W + w) * V;
            IVDEP
            for (int64_t v = 0; v < V; ++v) {
              lx[v] += c[v] * xv[v];
              lh[v] += c[v] * hv[v];
            }
          }
        }
      for (int64_t q = 0; q < 2 * n; ++q)
        for (int64_t j = 0; j < n; ++j) {
          T* acc = s1.data();
          std::fill(acc, acc + V, T(0));
          for (int64_t w = 0; w < d.W; ++w) {
            const T *a = lf + (q * d.W + w) * V, *c = fx + (j * L + w) * V;
            IVDEP
            for (int64_t v = 0; v < V; ++v) acc[v] += a[v] * c[v];
          }
          T* r = p_enc_in + (t * d.B + b0) * d.ke + q * n + j;  // eq 27: gamma F_Y x F_X^T
          for (int64_t v = 0; v < V; ++v) r[v * d.ke] = win[4 * V + v] * acc[v];
        }
      if (lowp)
        for (int64_t b = b0; b < b0 + nb; ++b) to_lp(row(p_enc_lp, t, b, d.ke), row(p_enc_in, t, b, d.ke), R);
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
        for (int64_t k = 2; k < 5; ++k) {  // delta, sigma^2, gamma from their logs
          hh[kw + k] = std::exp(hh[kw + k]);
          hh[kw + 5 + k] = std::exp(hh[kw + 5 + k]);
        }
      }
      const T* hrows = p_heads + ((t + 1) * d.B) * d.hw;
      gather(win.data(), hrows, b0, V, d.hw, kw, 5);
      T* fw = lanes(f_w, b0, V, 2 * nw * L, t);
      filters<T>(win.data(), woff, grid, nw, L, d.W, d.H, V, feps, fw, s1.data(),
                 s2.data(), s3.data());
      const T *wfx = fw, *wfy = fw + nw * L * V;
      T* wd = lanes(wdiv, b0, V, nw * nw, t);  // w / gamma, (N^2, V)
      gather(wd, hrows, b0, V, d.hw, 0, nw * nw);
      for (int64_t k = 0; k < nw * nw; ++k) {
        IVDEP
        for (int64_t v = 0; v < V; ++v) wd[k * V + v] /= win[4 * V + v];
      }
      T* ub = lanes(u, b0, V, nw * d.W, t);  // (w / gamma) F_X, (N, W, V)
      std::fill(ub, ub + nw * d.W * V, T(0));
      for (int64_t i = 0; i < nw; ++i)
        for (int64_t j = 0; j < nw; ++j) {
          const T* c = wd + (i * nw + j) * V;
          for (int64_t w = 0; w < d.W; ++w) {
            T* o = ub + (i * d.W + w) * V;
            const T* fv = wfx + (j * L + w) * V;
            IVDEP
            for (int64_t v = 0; v < V; ++v) o[v] += c[v] * fv[v];
          }
        }
      for (int64_t h = 0; h < d.H; ++h)  // eq 8, 29: c_t = c_{t-1} + F_Y^T (w / gamma) F_X
        for (int64_t i = 0; i < nw; ++i) {
          const T* c = wfy + (i * L + h) * V;
          for (int64_t w = 0; w < d.W; ++w) {
            T* o = cv + (h * d.W + w) * V;
            const T* uv = ub + (i * d.W + w) * V;
            IVDEP
            for (int64_t v = 0; v < V; ++v) o[v] += c[v] * uv[v];
          }
        }
    }
    for (int64_t v = 0; v < V; ++v)  // c_T back to one image per row
      for (int64_t k = 0; k < HW; ++k) canvas[(b0 + v) * HW + k] = cv[k * V + v];
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

  // The LSTM's backward for rows [b0, b0 + nb) at step t: dL/d(pre-activations) into g (or g_lp).
  void cell_backward(int64_t t, int64_t b0, int64_t nb, T* g, BF* g_lp, const T* c, const T* tc, const T* dh,
                     T* dc) {
    const int64_t hd = D.hd;
    for (int64_t b = 0; b < nb; ++b) {
      T* a = row(g, t, b0 + b, 4 * hd);
      const T *cp = row(const_cast<T*>(c), t, b0 + b, hd), *tcb = row(const_cast<T*>(tc), t, b0 + b, hd);
      if (lowp)
        lstm_backward<T, BF>(a, row(g_lp, t, b0 + b, 4 * hd), dh + b * hd, dc + b * hd, cp, tcb, hd);
      else
        lstm_backward<T, T>(a, a, dh + b * hd, dc + b * hd, cp, tcb, hd);
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
    const int64_t nmax = std::max(n, nw), V = nb;
    // lanes (see forward_chunk): dL/dF (2, N, L, V), dL/du (N, W, V), dL/dleft (2n, W, V), ...
    std::vector<T> df(2 * nmax * L * V, T(0)), du(nw * W * V), dg(2 * n * n * V), dleft(2 * n * W * V),
        win(5 * V), out4(4 * V), s1(V), s2(V), s3(V), xs_(HW * V), dcv_(HW * V), dx_(dx ? HW * V : 0, T(0));
    T *xs = xs_.data(), *dcv = dcv_.data(), *dxv = dx ? dx_.data() : nullptr;
    to_lanes(xs, x, b0, V);
    to_lanes(dcv, dC, b0, V);  // dL/dc_T, then dL/dc_t as t goes down
    T* pdh = dh.data_ptr<T>();
    T *pdce = dc_enc.data_ptr<T>(), *pdcd = dc_dec.data_ptr<T>();
    int cur = 0;
    for (int64_t t = d.T - 1; t >= 0; --t) {
      const T* ei_next = dei[1 - cur].data_ptr<T>();
      const T* di_next = ddi[1 - cur].data_ptr<T>();
      // the write of step t (eq 8, 29; eq 18): dL/dc_t reaches it unchanged
      {
        const T* hrows = p_heads + ((t + 1) * d.B) * d.hw;
        gather(win.data(), hrows, b0, V, d.hw, kw, 5);
        const T* fw = lanes(f_w, b0, V, 2 * nw * L, t);
        const T *fx = fw, *fy = fw + nw * L * V;
        const T* ub = lanes(u, b0, V, nw * W, t);
        const T* wd = lanes(wdiv, b0, V, nw * nw, t);
        T *dfx = df.data(), *dfy = df.data() + nw * L * V;
        std::fill(du.begin(), du.end(), T(0));
        for (int64_t i = 0; i < nw; ++i)
          for (int64_t h = 0; h < d.H; ++h) {
            const T* c = fy + (i * L + h) * V;
            T* sy = dfy + (i * L + h) * V;  // dL/dF_Y = u dC^T
            std::fill(sy, sy + V, T(0));
            for (int64_t w = 0; w < W; ++w) {
              const T *g = dcv + (h * W + w) * V, *uv = ub + (i * W + w) * V;
              T* o = du.data() + (i * W + w) * V;  // dL/du = F_Y dC
              IVDEP
              for (int64_t v = 0; v < V; ++v) {
                o[v] += c[v] * g[v];
                sy[v] += uv[v] * g[v];
              }
            }
          }
        std::fill(dfx, dfx + nw * L * V, T(0));
        T* gsum = s2.data();
        std::fill(gsum, gsum + V, T(0));
        T* dhh = d_heads + ((t + 1) * d.B + b0) * d.hw;
        for (int64_t i = 0; i < nw; ++i)
          for (int64_t j = 0; j < nw; ++j) {
            T* acc = s1.data();  // dL/d(w / gamma) = du F_X^T
            std::fill(acc, acc + V, T(0));
            const T* c = wd + (i * nw + j) * V;
            for (int64_t w = 0; w < W; ++w) {
              const T *g = du.data() + (i * W + w) * V, *fv = fx + (j * L + w) * V;
              T* o = dfx + (j * L + w) * V;  // dL/dF_X = (w / gamma)^T du
              IVDEP
              for (int64_t v = 0; v < V; ++v) {
                acc[v] += g[v] * fv[v];
                o[v] += c[v] * g[v];
              }
            }
            for (int64_t v = 0; v < V; ++v) {
              gsum[v] += acc[v] * c[v];
              dhh[v * d.hw + i * nw + j] = acc[v] / win[4 * V + v];
            }
          }
        filters_backward<T>(df.data(), fw, win.data(), woff, grid, nw, L, W, d.H, V, out4.data(), s1.data(),
                            s3.data());
        for (int64_t v = 0; v < V; ++v) {
          T* o = dhh + v * d.hw + kw;
          for (int64_t k = 0; k < 4; ++k) o[k] = out4[k * V + v];
          o[4] = -gsum[v];  // dL/d log gamma: w / gamma
        }
      }
      // h^dec_t feeds the heads and step t+1's encoder and decoder
      for (int64_t b = 0; b < nb; ++b) {
        const T *a = ei_next + b * ce + R, *c = di_next + b * cd + Z;
        T* o = pdh + b * hd;
        IVDEP
        for (int64_t j = 0; j < hd; ++j) o[j] = a[j] + c[j];
      }
      dh.addmm_(at::from_blob(row(d_heads, t + 1, b0, d.hw), {nb, d.hw}, enc_in.options()), heads_w);
      cell_backward(t, b0, nb, p_g_dec, p_g_dec_lp, c_dec, tc_dec, pdh, pdcd);
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
      cell_backward(t, b0, nb, p_g_enc, p_g_enc_lp, c_enc, tc_enc, pdh, pdce);
      input_grads(t, b0, nb, g_enc, g_enc_lp, enc_w, enc_w_lp, enc_pk_t, ce, dei[cur], ei_lp);  // [dr_t | dh^dec | dh^enc]
      // the read of step t (eq 27, 17) and x_hat = x - sigmoid(c_{t-1}) (eq 3)
      {
        const T* dec_ = dei[cur].data_ptr<T>();
        gather(win.data(), p_heads + t * d.B * d.hw, b0, V, d.hw, kw + 5, 5);
        const T* fr = lanes(f_r, b0, V, 2 * n * L, t);
        const T *fx = fr, *fy = fr + n * L * V;
        const T* lf = lanes(left, b0, V, 2 * n * W, t);
        const T* xh = lanes(xhat, b0, V, HW, t);
        T* gsum = s2.data();
        std::fill(gsum, gsum + V, T(0));
        for (int64_t v = 0; v < V; ++v) {
          const T* dr = dec_ + v * ce;
          const T* r = p_enc_in + (t * d.B + b0 + v) * d.ke;
          for (int64_t k = 0; k < R; ++k) {
            gsum[v] += dr[k] * r[k];  // dL/d log gamma (r = gamma G)
            dg[k * V + v] = dr[k] * win[4 * V + v];
          }
        }
        T *dfx = df.data(), *dfy = df.data() + n * L * V;
        std::fill(dfx, dfx + n * L * V, T(0));
        std::fill(dleft.begin(), dleft.end(), T(0));
        for (int64_t q = 0; q < 2 * n; ++q)
          for (int64_t j = 0; j < n; ++j) {
            const T* c = dg.data() + (q * n + j) * V;
            for (int64_t w = 0; w < W; ++w) {
              const T *fv = fx + (j * L + w) * V, *lv = lf + (q * W + w) * V;
              T *dl = dleft.data() + (q * W + w) * V, *o = dfx + (j * L + w) * V;
              IVDEP
              for (int64_t v = 0; v < V; ++v) {
                dl[v] += c[v] * fv[v];
                o[v] += c[v] * lv[v];
              }
            }
          }
        for (int64_t i = 0; i < n; ++i)
          for (int64_t h = 0; h < d.H; ++h) {
            const T* c = fy + (i * L + h) * V;
            T* sy = dfy + (i * L + h) * V;
            std::fill(sy, sy + V, T(0));
            for (int64_t w = 0; w < W; ++w) {
              const T *dlx = dleft.data() + ((2 * i) * W + w) * V, *dlh = dleft.data() + ((2 * i + 1) * W + w) * V;
              const T *xv = xs + (h * W + w) * V, *hv = xh + (h * W + w) * V;
              T* g = dcv + (h * W + w) * V;
              IVDEP
              for (int64_t v = 0; v < V; ++v) {
                sy[v] += dlx[v] * xv[v] + dlh[v] * hv[v];
                const T sg = xv[v] - hv[v];  // sigmoid(c_{t-1})
                g[v] -= c[v] * dlh[v] * sg * (T(1) - sg);  // through x_hat, eq 3
              }
              if (dxv) {
                T* o = dxv + (h * W + w) * V;
                IVDEP
                for (int64_t v = 0; v < V; ++v) o[v] += c[v] * (dlx[v] + dlh[v]);
              }
            }
          }
        filters_backward<T>(df.data(), fr, win.data(), roff, grid, n, L, W, d.H, V, out4.data(), s1.data(),
                            s3.data());
        T* dhr = d_heads + (t * d.B + b0) * d.hw + kw + 5;
        for (int64_t v = 0; v < V; ++v) {
          for (int64_t k = 0; k < 4; ++k) dhr[v * d.hw + k] = out4[k * V + v];
          dhr[v * d.hw + 4] = gsum[v];
        }
      }
      cur = 1 - cur;
    }
    if (dxv)
      for (int64_t v = 0; v < V; ++v)
        for (int64_t k = 0; k < HW; ++k) dx[(b0 + v) * HW + k] = dxv[k * V + v];
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
  // buf: enc_in, dec_in, c_enc, c_dec, g_enc, g_dec, tc_enc, tc_dec, se, heads, mu_ls, xhat, f_r, f_w,
  //      left, u, wdiv, canvas, lz (, enc_lp, dec_lp, g_enc_lp, g_dec_lp)
  lp.enc_in = buf[0], lp.dec_in = buf[1], lp.g_enc = buf[4], lp.g_dec = buf[5], lp.heads = buf[9], lp.mu_ls = buf[10];
  T** ptrs[] = {&lp.p_enc_in, &lp.p_dec_in, &lp.c_enc, &lp.c_dec, &lp.p_g_enc, &lp.p_g_dec, &lp.tc_enc,
                &lp.tc_dec, &lp.se, &lp.p_heads, &lp.p_mu_ls, &lp.xhat, &lp.f_r, &lp.f_w,
                &lp.left, &lp.u, &lp.wdiv, &lp.canvas, &lp.lz};
  for (size_t k = 0; k < 19; ++k) *ptrs[k] = buf[k].data_ptr<T>();
  if (lowp) {
    lp.enc_lp = buf[19], lp.dec_lp = buf[20], lp.g_enc_lp = buf[21], lp.g_dec_lp = buf[22];
    lp.p_enc_lp = buf[19].data_ptr<BF>();
    lp.p_dec_lp = buf[20].data_ptr<BF>();
    lp.p_g_enc_lp = buf[21].data_ptr<BF>();
    lp.p_g_dec_lp = buf[22].data_ptr<BF>();
  }
  return lp;
}

// Rows per chunk: one chunk per thread, none under 8 rows (fused.py's native_chunks says the same;
// the clamp here keeps a direct call safe).
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
  TORCH_CHECK(in.size() == 17u && buf.size() == (lowp ? 23u : 19u), "drawcli loop: wrong arguments");
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

// grads: d_heads (T+1, B, hw) zeroed, dq (T, B, 2Z) (written), d_canvas (B, H, W) = dL/dc_T (read),
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
