// The native engine's elementwise kernels (draw_loop.cpp includes this file): NaN-safe
// activations under -ffast-math, bfloat16 rounding, lanes in register tiles, the filterbanks of
// eq 19-26 and their backward, and the LSTM cell of eq 5 and 7 and its backward. Every function
// works on V images side by side ("lanes", innermost) or on one row of a product's output.

#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// The inner loops below run over a few dozen contiguous values (an image row, a filter row): no
// two of their pointers overlap, and saying so spares gcc the run-time overlap checks.
#define IVDEP _Pragma("GCC ivdep")

namespace drawcli {

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

// ---------------------------------------------------------------- lanes in register tiles
// The per-image work runs on V images side by side ("lanes", innermost in every array). Loops
// that sum over pixels keep their sums in registers by running on tiles of Tile<T> lanes, a
// compile-time width (two vector registers): body(v0, nv) with nv == Tile<T> (a constant, so
// that the compiler unrolls and vectorises the lane loop) or, once, the remaining lanes.
template <typename T>
constexpr int64_t Tile = 128 / sizeof(T);
constexpr int64_t NMAX = 64;  // the largest read or write side N (engine.py NATIVE_MAX_WINDOW; wider runs the Python engine)

template <typename T, typename F>
inline void tiles(int64_t V, const F& body) {
  int64_t v0 = 0;
  for (; v0 + Tile<T> <= V; v0 += Tile<T>) body(v0, std::integral_constant<int64_t, Tile<T>>{});
  if (v0 < V) body(v0, V - v0);
}

// ---------------------------------------------------------------- filterbanks (eq 19-26)
// p: the windows (g_X, g_Y, delta, sigma^2, gamma) as (5, V). F_X (a = 0, W columns) and F_Y
// (a = 1, H columns) into f (2, N, L, V).
template <typename T>
void filters(const T* p, const T* off, const T* grid, int64_t N, int64_t L, int64_t W, int64_t H, int64_t V,
             T eps, T* f) {
  for (int64_t a = 0; a < 2; ++a) {
    const int64_t len = a == 0 ? W : H;
    for (int64_t i = 0; i < N; ++i) {
      T* fr = f + (a * N + i) * L * V;
      tiles<T>(V, [&](int64_t v0, auto nv) {
        T mu[Tile<T>], scale[Tile<T>], s[Tile<T>] = {};
        for (int64_t u = 0; u < nv; ++u) {
          mu[u] = p[a * V + v0 + u] + off[i] * p[2 * V + v0 + u];
          scale[u] = T(-0.5) / p[3 * V + v0 + u];
        }
        for (int64_t l = 0; l < len; ++l) {
          const T gl = grid[a * L + l];
          T* o = fr + l * V + v0;
          for (int64_t u = 0; u < nv; ++u) {
            const T dl = gl - mu[u];
            const T e = std::exp(dl * dl * scale[u]);
            o[u] = e;
            s[u] += e;
          }
        }
        for (int64_t u = 0; u < nv; ++u) s[u] = T(1) / (s[u] + eps);  // Z_X, Z_Y: each row sums to 1
        for (int64_t l = 0; l < len; ++l) {
          T* o = fr + l * V + v0;
          for (int64_t u = 0; u < nv; ++u) o[u] *= s[u];
        }
      });
    }
  }
}

// dL/d(g_X, g_Y, log delta, log sigma^2) of each image into out (4, V), from dL/dF in df (2, N, L, V)
// (grid - mu is recomputed: cheaper than storing it for every step).
template <typename T>
void filters_backward(const T* df, const T* f, const T* p, const T* off, const T* grid, int64_t N, int64_t L,
                      int64_t W, int64_t H, int64_t V, T* out) {
  std::fill(out, out + 4 * V, T(0));
  for (int64_t a = 0; a < 2; ++a) {
    const int64_t len = a == 0 ? W : H;
    for (int64_t i = 0; i < N; ++i) {
      const int64_t o = (a * N + i) * L * V;
      const T *g = df + o, *fr = f + o;
      tiles<T>(V, [&](int64_t v0, auto nv) {
        T mu[Tile<T>], z[Tile<T>] = {}, s1[Tile<T>] = {}, s2[Tile<T>] = {};
        for (int64_t u = 0; u < nv; ++u) mu[u] = p[a * V + v0 + u] + off[i] * p[2 * V + v0 + u];
        for (int64_t l = 0; l < len; ++l)
          for (int64_t u = 0; u < nv; ++u) z[u] += g[l * V + v0 + u] * fr[l * V + v0 + u];
        for (int64_t l = 0; l < len; ++l) {
          const T gl = grid[a * L + l];
          for (int64_t u = 0; u < nv; ++u) {
            const int64_t k = l * V + v0 + u;
            const T dl = gl - mu[u];
            const T ed = (g[k] - z[u]) * fr[k] * dl;  // dL/d(exponent) times (a - mu)
            s1[u] += ed;
            s2[u] += ed * dl;
          }
        }
        for (int64_t u = 0; u < nv; ++u) {
          out[a * V + v0 + u] += s1[u];
          out[2 * V + v0 + u] += off[i] * s1[u];
          out[3 * V + v0 + u] += s2[u];
        }
      });
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

}  // namespace drawcli
