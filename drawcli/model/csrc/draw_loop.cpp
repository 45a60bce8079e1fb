// DRAW's time loop (eq 3-8, 17-29) and its backpropagation through time, in C++: the native engine.
//
// The same computation as drawcli/model/python_loop.py (forward) and python_backward.py, with or
// without attention, grey or colour, into buffers laid out as native_loop.py's NativeWorkspace documents,
// so that Python's weight-gradient products and everything after them are shared. What changes:
//   * no Python and one dispatcher call per product: the per-step elementwise work (LSTM cells,
//     filterbanks, read and write) runs as plain loops that the compiler vectorises, with the
//     images of a chunk side by side in the SIMD lanes;
//   * the batch is cut into chunks and each thread runs the whole recurrence of its chunks on its
//     own core (the products then run single-threaded on fewer rows, which costs nothing: a
//     (64 x K) product takes half the time of a (128 x K) one); within a chunk the per-image work
//     runs on blocks of at most 64 images (struct Block), which stay in the cache;
//   * with bfloat16 products, every product input is written in bfloat16 once, when it is made,
//     into buffers that the weight-gradient products read again: no bulk casts.
//   * with bfloat16 products on a CPU with AMX, the LSTM products run on AMX tiles (amx.h) against
//     weights laid out once per call by the op amx_pack (enc_amx ... buffers), with float32 results.
// Two ops, registered below with schemas that name every argument and declare what each op
// writes (Tensor(a!)). The kernels read their arguments by those names (class Args), and
// native_loop.py passes them by name: the schemas are the one list of them.
//   loop_forward: training (every step's buffers kept: T + 1 slots of the inputs, T of the rest)
//     or evaluation (2 slots and 1, reused in turn; also the log ratio of the IWAE bound);
//   loop_backward: backpropagation through a training forward.
// drawcli/model/native_build.py builds this file (torch.utils.cpp_extension); tests/test_native.py checks
// it against draw.py's plain loops (float64 to 1e-10) and the Python engine.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#ifndef DRAWCLI_ABI
#error "DRAWCLI_ABI is defined by drawcli/model/native_build.py, which builds this file"
#endif

#include "amx.h"
#include "kernels.h"

namespace {

using at::Tensor;
using namespace drawcli;

// x @ W^T with W packed once by oneDNN (torch.ops.mkldnn._reorder_linear_weight, in Python): the
// op PyTorch's compiler uses for CPU linear layers, 5-40% faster than at::mm at these shapes.
Tensor packed_linear(const Tensor& x, const Tensor& packed) {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  std::vector<c10::IValue> stack{x, packed, c10::IValue(), std::string("none"), c10::List<std::optional<at::Scalar>>(),
                                 std::string("")};
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// An op's arguments by name, as its schema declares them (TORCH_LIBRARY at the end of this file).
class Args {
 public:
  Args(const c10::OperatorHandle& op, torch::jit::Stack* stack)
      : schema_(op.schema()), stack_(*stack), base_(stack->size() - op.schema().arguments().size()) {}

  // A tensor the op cannot do without.
  Tensor tensor(const char* name) const {
    const c10::IValue* v = find(name);
    TORCH_CHECK(v != nullptr && v->isTensor(), schema_.name(), ": argument ", name, " must be a tensor");
    return v->toTensor();
  }

  // An optional tensor (None), or an argument this op does not take: undefined.
  Tensor optional(const char* name) const {
    const c10::IValue* v = find(name);
    return v != nullptr && v->isTensor() ? v->toTensor() : Tensor();
  }

  double real(const char* name) const { return value(name).toDouble(); }
  bool boolean(const char* name) const { return value(name).toBool(); }
  int64_t integer(const char* name) const { return value(name).toInt(); }
  size_t count() const { return schema_.arguments().size(); }

 private:
  const c10::IValue* find(const char* name) const {
    const auto i = schema_.argumentIndexWithName(name);
    return i ? &stack_[base_ + *i] : nullptr;
  }
  const c10::IValue& value(const char* name) const {
    const c10::IValue* v = find(name);
    TORCH_CHECK(v != nullptr, schema_.name(), ": no argument ", name);
    return *v;
  }
  const c10::FunctionSchema& schema_;
  torch::jit::Stack& stack_;
  size_t base_;
};

// Sizes, all read from the tensors. Per-step buffers have S_in (inputs of the products: the cell
// states, heads, encoder and decoder inputs) or S (everything else) slots; step t uses slot t % S_in
// or t % S, and t + 1 % S_in for what it hands to the next step. Training: S_in = T + 1, S = T;
// evaluation: S_in = 2, S = 1.
// With attention R = 2 C n^2 (r_t, eq 27) and kw = C nw^2 (w_t, eq 28), the heads [w_t | write window
// | read window] (hw = kw + 10); without (eq 17-18) R = C H W (x_hat_t: x's part of r_t = [x, x_hat_t]
// is the same at every step, its product enc_base is made once outside the loop), kw = hw = C H W.
struct Dims {
  bool att;
  int64_t T, B, C, H, W, HW, L, hd, Z, n, nw, kw, R, ke, kd, hw, S_in, S;
};

// ---------------------------------------------------------------- the loop
template <typename T>
T* data(const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

void expect(const Tensor& t, const char* name, at::ScalarType dtype, int64_t numel) {
  TORCH_CHECK(t.defined(), "drawcli loop: ", name, " is missing");
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "drawcli loop: ", name, " must be a contiguous CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, "drawcli loop: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.numel() == numel, "drawcli loop: ", name, " has ", t.numel(), " values, expected ", numel);
}

template <typename T>
struct Loop {
  Dims D;
  bool lowp, log_ratio_on;
  T feps;
  // inputs (x as (B, C, H, W); eps (T, B, Z); the pixel grid (2, L); the filter offsets of eq 19-20)
  const T *x, *eps, *grid, *roff, *woff;
  const T* base = nullptr;  // without attention: (B, 4H), x's part of every step's encoder product
  // weights in layout.py's layout, their bfloat16 copies (or undefined), and the packed ones
  // (or undefined where at::mm runs): forward, and for the input gradients W[:, :inputs]^T
  Tensor enc_w, dec_w, q_w, q_b, heads_w, heads_b, enc_w_lp, dec_w_lp, enc_pk, dec_pk, enc_pk_t, dec_pk_t;
  // or the weights packed for AMX (amx.h; the products then need no bfloat16 copies): forward, and
  // for the input gradients
  Tensor enc_amx, dec_amx, enc_amx_t, dec_amx_t;
  // buffers (native_loop.py's NativeWorkspace documents each)
  Tensor enc_in, dec_in, mu_ls, heads, g_enc, g_dec, enc_lp, dec_lp, g_enc_lp, g_dec_lp;
  T *p_enc_in, *p_dec_in, *c_enc, *c_dec, *p_g_enc, *p_g_dec, *tc_enc, *tc_dec, *se, *p_heads, *p_mu_ls, *xhat, *f_r,
      *f_w, *left, *u, *wdiv, *canvas, *lz, *log_ratio;
  BF *p_enc_lp, *p_dec_lp, *p_g_enc_lp, *p_g_dec_lp;
  int64_t S_lp;  // slots of enc_lp and dec_lp
  // backward: dL/d heads (T + 1, B, hw) and dL/d[mu | log sigma] (T, B, 2Z), written; dL/dc_T (read);
  // dL/dx (written, or null); dL/dL^z (B,); dL/d[mu | log sigma] from outside the loop (or null)
  T *d_heads = nullptr, *dq = nullptr, *dx = nullptr;
  const T *dC = nullptr, *dlz = nullptr, *dmu_ls = nullptr;

  explicit Loop(const Args& a) {
    const Tensor tx = a.tensor("x"), te = a.tensor("eps");
    TORCH_CHECK(tx.dim() == 4 && te.dim() == 3, "drawcli loop: x must be (B, C, H, W) and eps (T, B, Z)");
    const auto dt = tx.scalar_type();
    Dims& d = D;
    d.B = tx.size(0), d.C = tx.size(1), d.H = tx.size(2), d.W = tx.size(3), d.T = te.size(0), d.Z = te.size(2);
    d.HW = d.H * d.W;
    d.L = std::max(d.H, d.W);
    const Tensor tro = a.tensor("read_offsets"), two = a.tensor("write_offsets");
    d.n = tro.numel(), d.nw = two.numel();
    d.att = a.boolean("attention");
    TORCH_CHECK(d.att == (d.n > 0 && d.nw > 0), "drawcli loop: filter offsets come with attention, and only with it");
    TORCH_CHECK(d.n <= NMAX && d.nw <= NMAX, "drawcli loop: read and write sides are at most ", NMAX);
    d.kw = d.att ? d.C * d.nw * d.nw : d.C * d.HW;
    d.R = d.att ? 2 * d.C * d.n * d.n : d.C * d.HW;
    d.hw = d.att ? d.kw + 10 : d.kw;
    enc_w = a.tensor("enc_w"), dec_w = a.tensor("dec_w"), q_w = a.tensor("q_w"), heads_w = a.tensor("heads_w");
    q_b = a.optional("q_b"), heads_b = a.optional("heads_b");
    d.hd = q_w.size(1), d.ke = enc_w.size(1), d.kd = dec_w.size(1);
    g_enc = a.tensor("g_enc"), g_dec = a.tensor("g_dec"), enc_in = a.tensor("enc_in");
    dec_in = a.optional("dec_in"), mu_ls = a.tensor("mu_ls"), heads = a.tensor("heads");
    d.S_in = enc_in.size(0), d.S = g_enc.size(0);
    TORCH_CHECK((d.S_in == d.T + 1 && d.S == d.T) || (d.S_in == 2 && d.S == 1),
                "drawcli loop: buffers must have T + 1 and T slots (training) or 2 and 1 (evaluation)");
    expect(te, "eps", dt, d.T * d.B * d.Z);
    expect(tx, "x", dt, d.B * d.C * d.HW);
    expect(a.tensor("grid"), "grid", dt, 2 * d.L);
    expect(tro, "read_offsets", dt, d.n);
    expect(two, "write_offsets", dt, d.nw);
    TORCH_CHECK(d.ke >= d.R + 2 * d.hd + 1 && d.kd >= d.Z + d.hd + 1, "drawcli loop: weights too narrow for the inputs");
    expect(enc_w, "enc_w", dt, 4 * d.hd * d.ke);
    expect(dec_w, "dec_w", dt, 4 * d.hd * d.kd);
    expect(q_w, "q_w", dt, 2 * d.Z * d.hd);
    expect(heads_w, "heads_w", dt, d.hw * d.hd);
    x = tx.data_ptr<T>(), eps = te.data_ptr<T>(), grid = a.tensor("grid").data_ptr<T>();
    roff = tro.data_ptr<T>(), woff = two.data_ptr<T>();
    enc_w_lp = a.optional("enc_w_lp"), dec_w_lp = a.optional("dec_w_lp");
    enc_amx = a.optional("enc_amx"), dec_amx = a.optional("dec_amx");
    enc_amx_t = a.optional("enc_amx_t"), dec_amx_t = a.optional("dec_amx_t");
    const bool amx_fwd = enc_amx.defined() && dec_amx.defined(), amx_bwd = enc_amx_t.defined() && dec_amx_t.defined();
    lowp = enc_w_lp.defined() || amx_fwd || amx_bwd;
    TORCH_CHECK(!lowp || (std::is_same<T, float>::value && (dec_w_lp.defined() || amx_fwd || amx_bwd)),
                "drawcli loop: bfloat16 products need float32");
    TORCH_CHECK(!(amx_fwd || amx_bwd) || amx::available(), "drawcli loop: AMX weights given, but AMX is not available");
    const int64_t ce = d.R + 2 * d.hd, cd = d.Z + d.hd;
    for (auto [t, name, k, n] : {std::tuple{&enc_amx, "enc_amx", d.ke, 4 * d.hd}, {&dec_amx, "dec_amx", d.kd, 4 * d.hd},
                                 {&enc_amx_t, "enc_amx_t", 4 * d.hd, ce}, {&dec_amx_t, "dec_amx_t", 4 * d.hd, cd}})
      if (t->defined()) expect(*t, name, at::kBFloat16, amx::packed_size(k, n));
    enc_pk = a.optional("enc_pk"), dec_pk = a.optional("dec_pk");
    enc_pk_t = a.optional("enc_pk_t"), dec_pk_t = a.optional("dec_pk_t");
    const int64_t S1 = d.S_in, S = d.S, B = d.B, hd = d.hd;
    expect(enc_in, "enc_in", dt, S1 * B * d.ke);
    if (dec_in.defined()) expect(dec_in, "dec_in", dt, S1 * B * d.kd);
    expect(a.tensor("c_enc"), "c_enc", dt, S1 * B * hd);
    expect(a.tensor("c_dec"), "c_dec", dt, S1 * B * hd);
    expect(heads, "heads", dt, S1 * B * d.hw);
    expect(g_enc, "g_enc", dt, S * B * 4 * hd);
    expect(g_dec, "g_dec", dt, S * B * 4 * hd);
    expect(a.tensor("tc_enc"), "tc_enc", dt, S * B * hd);
    expect(a.tensor("tc_dec"), "tc_dec", dt, S * B * hd);
    expect(a.tensor("se"), "se", dt, S * B * d.Z);
    expect(mu_ls, "mu_ls", dt, S * B * 2 * d.Z);
    expect(a.tensor("xhat"), "xhat", dt, d.att ? S * B * d.C * d.HW : 0);
    expect(a.tensor("f_r"), "f_r", dt, S * B * 2 * d.n * d.L);
    expect(a.tensor("f_w"), "f_w", dt, S * B * 2 * d.nw * d.L);
    expect(a.tensor("left"), "left", dt, S * B * 2 * d.C * d.n * d.W);
    expect(a.tensor("u"), "u", dt, S * B * d.nw * d.C * d.W);
    expect(a.tensor("wdiv"), "wdiv", dt, d.att ? S * B * d.kw : 0);
    const Tensor tbase = a.optional("enc_base");  // forward without attention: x's part of eq 5's product
    if (tbase.defined()) expect(tbase, "enc_base", dt, B * 4 * hd);
    base = data<T>(tbase);
    p_enc_in = data<T>(enc_in), p_dec_in = data<T>(dec_in), p_heads = data<T>(heads), p_mu_ls = data<T>(mu_ls);
    c_enc = data<T>(a.tensor("c_enc")), c_dec = data<T>(a.tensor("c_dec"));
    p_g_enc = data<T>(g_enc), p_g_dec = data<T>(g_dec);
    tc_enc = data<T>(a.tensor("tc_enc")), tc_dec = data<T>(a.tensor("tc_dec")), se = data<T>(a.tensor("se"));
    xhat = data<T>(a.tensor("xhat")), f_r = data<T>(a.tensor("f_r")), f_w = data<T>(a.tensor("f_w"));
    left = data<T>(a.tensor("left")), u = data<T>(a.tensor("u")), wdiv = data<T>(a.tensor("wdiv"));
    const Tensor tcv = a.optional("canvas"), tlz = a.optional("lz"), tlr = a.optional("log_ratio");
    if (tcv.defined()) expect(tcv, "canvas", dt, B * d.C * d.HW);
    if (tlz.defined()) expect(tlz, "lz", dt, B);
    if (tlr.defined()) expect(tlr, "log_ratio", dt, B);
    canvas = data<T>(tcv), lz = data<T>(tlz), log_ratio = data<T>(tlr);
    log_ratio_on = log_ratio != nullptr;
    enc_lp = a.optional("enc_lp"), dec_lp = a.optional("dec_lp");
    g_enc_lp = a.optional("g_enc_lp"), g_dec_lp = a.optional("g_dec_lp");
    S_lp = enc_lp.defined() ? enc_lp.size(0) : 0;
    if (lowp) {
      for (const Tensor* t : {&g_enc_lp, &g_dec_lp})
        TORCH_CHECK(t->defined() && t->scalar_type() == at::kBFloat16 && t->is_contiguous() && t->numel() == S * B * 4 * hd,
                    "drawcli loop: bfloat16 gate buffers of the wrong shape");
      if (enc_lp.defined())
        TORCH_CHECK(enc_lp.scalar_type() == at::kBFloat16 && enc_lp.numel() == S_lp * B * d.ke && dec_lp.defined() &&
                        dec_lp.scalar_type() == at::kBFloat16 && dec_lp.numel() == S_lp * B * d.kd && S_lp >= 2,
                    "drawcli loop: bfloat16 input buffers of the wrong shape");
    }
    p_enc_lp = data<BF>(enc_lp), p_dec_lp = data<BF>(dec_lp), p_g_enc_lp = data<BF>(g_enc_lp), p_g_dec_lp = data<BF>(g_dec_lp);
    feps = static_cast<T>(a.real("filter_eps"));
  }

  T* row(T* base, int64_t slot, int64_t b, int64_t width) const { return base + (slot * D.B + b) * width; }
  static BF* p_lp(const Tensor& t) { return t.data_ptr<BF>(); }
  static const uint16_t* bits(const Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<BF>()); }
  BF* row(BF* base, int64_t slot, int64_t b, int64_t width) const { return base + (slot * D.B + b) * width; }

  // A chunk's block of a per-image buffer of S slots, laid out (S, size, V) with the chunk's V images innermost.
  T* lanes(T* base, int64_t b0, int64_t V, int64_t size, int64_t t) const {
    return base + b0 * D.S * size + (t % D.S) * size * V;
  }

  // dst (cols, V) = src[b0 + v][off + c] (rows of width `width`)
  static void gather(T* dst, const T* src, int64_t b0, int64_t V, int64_t width, int64_t off, int64_t cols) {
    for (int64_t v = 0; v < V; ++v) {
      const T* r = src + (b0 + v) * width + off;
      for (int64_t c = 0; c < cols; ++c) dst[c * V + v] = r[c];
    }
  }

  // rows (B, size) -> lanes (size, V) of images b0 .. b0 + V, and back
  static void to_lanes(T* dst, const T* rows, int64_t b0, int64_t V, int64_t size) {
    for (int64_t v = 0; v < V; ++v)
      for (int64_t k = 0; k < size; ++k) dst[k * V + v] = rows[(b0 + v) * size + k];
  }
  static void from_lanes(T* rows, const T* src, int64_t b0, int64_t V, int64_t size) {
    for (int64_t v = 0; v < V; ++v)
      for (int64_t k = 0; k < size; ++k) rows[(b0 + v) * size + k] = src[k * V + v];
  }

  // One encoder or decoder step for rows [b0, b0 + nb): the product of the input slot si with the
  // weights, then the cell: gates into slot ss of g, c_{t-1} from slot si of c and c_t into si1,
  // tanh(c_t) into slot ss of tc, and h_t into h (row stride h_stride).
  void cell(int64_t si, int64_t si1, int64_t ss, int64_t sl, int64_t b0, int64_t nb, const Tensor& in,
            const Tensor& in_lp, const Tensor& w, const Tensor& w_lp, const Tensor& pk, const Tensor& ab, Tensor& pre_lp,
            const Tensor& gates, T* g, T* c, T* tc, T* h, int64_t h_stride, const T* add = nullptr) {
    const int64_t hd = D.hd;
    // add: rows (B, 4H) added to the product first (enc_base), in the model's dtype, into g's row
    auto finish = [&](auto* pre, int64_t b) {
      using P = std::remove_const_t<std::remove_pointer_t<decltype(pre)>>;
      T* a = row(g, ss, b0 + b, 4 * hd);
      if (add != nullptr) {
        const T* ad = add + (b0 + b) * 4 * hd;
        IVDEP
        for (int64_t j = 0; j < 4 * hd; ++j) a[j] = as<T>(pre[j]) + ad[j];
        lstm_forward<T, T>(a, a, row(c, si, b0 + b, hd), row(c, si1, b0 + b, hd), row(tc, ss, b0 + b, hd),
                           h + (b0 + b) * h_stride, hd);
        return;
      }
      lstm_forward<T, P>(pre, a, row(c, si, b0 + b, hd), row(c, si1, b0 + b, hd), row(tc, ss, b0 + b, hd),
                         h + (b0 + b) * h_stride, hd);
    };
    if (ab.defined()) {  // AMX: float32 results (amx.h)
      const int64_t k = in_lp.size(2), n = 4 * hd;
      float* pre = amx::output(nb, n);
      amx::gemm(reinterpret_cast<const uint16_t*>(row(p_lp(in_lp), sl, b0, k)), k, nb, k, bits(ab), n, pre);
      if constexpr (std::is_same<T, float>::value)
        for (int64_t b = 0; b < nb; ++b) finish(pre + b * amx::round_up(n, 2 * amx::NT), b);
    } else if (lowp) {
      if (pk.defined())
        pre_lp = packed_linear(in_lp[sl].narrow(0, b0, nb), pk);
      else
        at::mm_out(pre_lp, in_lp[sl].narrow(0, b0, nb), w_lp.t());
      const BF* pre = pre_lp.data_ptr<BF>();
      for (int64_t b = 0; b < nb; ++b) finish(pre + b * 4 * hd, b);
    } else if (pk.defined()) {
      const Tensor pre_t = packed_linear(in[si].narrow(0, b0, nb), pk);
      const T* pre = pre_t.data_ptr<T>();
      for (int64_t b = 0; b < nb; ++b) finish(pre + b * 4 * hd, b);
    } else {
      Tensor pre = gates[ss].narrow(0, b0, nb);
      at::mm_out(pre, in[si].narrow(0, b0, nb), w.t());
      for (int64_t b = 0; b < nb; ++b) finish(const_cast<const T*>(row(g, ss, b0 + b, 4 * hd)), b);
    }
  }

  // A block of a chunk's images, side by side in the SIMD lanes: the per-image work (read, write,
  // filterbanks) runs on blocks of at most LANES images, so that its arrays stay in the cache,
  // while the products run on the whole chunk. Lanes are independent: the cut changes no number,
  // but backward must cut as forward did (it reads the lane buffers block by block).
  static constexpr int64_t LANES = 64;
  struct Block {
    int64_t b0, V;
    std::vector<T> xs, cv;  // x and the canvas (forward) or dL/dc (backward), as (C, H, W, V)
    std::vector<T> dx;      // backward: dL/dx as (C, H, W, V), or empty
  };

  std::vector<Block> blocks(int64_t b0, int64_t nb, bool with_dx) const {
    const int64_t CHW = D.C * D.HW, count = (nb + LANES - 1) / LANES, per = (nb + count - 1) / count;
    std::vector<Block> out;
    for (int64_t s = b0; s < b0 + nb; s += per) {
      const int64_t V = std::min(per, b0 + nb - s);
      Block blk{s, V, std::vector<T>(CHW * V), std::vector<T>(CHW * V, T(0)), std::vector<T>(with_dx ? CHW * V : 0, T(0))};
      to_lanes(blk.xs.data(), x, s, V, CHW);
      out.push_back(std::move(blk));
    }
    return out;
  }

  // Scratch of one block's per-image work, sized for the largest block.
  struct Scratch {
    std::vector<T> win, gsum, out4, df, du, dg, dleft;
  };

  Scratch scratch(bool backward) const {
    const Dims& d = D;
    const int64_t V = LANES, nmax = std::max(d.n, d.nw);
    Scratch s{std::vector<T>(5 * V), std::vector<T>(V), std::vector<T>(4 * V), {}, {}, {}, {}};
    if (backward && d.att) {
      s.df.resize(2 * nmax * d.L * V);
      s.du.resize(d.nw * d.C * d.W * V);
      s.dg.resize(d.R * V);
      s.dleft.resize(2 * d.C * d.n * d.W * V);
    }
    return s;
  }

  // eq 3 and the read, eq 27 (window from h^dec_{t-1}, heads slot si), for one block: r_t into the
  // encoder input slot si (and its bfloat16 copy, slot sl).
  void read(Block& blk, Scratch& sc, int64_t t, int64_t si, int64_t sl) {
    const Dims& d = D;
    const int64_t C = d.C, H = d.H, W = d.W, CHW = C * d.HW, L = d.L, n = d.n, b0 = blk.b0, V = blk.V;
    const T *xs = blk.xs.data(), *cv = blk.cv.data();
    T* win = sc.win.data();
    T* xh = lanes(xhat, b0, V, CHW, t);  // (C, H, W, V)
    IVDEP
    for (int64_t k = 0; k < CHW * V; ++k) xh[k] = xs[k] - sigm<T>(cv[k]);
    gather(win, p_heads + si * d.B * d.hw, b0, V, d.hw, d.kw + 5, 5);
    T* fr = lanes(f_r, b0, V, 2 * n * L, t);
    filters<T>(win, roff, grid, n, L, W, H, V, feps, fr);
    const T *fx = fr, *fy = fr + n * L * V;
    // left: rows (i, image q) with q = the C channels of x, then those of x_hat: F_Y x_q, (n, 2C, W, V),
    // summed over the image rows h in one pass over the pixels (F_Y's column h in the tile array fh)
    T* lf = lanes(left, b0, V, 2 * C * n * W, t);
    std::fill(lf, lf + 2 * C * n * W * V, T(0));
    for (int64_t h = 0; h < H; ++h)
      tiles<T>(V, [&](int64_t v0, auto nv) {
        T fh[NMAX * Tile<T>];
        for (int64_t i = 0; i < n; ++i)
          for (int64_t u = 0; u < nv; ++u) fh[i * Tile<T> + u] = fy[(i * L + h) * V + v0 + u];
        for (int64_t c = 0; c < C; ++c)
          for (int64_t w = 0; w < W; ++w) {
            const T *xv = xs + ((c * H + h) * W + w) * V + v0, *hv = xh + ((c * H + h) * W + w) * V + v0;
            for (int64_t i = 0; i < n; ++i) {
              const T* f = fh + i * Tile<T>;
              T *lx = lf + ((i * 2 * C + c) * W + w) * V + v0, *lh = lf + ((i * 2 * C + C + c) * W + w) * V + v0;
              for (int64_t u = 0; u < nv; ++u) {
                lx[u] += f[u] * xv[u];
                lh[u] += f[u] * hv[u];
              }
            }
          }
      });
    T* r = row(p_enc_in, si, b0, d.ke);
    for (int64_t p = 0; p < 2 * C * n; ++p)  // eq 27: gamma F_Y x F_X^T, read_glimpse's layout (i, q, j)
      for (int64_t j = 0; j < n; ++j)
        tiles<T>(V, [&](int64_t v0, auto nv) {
          T acc[Tile<T>] = {};
          for (int64_t w = 0; w < W; ++w) {
            const T *a = lf + (p * W + w) * V + v0, *f = fx + (j * L + w) * V + v0;
            for (int64_t u = 0; u < nv; ++u) acc[u] += a[u] * f[u];
          }
          for (int64_t u = 0; u < nv; ++u) r[(v0 + u) * d.ke + p * n + j] = win[4 * V + v0 + u] * acc[u];
        });
    if (lowp)
      for (int64_t b = b0; b < b0 + V; ++b) to_lp(row(p_enc_lp, sl, b, d.ke), row(p_enc_in, si, b, d.ke), d.R);
  }

  // The write of step t, eq 8, 29 (window and patch from the heads slot si1), for one block.
  void write(Block& blk, Scratch& sc, int64_t t, int64_t si1) {
    const Dims& d = D;
    const int64_t C = d.C, H = d.H, W = d.W, L = d.L, nw = d.nw, kw = d.kw, b0 = blk.b0, V = blk.V;
    T* cv = blk.cv.data();
    T* win = sc.win.data();
    const T* hrows = p_heads + si1 * d.B * d.hw;
    gather(win, hrows, b0, V, d.hw, kw, 5);
    T* fw = lanes(f_w, b0, V, 2 * nw * L, t);
    filters<T>(win, woff, grid, nw, L, W, H, V, feps, fw);
    const T *wfx = fw, *wfy = fw + nw * L * V;
    T* wd = lanes(wdiv, b0, V, kw, t);  // w / gamma, (N, C, N, V): the patch rows as layout.py orders them
    gather(wd, hrows, b0, V, d.hw, 0, kw);
    for (int64_t k = 0; k < kw; ++k) {
      IVDEP
      for (int64_t v = 0; v < V; ++v) wd[k * V + v] /= win[4 * V + v];
    }
    T* ub = lanes(u, b0, V, nw * C * W, t);  // (w / gamma) F_X, (N, C, W, V)
    for (int64_t i = 0; i < nw; ++i)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t w = 0; w < W; ++w)
          tiles<T>(V, [&](int64_t v0, auto nv) {
            T acc[Tile<T>] = {};
            for (int64_t j = 0; j < nw; ++j) {
              const T *k = wd + ((i * C + c) * nw + j) * V + v0, *f = wfx + (j * L + w) * V + v0;
              for (int64_t u = 0; u < nv; ++u) acc[u] += k[u] * f[u];
            }
            T* o = ub + ((i * C + c) * W + w) * V + v0;
            for (int64_t u = 0; u < nv; ++u) o[u] = acc[u];
          });
    for (int64_t c = 0; c < C; ++c)  // eq 8, 29: c_t = c_{t-1} + F_Y^T (w / gamma) F_X, every channel
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w)
          tiles<T>(V, [&](int64_t v0, auto nv) {
            T* o = cv + ((c * H + h) * W + w) * V + v0;
            T acc[Tile<T>];
            for (int64_t u = 0; u < nv; ++u) acc[u] = o[u];
            for (int64_t i = 0; i < nw; ++i) {
              const T *f = wfy + (i * L + h) * V + v0, *uv = ub + ((i * C + c) * W + w) * V + v0;
              for (int64_t u = 0; u < nv; ++u) acc[u] += f[u] * uv[u];
            }
            for (int64_t u = 0; u < nv; ++u) o[u] = acc[u];
          });
  }

  // Without attention (eq 17-18) the per-image work is elementwise: a chunk's images stay rows, in the
  // (H, C, W) order of layout.py (the encoder's x_hat columns and the write head's rows), so that x_hat_t
  // goes straight into the encoder input and w_t straight onto the canvas.
  struct Plain {
    std::vector<T> xr, cv, dx;  // x, the canvas (forward) or dL/dc (backward), dL/dx: (nb, H, C, W)
  };

  // (B, C, H, W) rows <-> the chunk's (nb, H, C, W) rows
  void hcw_in(T* dst, const T* src, int64_t b0, int64_t nb) const {
    const int64_t C = D.C, H = D.H, W = D.W, CHW = C * D.HW;
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h)
          std::copy(src + (b0 + b) * CHW + (c * H + h) * W, src + (b0 + b) * CHW + (c * H + h + 1) * W,
                    dst + b * CHW + (h * C + c) * W);
  }
  void hcw_out(T* dst, const T* src, int64_t b0, int64_t nb) const {
    const int64_t C = D.C, H = D.H, W = D.W, CHW = C * D.HW;
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t h = 0; h < H; ++h)
          std::copy(src + b * CHW + (h * C + c) * W, src + b * CHW + (h * C + c + 1) * W,
                    dst + (b0 + b) * CHW + (c * H + h) * W);
  }

  Plain plain(int64_t b0, int64_t nb, bool with_dx) const {
    const int64_t CHW = D.C * D.HW;
    Plain p{std::vector<T>(nb * CHW), std::vector<T>(nb * CHW, T(0)), std::vector<T>(with_dx ? nb * CHW : 0, T(0))};
    hcw_in(p.xr.data(), x, b0, nb);
    return p;
  }

  // eq 3 and 17: x_hat_t = x - sigmoid(c_{t-1}) into the encoder input slot si (and its bfloat16 copy, slot sl)
  void read_plain(const Plain& p, int64_t b0, int64_t nb, int64_t si, int64_t sl) {
    const int64_t CHW = D.C * D.HW;
    for (int64_t b = 0; b < nb; ++b) {
      const T *xv = p.xr.data() + b * CHW, *cv = p.cv.data() + b * CHW;
      T* r = row(p_enc_in, si, b0 + b, D.ke);
      IVDEP
      for (int64_t k = 0; k < CHW; ++k) r[k] = xv[k] - sigm<T>(cv[k]);
      if (lowp) to_lp(row(p_enc_lp, sl, b0 + b, D.ke), r, CHW);
    }
  }

  // eq 8, 18: c_t = c_{t-1} + w_t (the heads slot si1)
  void write_plain(Plain& p, int64_t b0, int64_t nb, int64_t si1) {
    const int64_t CHW = D.C * D.HW;
    for (int64_t b = 0; b < nb; ++b) {
      const T* w = row(p_heads, si1, b0 + b, D.hw);
      T* cv = p.cv.data() + b * CHW;
      IVDEP
      for (int64_t k = 0; k < CHW; ++k) cv[k] += w[k];
    }
  }

  void forward_chunk(int64_t b0, int64_t nb) {
    const Dims& d = D;
    const int64_t CHW = d.C * d.HW, R = d.R, hd = d.hd, Z = d.Z, kw = d.kw;
    Tensor pre_lp = lowp ? at::empty({nb, 4 * hd}, enc_in.options().dtype(at::kBFloat16)) : Tensor();
    std::vector<Block> blks = d.att ? blocks(b0, nb, false) : std::vector<Block>();
    Plain pl = d.att ? Plain() : plain(b0, nb, false);
    Scratch sc = scratch(false);
    std::fill(lz + b0, lz + b0 + nb, T(0));
    if (log_ratio_on) std::fill(log_ratio + b0, log_ratio + b0 + nb, T(0));
    for (int64_t t = 0; t < d.T; ++t) {
      const int64_t si = t % d.S_in, si1 = (t + 1) % d.S_in, ss = t % d.S;
      const int64_t sl = lowp ? t % S_lp : 0, sl1 = lowp ? (t + 1) % S_lp : 0;
      const bool next_lp = lowp && t + 1 < d.T;
      if (d.att)
        for (Block& blk : blks) read(blk, sc, t, si, sl);
      else
        read_plain(pl, b0, nb, si, sl);
      // eq 5: the encoder; h^enc_t goes to the next slot's encoder input
      T* next = p_enc_in + si1 * d.B * d.ke;
      cell(si, si1, ss, sl, b0, nb, enc_in, enc_lp, enc_w, enc_w_lp, enc_pk, enc_amx, pre_lp, g_enc, p_g_enc, c_enc, tc_enc,
           next + R + hd, d.ke, base);
      if (next_lp)
        for (int64_t b = b0; b < b0 + nb; ++b)
          to_lp(row(p_enc_lp, sl1, b, d.ke) + R + hd, row(p_enc_in, si1, b, d.ke) + R + hd, hd);
      // eq 1-2, 6: q and z; eq 11 per step, and the IWAE log ratio, as the loop goes
      Tensor mu_rows = mu_ls[ss].narrow(0, b0, nb);
      at::addmm_out(mu_rows, q_b, enc_in[si1].narrow(0, b0, nb).narrow(1, R + hd, hd), q_w.t());
      for (int64_t b = b0; b < b0 + nb; ++b) {
        const T* ml = row(p_mu_ls, ss, b, 2 * Z);
        const T* e = eps + (t * d.B + b) * Z;
        T* s = row(se, ss, b, Z);
        T* z = row(p_dec_in, si, b, d.kd);
        T kl = 0, lr = 0;  // 1/2 sum_z (mu^2 + sigma^2 - log sigma^2 - 1); sum_z log q(z) - log p(z)
        IVDEP
        for (int64_t k = 0; k < Z; ++k) {
          const T sig = std::exp(ml[Z + k]);
          s[k] = sig * e[k];
          z[k] = ml[k] + s[k];
          kl += ml[k] * ml[k] + sig * sig - T(2) * ml[Z + k] - T(1);
          lr += T(0.5) * z[k] * z[k] - T(0.5) * e[k] * e[k] - ml[Z + k];
        }
        lz[b] += T(0.5) * kl;
        if (log_ratio_on) log_ratio[b] += lr;
        if (lowp) to_lp(row(p_dec_lp, sl, b, d.kd), z, Z);
      }
      // eq 7: the decoder; h^dec_t goes to the next slot's encoder and decoder inputs
      cell(si, si1, ss, sl, b0, nb, dec_in, dec_lp, dec_w, dec_w_lp, dec_pk, dec_amx, pre_lp, g_dec, p_g_dec, c_dec, tc_dec,
           next + R, d.ke);
      for (int64_t b = b0; b < b0 + nb; ++b) {
        const T* h = row(p_enc_in, si1, b, d.ke) + R;
        std::copy(h, h + hd, row(p_dec_in, si1, b, d.kd) + Z);
        if (next_lp) {
          to_lp(row(p_enc_lp, sl1, b, d.ke) + R, h, hd);
          to_lp(row(p_dec_lp, sl1, b, d.kd) + Z, h, hd);
        }
      }
      // eq 18/28, 21: the heads over h^dec_t, then the write
      Tensor head_rows = heads[si1].narrow(0, b0, nb);
      at::addmm_out(head_rows, heads_b, enc_in[si1].narrow(0, b0, nb).narrow(1, R, hd), heads_w.t());
      if (!d.att) {
        write_plain(pl, b0, nb, si1);
        continue;
      }
      for (int64_t b = b0; b < b0 + nb; ++b) {
        T* hh = row(p_heads, si1, b, d.hw);
        for (int64_t k = 2; k < 5; ++k) {  // delta, sigma^2, gamma from their logs
          hh[kw + k] = std::exp(hh[kw + k]);
          hh[kw + 5 + k] = std::exp(hh[kw + 5 + k]);
        }
      }
      for (Block& blk : blks) write(blk, sc, t, si1);
    }
    if (d.att)
      for (const Block& blk : blks) from_lanes(canvas, blk.cv.data(), blk.b0, blk.V, CHW);  // c_T, one image per row
    else
      hcw_out(canvas, pl.cv.data(), b0, nb);
  }

  // backward ------------------------------------------------------------------------
  // d_out (nb x cols) = g (nb x 4hd) @ w[:, :cols], from the gate gradients of step t
  void input_grads(int64_t t, int64_t b0, int64_t nb, const Tensor& gates, const Tensor& g_lp, const Tensor& w,
                   const Tensor& w_lp, const Tensor& pk, const Tensor& ab, int64_t cols, Tensor& out, Tensor& out_lp) {
    if (ab.defined()) {  // AMX: float32 results (amx.h)
      const int64_t k = 4 * D.hd, np = amx::round_up(cols, 2 * amx::NT);
      float* res = amx::output(nb, cols);
      amx::gemm(reinterpret_cast<const uint16_t*>(row(p_lp(g_lp), t, b0, k)), k, nb, k, bits(ab), cols, res);
      T* o = out.data_ptr<T>();
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t j = 0; j < cols; ++j) o[b * cols + j] = static_cast<T>(res[b * np + j]);
    } else if (lowp) {
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

  // Backward of the write of step t (eq 8, 29) for one block: dL/dc_t (blk.cv) reaches it unchanged;
  // dL/d heads over h^dec_t into d_heads slot t + 1.
  void write_backward(Block& blk, Scratch& sc, int64_t t) {
    const Dims& d = D;
    const int64_t C = d.C, H = d.H, W = d.W, L = d.L, nw = d.nw, kw = d.kw, b0 = blk.b0, V = blk.V;
    const T* dcv = blk.cv.data();
    T* win = sc.win.data();
    gather(win, p_heads + (t + 1) * d.B * d.hw, b0, V, d.hw, kw, 5);
    const T* fw = lanes(f_w, b0, V, 2 * nw * L, t);
    const T *fx = fw, *fy = fw + nw * L * V;
    const T* ub = lanes(u, b0, V, nw * C * W, t);
    const T* wd = lanes(wdiv, b0, V, kw, t);
    T *dfx = sc.df.data(), *dfy = sc.df.data() + nw * L * V, *du = sc.du.data();
    // dL/du = F_Y dC and dL/dF_Y = sum_c u_c dC_c^T in one pass over dC (each pixel read once): F_Y's
    // column h and the sums of dL/dF_Y[:, h] stay in the tile arrays fh and sy while row h goes by.
    std::fill(du, du + nw * C * W * V, T(0));
    for (int64_t h = 0; h < H; ++h)
      tiles<T>(V, [&](int64_t v0, auto nv) {
        T fh[NMAX * Tile<T>], sy[NMAX * Tile<T>];
        for (int64_t i = 0; i < nw; ++i)
          for (int64_t u = 0; u < nv; ++u) {
            fh[i * Tile<T> + u] = fy[(i * L + h) * V + v0 + u];
            sy[i * Tile<T> + u] = T(0);
          }
        for (int64_t c = 0; c < C; ++c)
          for (int64_t w = 0; w < W; ++w) {
            const T* g = dcv + ((c * H + h) * W + w) * V + v0;
            for (int64_t i = 0; i < nw; ++i) {
              const int64_t k = ((i * C + c) * W + w) * V + v0;
              const T *f = fh + i * Tile<T>, *uv = ub + k;
              T *o = du + k, *y = sy + i * Tile<T>;
              for (int64_t u = 0; u < nv; ++u) {
                o[u] += f[u] * g[u];
                y[u] += uv[u] * g[u];
              }
            }
          }
        for (int64_t i = 0; i < nw; ++i)
          for (int64_t u = 0; u < nv; ++u) dfy[(i * L + h) * V + v0 + u] = sy[i * Tile<T> + u];
      });
    for (int64_t j = 0; j < nw; ++j)  // dL/dF_X = sum_(i, c) (w / gamma)_(i, c, j) du_(i, c)
      for (int64_t w = 0; w < W; ++w)
        tiles<T>(V, [&](int64_t v0, auto nv) {
          T acc[Tile<T>] = {};
          for (int64_t ic = 0; ic < nw * C; ++ic) {
            const T *k = wd + (ic * nw + j) * V + v0, *g = du + (ic * W + w) * V + v0;
            for (int64_t u = 0; u < nv; ++u) acc[u] += k[u] * g[u];
          }
          T* o = dfx + (j * L + w) * V + v0;
          for (int64_t u = 0; u < nv; ++u) o[u] = acc[u];
        });
    T* dhh = d_heads + ((t + 1) * d.B + b0) * d.hw;
    T* gsum = sc.gsum.data();
    std::fill(gsum, gsum + V, T(0));
    for (int64_t ic = 0; ic < nw * C; ++ic)
      for (int64_t j = 0; j < nw; ++j)
        tiles<T>(V, [&](int64_t v0, auto nv) {
          T acc[Tile<T>] = {};  // dL/d(w / gamma) = du F_X^T
          for (int64_t w = 0; w < W; ++w) {
            const T *g = du + (ic * W + w) * V + v0, *f = fx + (j * L + w) * V + v0;
            for (int64_t u = 0; u < nv; ++u) acc[u] += g[u] * f[u];
          }
          const T* k = wd + (ic * nw + j) * V + v0;
          for (int64_t u = 0; u < nv; ++u) {
            gsum[v0 + u] += acc[u] * k[u];
            dhh[(v0 + u) * d.hw + ic * nw + j] = acc[u] / win[4 * V + v0 + u];
          }
        });
    T* out4 = sc.out4.data();
    filters_backward<T>(sc.df.data(), fw, win, woff, grid, nw, L, W, H, V, out4);
    for (int64_t v = 0; v < V; ++v) {
      T* o = dhh + v * d.hw + kw;
      for (int64_t k = 0; k < 4; ++k) o[k] = out4[k * V + v];
      o[4] = -gsum[v];  // dL/d log gamma: w / gamma
    }
  }

  // Backward of the read of step t (eq 27) and of x_hat = x - sigmoid(c_{t-1}) (eq 3) for one block,
  // from dL/dr_t in dr (rows of width ce, the block's first at dr): dL/d read window into d_heads
  // slot t, dL/dc_{t-1} into blk.cv, dL/dx into blk.dx.
  void read_backward(Block& blk, Scratch& sc, int64_t t, const T* dr, int64_t ce) {
    const Dims& d = D;
    const int64_t C = d.C, H = d.H, W = d.W, CHW = C * d.HW, L = d.L, R = d.R, n = d.n, b0 = blk.b0, V = blk.V;
    const T* xs = blk.xs.data();
    T *dcv = blk.cv.data(), *dxv = blk.dx.empty() ? nullptr : blk.dx.data();
    T *win = sc.win.data(), *dg = sc.dg.data(), *dleft = sc.dleft.data();
    gather(win, p_heads + t * d.B * d.hw, b0, V, d.hw, d.kw + 5, 5);
    const T* fr = lanes(f_r, b0, V, 2 * n * L, t);
    const T *fx = fr, *fy = fr + n * L * V;
    const T* lf = lanes(left, b0, V, 2 * C * n * W, t);
    const T* xh = lanes(xhat, b0, V, CHW, t);
    T* gsum = sc.gsum.data();
    for (int64_t v = 0; v < V; ++v) {
      const T* g = dr + v * ce;
      const T* r = row(p_enc_in, t, b0 + v, d.ke);
      T s = 0;
      for (int64_t k = 0; k < R; ++k) {
        s += g[k] * r[k];  // dL/d log gamma (r = gamma G)
        dg[k * V + v] = g[k] * win[4 * V + v];
      }
      gsum[v] = s;
    }
    T *dfx = sc.df.data(), *dfy = sc.df.data() + n * L * V;
    for (int64_t p = 0; p < 2 * C * n; ++p)  // dL/dleft = dG F_X
      for (int64_t w = 0; w < W; ++w)
        tiles<T>(V, [&](int64_t v0, auto nv) {
          T acc[Tile<T>] = {};
          for (int64_t j = 0; j < n; ++j) {
            const T *k = dg + (p * n + j) * V + v0, *f = fx + (j * L + w) * V + v0;
            for (int64_t u = 0; u < nv; ++u) acc[u] += k[u] * f[u];
          }
          T* o = dleft + (p * W + w) * V + v0;
          for (int64_t u = 0; u < nv; ++u) o[u] = acc[u];
        });
    for (int64_t j = 0; j < n; ++j)  // dL/dF_X = dG^T left
      for (int64_t w = 0; w < W; ++w)
        tiles<T>(V, [&](int64_t v0, auto nv) {
          T acc[Tile<T>] = {};
          for (int64_t p = 0; p < 2 * C * n; ++p) {
            const T *k = dg + (p * n + j) * V + v0, *lv = lf + (p * W + w) * V + v0;
            for (int64_t u = 0; u < nv; ++u) acc[u] += k[u] * lv[u];
          }
          T* o = dfx + (j * L + w) * V + v0;
          for (int64_t u = 0; u < nv; ++u) o[u] = acc[u];
        });
    // Through F_Y, per pixel (c, h, w): dL/dx_hat = sum_i F_Y[i, h] dleft_(i, x_hat), dL/dx likewise plus
    // dL/dx_hat (x_hat = x - sigmoid(c_{t-1}), eq 3), dL/dc_{t-1} -= dL/dx_hat sigmoid'; and
    // dL/dF_Y[i, h] = sum_(c, w) dleft_i [x | x_hat]. F_Y's column h and the sums of dL/dF_Y stay in
    // the tile arrays fh and sy (n x Tile values) while the pixels of row h go by.
    for (int64_t h = 0; h < H; ++h)
      tiles<T>(V, [&](int64_t v0, auto nv) {
        T fh[NMAX * Tile<T>], sy[NMAX * Tile<T>];
        for (int64_t i = 0; i < n; ++i)
          for (int64_t u = 0; u < nv; ++u) {
            fh[i * Tile<T> + u] = fy[(i * L + h) * V + v0 + u];
            sy[i * Tile<T> + u] = T(0);
          }
        for (int64_t c = 0; c < C; ++c)
          for (int64_t w = 0; w < W; ++w) {
            const int64_t k = ((c * H + h) * W + w) * V + v0;
            const T *xv = xs + k, *hv = xh + k;
            T ax[Tile<T>] = {}, ah[Tile<T>] = {};
            for (int64_t i = 0; i < n; ++i) {
              const T *dlx = dleft + ((i * 2 * C + c) * W + w) * V + v0, *dlh = dleft + ((i * 2 * C + C + c) * W + w) * V + v0;
              const T* f = fh + i * Tile<T>;
              T* o = sy + i * Tile<T>;
              for (int64_t u = 0; u < nv; ++u) {
                ax[u] += f[u] * dlx[u];
                ah[u] += f[u] * dlh[u];
                o[u] += dlx[u] * xv[u] + dlh[u] * hv[u];
              }
            }
            T* g = dcv + k;
            for (int64_t u = 0; u < nv; ++u) {
              const T sg = xv[u] - hv[u];  // sigmoid(c_{t-1})
              g[u] -= ah[u] * sg * (T(1) - sg);
            }
            if (dxv)
              for (int64_t u = 0; u < nv; ++u) dxv[k + u] += ax[u] + ah[u];
          }
        for (int64_t i = 0; i < n; ++i)
          for (int64_t u = 0; u < nv; ++u) dfy[(i * L + h) * V + v0 + u] = sy[i * Tile<T> + u];
      });
    T* out4 = sc.out4.data();
    filters_backward<T>(sc.df.data(), fr, win, roff, grid, n, L, W, H, V, out4);
    T* dhr = d_heads + (t * d.B + b0) * d.hw + d.kw + 5;
    for (int64_t v = 0; v < V; ++v) {
      for (int64_t k = 0; k < 4; ++k) dhr[v * d.hw + k] = out4[k * V + v];
      dhr[v * d.hw + 4] = gsum[v];
    }
  }

  // Backward of read_plain at step t (eq 3, 17) from dL/dx_hat_t (dr, rows of width ce): dL/dc_{t-1} into
  // p.cv, dL/dx into p.dx. sigmoid(c_{t-1}) = x - x_hat_t, from the encoder input slot t.
  void read_backward_plain(Plain& p, int64_t t, int64_t b0, int64_t nb, const T* dr, int64_t ce) {
    const int64_t CHW = D.C * D.HW;
    const bool with_dx = !p.dx.empty();
    for (int64_t b = 0; b < nb; ++b) {
      const T *g = dr + b * ce, *xv = p.xr.data() + b * CHW, *xh = row(p_enc_in, t, b0 + b, D.ke);
      T* dc = p.cv.data() + b * CHW;
      IVDEP
      for (int64_t k = 0; k < CHW; ++k) {
        const T sg = xv[k] - xh[k];
        dc[k] -= g[k] * sg * (T(1) - sg);
      }
      if (with_dx) {
        T* o = p.dx.data() + b * CHW;
        IVDEP
        for (int64_t k = 0; k < CHW; ++k) o[k] += g[k];
      }
    }
  }

  void backward_chunk(int64_t b0, int64_t nb) {
    const Dims& d = D;
    const int64_t CHW = d.C * d.HW, R = d.R, hd = d.hd, Z = d.Z;
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
    std::vector<Block> blks = d.att ? blocks(b0, nb, dx != nullptr) : std::vector<Block>();
    for (Block& blk : blks) to_lanes(blk.cv.data(), dC, blk.b0, blk.V, CHW);  // dL/dc_T, then dL/dc_t as t goes down
    Plain pl = d.att ? Plain() : plain(b0, nb, dx != nullptr);
    if (!d.att) hcw_in(pl.cv.data(), dC, b0, nb);
    Scratch sc = scratch(true);
    T* pdh = dh.data_ptr<T>();
    T *pdce = dc_enc.data_ptr<T>(), *pdcd = dc_dec.data_ptr<T>();
    int cur = 0;
    for (int64_t t = d.T - 1; t >= 0; --t) {
      const T* ei_next = dei[1 - cur].data_ptr<T>();
      const T* di_next = ddi[1 - cur].data_ptr<T>();
      if (d.att)
        for (Block& blk : blks) write_backward(blk, sc, t);
      else  // eq 8, 18: dL/dw_t = dL/dc_t
        for (int64_t b = 0; b < nb; ++b)
          std::copy(pl.cv.data() + b * CHW, pl.cv.data() + (b + 1) * CHW, d_heads + ((t + 1) * d.B + b0 + b) * d.hw);
      // h^dec_t feeds the heads and step t+1's encoder and decoder
      for (int64_t b = 0; b < nb; ++b) {
        const T *a = ei_next + b * ce + R, *c = di_next + b * cd + Z;
        T* o = pdh + b * hd;
        IVDEP
        for (int64_t j = 0; j < hd; ++j) o[j] = a[j] + c[j];
      }
      dh.addmm_(at::from_blob(row(d_heads, t + 1, b0, d.hw), {nb, d.hw}, opt), heads_w);
      cell_backward(t, b0, nb, p_g_dec, p_g_dec_lp, c_dec, tc_dec, pdh, pdcd);
      input_grads(t, b0, nb, g_dec, g_dec_lp, dec_w, dec_w_lp, dec_pk_t, dec_amx_t, cd, ddi[cur], di_lp);  // [dz_t | dh^dec_{t-1}]
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
          const T* o = dmu_ls + (t * d.B + b0 + b) * 2 * Z;
          IVDEP
          for (int64_t k = 0; k < 2 * Z; ++k) q[k] += o[k];
        }
      }
      // h^enc_t feeds q and step t+1's encoder
      for (int64_t b = 0; b < nb; ++b) std::copy(ei_next + b * ce + R + hd, ei_next + b * ce + R + 2 * hd, pdh + b * hd);
      dh.addmm_(at::from_blob(row(dq, t, b0, 2 * Z), {nb, 2 * Z}, opt), q_w);
      cell_backward(t, b0, nb, p_g_enc, p_g_enc_lp, c_enc, tc_enc, pdh, pdce);
      input_grads(t, b0, nb, g_enc, g_enc_lp, enc_w, enc_w_lp, enc_pk_t, enc_amx_t, ce, dei[cur], ei_lp);  // [dr_t | dh^dec | dh^enc]
      const T* dr = dei[cur].data_ptr<T>();
      if (d.att)
        for (Block& blk : blks) read_backward(blk, sc, t, dr + (blk.b0 - b0) * ce, ce);
      else
        read_backward_plain(pl, t, b0, nb, dr, ce);
      cur = 1 - cur;
    }
    if (dx && d.att)
      for (const Block& blk : blks) from_lanes(dx, blk.dx.data(), blk.b0, blk.V, CHW);
    else if (dx)
      hcw_out(dx, pl.dx.data(), b0, nb);
  }
};

// Rows per chunk: the batch cut into `chunks` (none under 8 rows; native_loop.py chooses them, and
// backward must cut the batch as its forward did: the lane buffers are laid out per chunk), run
// side by side on the threads.
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

void loop_forward(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  {
    const Args a(op, stack);
    at::NoGradGuard no_grad;
    AT_DISPATCH_FLOATING_TYPES(a.tensor("x").scalar_type(), "drawcli::loop_forward", [&] {
      Loop<scalar_t> lp(a);
      TORCH_CHECK(lp.canvas != nullptr && lp.lz != nullptr && lp.D.kd >= lp.D.Z + lp.D.hd + 1, "drawcli loop: outputs missing");
      TORCH_CHECK(!lp.lowp || lp.p_enc_lp != nullptr, "drawcli loop: bfloat16 products need enc_lp and dec_lp");
      TORCH_CHECK(lp.D.att == (lp.base == nullptr), "drawcli loop: enc_base comes without attention, and only without it");
      over_chunks(lp.D.B, a.integer("chunks"), [&](int64_t b0, int64_t nb) { lp.forward_chunk(b0, nb); });
    });
  }
  torch::jit::drop(*stack, op.schema().arguments().size());
}

void loop_backward(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  {
    const Args a(op, stack);
    at::NoGradGuard no_grad;
    AT_DISPATCH_FLOATING_TYPES(a.tensor("x").scalar_type(), "drawcli::loop_backward", [&] {
      using T = scalar_t;
      Loop<T> lp(a);
      const Dims& d = lp.D;
      const auto dt = a.tensor("x").scalar_type();
      TORCH_CHECK(d.S == d.T, "drawcli loop: backward needs a training forward's buffers (T slots)");
      const Tensor dh = a.tensor("d_heads"), dq = a.tensor("dq"), dC = a.tensor("d_canvas"), dlz = a.tensor("d_lz");
      const Tensor dx = a.optional("dx"), dmu = a.optional("d_mu_ls");
      expect(dh, "d_heads", dt, (d.T + 1) * d.B * d.hw);
      expect(dq, "dq", dt, d.T * d.B * 2 * d.Z);
      expect(dC, "d_canvas", dt, d.B * d.C * d.HW);
      expect(dlz, "d_lz", dt, d.B);
      if (dx.defined()) expect(dx, "dx", dt, d.B * d.C * d.HW);
      if (dmu.defined()) expect(dmu, "d_mu_ls", dt, d.T * d.B * 2 * d.Z);
      lp.d_heads = dh.data_ptr<T>(), lp.dq = dq.data_ptr<T>(), lp.dC = dC.data_ptr<T>(), lp.dlz = dlz.data_ptr<T>();
      lp.dx = data<T>(dx), lp.dmu_ls = data<T>(dmu);
      over_chunks(d.B, a.integer("chunks"), [&](int64_t b0, int64_t nb) { lp.backward_chunk(b0, nb); });
    });
  }
  torch::jit::drop(*stack, op.schema().arguments().size());
}

// w (float32) laid out for amx::gemm into out (bfloat16, amx::packed_size values): transpose: B = w^T
// (K = w's columns, N = its rows), the forward's x @ w^T; else B = w[:, :cols] (K = w's rows, N = cols),
// the input gradients' g @ w[:, :cols].
void amx_pack(const Tensor& w, int64_t cols, bool transpose, const Tensor& out) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous() && w.device().is_cpu(),
              "drawcli amx_pack: w must be a contiguous 2-d float32 CPU tensor");
  const int64_t K = transpose ? w.size(1) : w.size(0), N = transpose ? w.size(0) : cols;
  TORCH_CHECK(transpose || (cols > 0 && cols <= w.size(1)), "drawcli amx_pack: cols out of range");
  expect(out, "out", at::kBFloat16, amx::packed_size(K, N));
  amx::pack(w.data_ptr<float>(), w.size(1), K, N, transpose, reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()),
            [](uint16_t* dst, const float* src, int64_t count) { to_lp<float>(reinterpret_cast<BF*>(dst), src, count); });
}

}  // namespace

// The schemas: every argument by name, and (a!) ... on what each op writes. native_loop.py's
// NativeWorkspace holds the buffers under these names and passes them by name.
TORCH_LIBRARY(drawcli, m) {
  m.def(
      "loop_forward(bool attention, Tensor x, Tensor eps, Tensor grid, Tensor read_offsets, Tensor write_offsets, "
      "Tensor enc_w, Tensor dec_w, Tensor q_w, Tensor q_b, Tensor heads_w, Tensor heads_b, Tensor? enc_base, "
      "Tensor? enc_w_lp, Tensor? dec_w_lp, Tensor? enc_pk, Tensor? dec_pk, Tensor? enc_amx, Tensor? dec_amx, "
      "Tensor(a!) enc_in, Tensor(b!) dec_in, Tensor(c!) c_enc, Tensor(d!) c_dec, Tensor(e!) heads, "
      "Tensor(f!) g_enc, Tensor(g!) g_dec, Tensor(h!) tc_enc, Tensor(i!) tc_dec, Tensor(j!) se, Tensor(k!) mu_ls, "
      "Tensor(l!) xhat, Tensor(m!) f_r, Tensor(n!) f_w, Tensor(o!) left, Tensor(p!) u, Tensor(q!) wdiv, "
      "Tensor(r!)? enc_lp, Tensor(s!)? dec_lp, Tensor(t!)? g_enc_lp, Tensor(u!)? g_dec_lp, "
      "Tensor(v!) canvas, Tensor(w!) lz, Tensor(x!)? log_ratio, float filter_eps, int chunks) -> ()");
  m.def(
      "loop_backward(bool attention, Tensor x, Tensor eps, Tensor grid, Tensor read_offsets, Tensor write_offsets, "
      "Tensor enc_w, Tensor dec_w, Tensor q_w, Tensor heads_w, "
      "Tensor? enc_w_lp, Tensor? dec_w_lp, Tensor? enc_pk_t, Tensor? dec_pk_t, Tensor? enc_amx_t, Tensor? dec_amx_t, "
      "Tensor enc_in, Tensor c_enc, Tensor c_dec, Tensor heads, "
      "Tensor(a!) g_enc, Tensor(b!) g_dec, Tensor tc_enc, Tensor tc_dec, Tensor se, Tensor mu_ls, "
      "Tensor xhat, Tensor f_r, Tensor f_w, Tensor left, Tensor u, Tensor wdiv, "
      "Tensor(c!)? g_enc_lp, Tensor(d!)? g_dec_lp, "
      "Tensor(e!) d_heads, Tensor(f!) dq, Tensor d_canvas, Tensor(g!)? dx, Tensor d_lz, Tensor? d_mu_ls, "
      "float filter_eps, int chunks) -> ()");
  m.def("abi_version() -> int", []() -> int64_t { return DRAWCLI_ABI; });
  m.def("amx_pack(Tensor w, int cols, bool transpose, Tensor(a!) out) -> ()");
  // Whether amx_pack's weights can be used here: built for AMX, and the tile state granted (amx.h).
  m.def("amx_available() -> bool", []() -> bool { return amx::available(); });
}

// CPU, and MkldnnCPU: the dispatcher picks the kernel by every tensor argument, and oneDNN's
// packed bfloat16 weights are MkldnnCPU tensors.
TORCH_LIBRARY_IMPL(drawcli, CPU, m) {
  m.impl("loop_forward", torch::CppFunction::makeFromBoxedFunction<&loop_forward>());
  m.impl("loop_backward", torch::CppFunction::makeFromBoxedFunction<&loop_backward>());
  m.impl("amx_pack", &amx_pack);
}

TORCH_LIBRARY_IMPL(drawcli, MkldnnCPU, m) {
  m.impl("loop_forward", torch::CppFunction::makeFromBoxedFunction<&loop_forward>());
  m.impl("loop_backward", torch::CppFunction::makeFromBoxedFunction<&loop_backward>());
}
