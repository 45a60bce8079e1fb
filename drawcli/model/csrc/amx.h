// bfloat16 matrix products on Intel AMX tiles (draw_loop.cpp includes this file), for the LSTM
// products of a step when they are small: at colour_quick's 32 rows a bfloat16 at::mm spends most
// of its time on the call (oneDNN re-lays the weight out for every call), not on the arithmetic.
//
// A weight is laid out once per loop (pack: bfloat16, in AMX's pair-interleaved "VNNI" tiles), and
// every step's product then runs tile by tile: C (M x N, float32) = A (M x K, bfloat16) @ B, each
// product of a bfloat16 pair summed in float32, as oneDNN's bfloat16 products do. The result stays
// float32 (at::mm's bfloat16 output would round it to bfloat16 first).
//
// Compiled where the compiler targets AMX (-march=native on a CPU with amx_tile and amx_bf16) unless
// DRAWCLI_NO_AMX is defined (DRAWCLI_AMX=0 at build time), and used where Linux grants the process the
// tile state (available()); elsewhere the loop runs oneDNN's products or at::mm.

#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__) && !defined(DRAWCLI_NO_AMX)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define DRAWCLI_AMX 1
#else
#define DRAWCLI_AMX 0
#endif

namespace drawcli {
namespace amx {

// A tile is 16 rows of 64 bytes: of A, 16 rows x 32 bfloat16 values (k); of B, 16 pairs of k x 16
// columns (n), each pair side by side; of C, 16 rows x 16 float32 values.
constexpr int64_t KT = 32, NT = 16, MT = 16;

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Values in a packed B of K rows (k) and N columns (n): both padded, N to two tiles (the kernel
// runs two column tiles at a time), K to a tile.
inline int64_t packed_size(int64_t K, int64_t N) { return round_up(N, 2 * NT) * round_up(K, KT); }

// Pack B (K x N, bfloat16 bits from to_bits) from a row-major matrix w (float, or bfloat16 bits) with row stride ld:
// transpose == true: B[k][n] = w[n][k] (the product x @ w^T, w being N x K);
// transpose == false: B[k][n] = w[k][n] for n < N (the product g @ w[:, :N], w being K x ld).
// The padding is zero. to_bits(dst, src, count): floats -> bfloat16 bits (round to nearest even,
// NaN kept). Each row of w is converted once, then moved as pairs (32 bits) into its tiles.
template <typename S, typename F>
void pack(const S* w, int64_t ld, int64_t K, int64_t N, bool transpose, uint16_t* out, const F& to_bits) {
  const int64_t Kp = round_up(K, KT), Np = round_up(N, 2 * NT), kb = Kp / KT;
  uint32_t* o = reinterpret_cast<uint32_t*>(out);  // (n / 16, k / 32) tiles of (k % 32 / 2, n % 16) pairs
  if (transpose) {
    if (N < Np) std::memset(out, 0, sizeof(uint16_t) * Kp * Np);  // the padding columns
    std::vector<uint16_t> row(Kp);  // one row of w (n), as bits, zero-padded
    for (int64_t n = 0; n < N; ++n) {
      to_bits(row.data(), w + n * ld, K);
      const uint32_t* r = reinterpret_cast<const uint32_t*>(row.data());
      uint32_t* t = o + (n / NT) * kb * (KT * NT / 2) + n % NT;
      for (int64_t p = 0; p < Kp / 2; ++p) t[p * NT] = r[p];  // pair p: tile p / 16, its row p % 16
    }
  } else {
    std::vector<uint16_t> lo(Np), hi(Np);  // rows k and k + 1 of w, as bits
    for (int64_t k = 0; k < Kp; k += 2) {
      std::fill(lo.begin(), lo.end(), uint16_t(0));
      std::fill(hi.begin(), hi.end(), uint16_t(0));
      if (k < K) to_bits(lo.data(), w + k * ld, N);
      if (k + 1 < K) to_bits(hi.data(), w + (k + 1) * ld, N);
      for (int64_t n0 = 0; n0 < Np; n0 += NT) {
        uint32_t* t = o + ((n0 / NT) * kb + k / KT) * (KT * NT / 2) + ((k % KT) / 2) * NT;
        for (int64_t n = 0; n < NT; ++n) t[n] = uint32_t(lo[n0 + n]) | (uint32_t(hi[n0 + n]) << 16);
      }
    }
  }
}

#if DRAWCLI_AMX
// Linux hands out AMX's tile state only to processes that ask (arch_prctl ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA); oneDNN asks too, and asking twice is harmless.
inline bool available() {
  static const bool granted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  return granted;
}

struct TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// C (round_up(M, 32) x Np float32, row stride Np = round_up(N, 32); rows past M hold zeros) =
// A (M x K bfloat16 bits, row stride lda) @ B (packed by pack, K x N). Tiles 0-3: a 32 x 32 block
// of C; 4, 5: A's two row tiles; 6, 7: B's two column tiles.
inline void gemm(const uint16_t* a, int64_t lda, int64_t M, int64_t K, const uint16_t* b, int64_t N, float* c) {
  const int64_t Kp = round_up(K, KT), Np = round_up(N, 2 * NT), Mp = round_up(M, 2 * MT), kb = Kp / KT;
  thread_local std::vector<uint16_t> padded;
  if (M != Mp || K != Kp) {  // tiles read whole 16 x 32 blocks: copy A into a zero-padded block
    padded.assign(Mp * Kp, 0);
    for (int64_t m = 0; m < M; ++m) std::memcpy(padded.data() + m * Kp, a + m * lda, sizeof(uint16_t) * K);
    a = padded.data();
    lda = Kp;
  }
  TileConfig cfg{};
  cfg.palette = 1;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
  const int64_t sa = lda * sizeof(uint16_t), sc = Np * sizeof(float);
  for (int64_t n0 = 0; n0 < Np; n0 += 2 * NT) {
    const uint16_t *b0 = b + (n0 / NT) * kb * KT * NT, *b1 = b0 + kb * KT * NT;
    for (int64_t m0 = 0; m0 < Mp; m0 += 2 * MT) {
      const uint16_t *a0 = a + m0 * lda, *a1 = a0 + MT * lda;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t k = 0; k < kb; ++k) {
        _tile_loadd(4, a0 + k * KT, sa);
        _tile_loadd(5, a1 + k * KT, sa);
        _tile_loadd(6, b0 + k * KT * NT, 64);
        _tile_loadd(7, b1 + k * KT * NT, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      float* o = c + m0 * Np + n0;
      _tile_stored(0, o, sc);
      _tile_stored(1, o + NT, sc);
      _tile_stored(2, o + MT * Np, sc);
      _tile_stored(3, o + MT * Np + NT, sc);
    }
  }
  _tile_release();
}
#else
inline bool available() { return false; }
inline void gemm(const uint16_t*, int64_t, int64_t, int64_t, const uint16_t*, int64_t, float*) {}
#endif

// The calling thread's output buffer of gemm for M x N (grown, never shrunk: no page faults per step).
inline float* output(int64_t M, int64_t N) {
  thread_local std::vector<float> c;
  const size_t need = static_cast<size_t>(round_up(M, 2 * MT) * round_up(N, 2 * NT));
  if (c.size() < need) c.resize(need);
  return c.data();
}

}  // namespace amx
}  // namespace drawcli
