// Tile-sparse attention on the CPU: FlashAttention-2 forward (online softmax over the kept tiles of
// a tile plan, log-sum-exp saved) and backward by recomputation (dQ, dK, dV).
//
// Layouts (all contiguous): q (B, H, T, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv), out (B, H, T, Dv),
// lse (B, H, T). The tile plan (see struct Plan) covers each mask slice (Bm, Hm) in {1, B} x {1, H}:
// forward, groups of consecutive query blocks with the union of their key blocks and, per query
// block, whether each of those tiles is full, empty or partial (then the index of its sub-mask);
// backward, the kept tiles ordered by key block. Sub-masks are (bq, bk) uint8, 1 = attend.
// Keys at or past S and queries at or past T are never read.
//
// Score modifiers (ModOp), applied in order to the scaled scores before the mask, as attnkit's
// reference does: an additive bias read in place through its strides (0 on broadcast dims), ALiBi
// (-slope_h |j - i - (S - T)|, h the query head) and tanh soft-capping (cap tanh(s / cap)). The
// backward pass recomputes them, multiplies dS by 1 - tanh^2 for each soft-cap and sums dS into
// the gradient of each bias that asks for one (reduced over its broadcast dims).
//
// One more modifier serves LSH attention, whose rows and columns are the same hash-sorted items
// (T == S): "hashed" reads, per (batch, head), int32 rows (2 + R', N): the query position of each
// sorted item (-1: not a query), its key position (-1: not a key) and, for each of the R' other
// hash rounds, the chunk the item landed in there. A pair is blocked (-inf) unless the row is a
// query and the column a key (and, when causal, key position <= query position + offset); an item
// meeting itself scores SELF_SCORE in shared-QK mode (no gradient); and log(c) is subtracted, c
// the number of rounds that attend the pair (this one and each other round whose chunks put the
// key in the query's chunk or the one before it), so a key found by several rounds counts once.
//
// Scalars: float and double run as they are. bfloat16 q, k, v (and dO) stay bfloat16: every
// product takes bfloat16 operands and accumulates in float (ATen's bfloat16 brgemm, with the right
// operand packed in VNNI order, where the CPU has it: at::native::cpublas::could_pack; elsewhere
// the operands are widened to float tile by tile). The right operands are packed once, not per
// tile: per call K^T by key block and V, Q, dO as row pairs, per key block its K^T, V^T and K in
// the backward; only P and dS are rounded and transposed per tile. The scores,
// softmax, out, lse and the gradients are float, and P / dS are rounded to bfloat16 for the
// products that take them, as FlashAttention does. Half inputs are converted to float by the
// caller. float / double products go to the BLAS sgemm_/dgemm_ that libtorch exports (MKL builds),
// else to at::mm on views of the same memory.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#include <torch/python.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

constexpr int64_t kMaxRun = 512;  // keys (forward) or query rows (backward) batched into one product

template <typename T>
at::Tensor view_of(const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor t = at::from_blob(const_cast<T*>(p), {trans ? cols : rows, trans ? rows : cols}, {ld, 1}, opts);
  return trans ? t.t() : t;
}

// Row-major C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C; beta == 0 ignores C's contents.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  // column-major view: C^T = op(B)^T op(A)^T
  const char cta = tb ? 'T' : 'N', ctb = ta ? 'T' : 'N';
  const int im = static_cast<int>(n), in = static_cast<int>(m), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(ldb), ildb = static_cast<int>(lda), ildc = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_ != nullptr) {
      sgemm_(&cta, &ctb, &im, &in, &ik, &alpha, b, &ilda, a, &ildb, &beta, c, &ildc);
      return;
    }
  } else {
    if (dgemm_ != nullptr) {
      dgemm_(&cta, &ctb, &im, &in, &ik, &alpha, b, &ilda, a, &ildb, &beta, c, &ildc);
      return;
    }
  }
  at::Tensor A = view_of(a, m, k, lda, ta), B = view_of(b, k, n, ldb, tb), C = view_of(c, m, n, ldc, false);
  if (beta == T(0)) {
    at::mm_out(C, A, B);
    if (alpha != T(1)) C.mul_(alpha);
  } else {
    C.mul_(beta).add_(at::mm(A, B), alpha);
  }
}

bool has_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }


// A stored operand of a product, widened to float: rows x cols with leading dimension ld.
std::vector<float> widened(const at::BFloat16* x, int64_t rows, int64_t cols, int64_t ld) {
  std::vector<float> out(rows * cols);
  for (int64_t r = 0; r < rows; ++r) at::vec::convert(x + r * ld, out.data() + r * cols, cols);
  return out;
}

// The right operand of a bfloat16 product in VNNI order: op(B) (k x n) with pairs of rows
// interleaved, dst[(x / 2) * 2n + 2y + (x & 1)] = op(B)[x][y], k padded to even with a zero row.
// dst holds (k + (k & 1)) * n values.
void pack_vnni(bool tb, int64_t n, int64_t k, const at::BFloat16* b, int64_t ldb, at::BFloat16* dst) {
  const at::BFloat16 zero(0.f);
  for (int64_t x = 0; x < k + (k & 1); ++x) {
    at::BFloat16* d = dst + (x / 2) * 2 * n + (x & 1);
    if (x == k) {
      for (int64_t y = 0; y < n; ++y) d[2 * y] = zero;
    } else if (tb) {
      for (int64_t y = 0; y < n; ++y) d[2 * y] = b[y * ldb + x];
    } else {
      const at::BFloat16* src = b + x * ldb;
      for (int64_t y = 0; y < n; ++y) d[2 * y] = src[y];
    }
  }
}

// C (m x n, float) = alpha A B + beta C (beta 0 or 1) for a row-major bfloat16 A (m x kp, kp even,
// its padding column zero) and B already in VNNI order (pack_vnni, kp x n), by brgemm.
void mm_vnni(int64_t m, int64_t n, int64_t kp, float alpha, const at::BFloat16* a, int64_t lda,
             const at::BFloat16* b, float beta, float* c, int64_t ldc) {
  TORCH_CHECK(beta == 0.f || beta == 1.f, "beta must be 0 or 1");
  if (alpha == 1.f || beta == 0.f) {
    at::native::cpublas::brgemm(m, n, kp, lda, n, ldc, beta != 0.f, a, b, c, true);
    if (alpha != 1.f) {
      for (int64_t i = 0; i < m; ++i) at::vec::map([alpha](Vec<float> x) { return x * Vec<float>(alpha); },
                                                   c + i * ldc, c + i * ldc, n);
    }
    return;
  }
  thread_local std::vector<float> cbuf;
  cbuf.resize(m * n);
  at::native::cpublas::brgemm(m, n, kp, lda, n, n, false, a, b, cbuf.data(), true);
  for (int64_t i = 0; i < m; ++i) {
    at::vec::map2([alpha](Vec<float> x, Vec<float> y) { return x + y * Vec<float>(alpha); }, c + i * ldc,
                  c + i * ldc, cbuf.data() + i * n, n);
  }
}

// C (m x n, float) = alpha op(A) op(B) + beta C for bfloat16 A, B with beta 0 or 1, by brgemm: A
// copied row-major when it is transposed or k is odd, B packed in VNNI order, k padded to even.
void mm_bf16(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const at::BFloat16* a, int64_t lda,
             const at::BFloat16* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  thread_local std::vector<at::BFloat16> abuf, bbuf;
  const int64_t kp = k + (k & 1);
  const at::BFloat16* ap = a;
  int64_t ld_a = lda;
  if (ta || kp != k) {
    abuf.resize(m * kp);
    for (int64_t i = 0; i < m; ++i) {
      at::BFloat16* row = abuf.data() + i * kp;
      for (int64_t x = 0; x < k; ++x) row[x] = ta ? a[x * lda + i] : a[i * lda + x];
      if (kp != k) row[k] = at::BFloat16(0.f);
    }
    ap = abuf.data();
    ld_a = kp;
  }
  bbuf.resize(kp * n);
  pack_vnni(tb, n, k, b, ldb, bbuf.data());
  mm_vnni(m, n, kp, alpha, ap, ld_a, bbuf.data(), beta, c, ldc);
}

// Whether ATen's bfloat16 brgemm takes VNNI-packed operands here (oneDNN's micro-kernels on CPUs
// with bfloat16 dot products; elsewhere it reads them as plain row-major): a small product with an
// exact answer, computed once.
bool has_bf16_gemm() {
  static const bool ok = [] {
    constexpr int64_t m = 3, n = 5, k = 6;
    at::BFloat16 a[m * k], b[k * n];
    float c[m * n], want[m * n] = {};
    for (int64_t i = 0; i < m * k; ++i) a[i] = at::BFloat16(static_cast<float>(i % 7) - 3.f);
    for (int64_t i = 0; i < k * n; ++i) b[i] = at::BFloat16(static_cast<float>(i % 5) - 1.f);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t x = 0; x < k; ++x)
          want[i * n + j] += static_cast<float>(a[i * k + x]) * static_cast<float>(b[x * n + j]);
    try {
      mm_bf16(false, false, m, n, k, 1.f, a, k, b, n, 0.f, c, n);
      at::native::cpublas::brgemm_release();
    } catch (const std::exception&) {
      return false;
    }
    return std::equal(c, c + m * n, want);
  }();
  return ok;
}

// gemm with operands of the input type I and the result in the compute type T (T == I for float
// and double; I = bfloat16 with T = float).
template <typename T, typename I>
void mm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const I* a, int64_t lda, const I* b, int64_t ldb,
        T beta, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, I>) {
    gemm<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    static_assert(std::is_same_v<I, at::BFloat16> && std::is_same_v<T, float>, "bfloat16 inputs compute in float");
    if (m == 0 || n == 0) return;
    if (k > 0 && has_bf16_gemm()) {
      mm_bf16(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
      return;
    }
    const int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    std::vector<float> fa = widened(a, ar, ac, lda), fb = widened(b, br, bc, ldb);
    gemm<float>(ta, tb, m, n, k, alpha, fa.data(), ac, fb.data(), bc, beta, c, ldc);
  }
}

// x (count values of T) as the input type I: x itself when the types agree, else rounded into buf.
template <typename T, typename I>
const I* as_input(const T* x, int64_t count, std::vector<I>& buf) {
  if constexpr (std::is_same_v<T, I>) {
    (void)count;
    (void)buf;
    return x;
  } else {
    at::vec::convert(x, buf.data(), count);
    return buf.data();
  }
}


template <typename T>
inline Vec<T> vexp(Vec<T> x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}

// max with NaN propagation
template <typename T>
inline T nan_max(T a, T b) {
  return (a != a || b != b) ? std::numeric_limits<T>::quiet_NaN() : std::max(a, b);
}

template <typename T>
T row_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  constexpr int64_t W = Vec<T>::size();
  if (n >= W) {
    Vec<T> acc = Vec<T>::loadu(x);
    for (j = W; j + W <= n; j += W) acc = at::vec::maximum(acc, Vec<T>::loadu(x + j));
    m = at::vec::vec_reduce_all<T>([](Vec<T>& a, Vec<T>& b) { return at::vec::maximum(a, b); }, acc);
  }
  for (; j < n; ++j) m = nan_max(m, x[j]);
  return m;
}

// x <- exp(x - m) in place; returns the sum
template <typename T>
T exp_sum(T* x, int64_t n, T m) {
  constexpr int64_t W = Vec<T>::size();
  Vec<T> vm(m), vs(T(0));
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    Vec<T> e = vexp(Vec<T>::loadu(x + j) - vm);
    e.store(x + j);
    vs = vs + e;
  }
  T s = at::vec::vec_reduce_all<T>([](Vec<T>& a, Vec<T>& b) { return a + b; }, vs);
  for (; j < n; ++j) {
    x[j] = std::exp(x[j] - m);
    s += x[j];
  }
  return s;
}

// tile masks: rows [r0, r0 + m) of tiles at columns [c, c + n) of the score block
template <typename T>
void apply_mask(T* s, int64_t lds, int64_t m, int64_t n, const uint8_t* mask, int64_t bk, int64_t mask_row_stride) {
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < m; ++i) {
    const uint8_t* mr = mask + i * mask_row_stride;
    T* sr = s + i * lds;
    for (int64_t j = 0; j < n; ++j) sr[j] = mr[j] ? sr[j] : ninf;
  }
  (void)bk;
}

// ---------------------------------------------------------------------------------------------
// score modifiers
// ---------------------------------------------------------------------------------------------

enum ModKind : int64_t { kBias = 0, kAlibi = 1, kSoftcap = 2, kHashed = 3 };

constexpr double kSelfScore = -1e5;  // an item's score with itself in shared-QK LSH
constexpr int64_t kMaxRounds = 64;   // hash rounds the "hashed" modifier accepts

template <typename T>
struct ModOp {
  int64_t kind;
  const T* data;            // bias values / ALiBi slopes (H,)
  int64_t sb, sh, si, sj;   // bias element strides, 0 on broadcast dims
  T cap;                    // soft-cap
  T* grad;                  // bias gradient (its own shape, contiguous) or null
  int64_t gb, gh, gi, gj;   // gradient strides, 0 on broadcast dims
  // "hashed": ids (B, H, 2 + R', N) int32; chunk count, causal offset, shared-QK flag
  const int32_t* ids = nullptr;
  int64_t heads = 0, others = 0, n_items = 0, n_chunks = 0, causal_off = 0;
  bool causal = false, shared = false;
  T log_count[kMaxRounds + 1] = {};  // log(c) for c = 0 .. R
};

template <typename T>
std::vector<ModOp<T>> make_mods(const std::vector<int64_t>& kinds, const std::vector<at::Tensor>& tensors,
                                const std::vector<std::vector<double>>& params, int64_t H) {
  TORCH_CHECK(kinds.size() == tensors.size() && kinds.size() == params.size(),
              "one tensor and one parameter list per modifier");
  std::vector<ModOp<T>> ops;
  for (size_t p = 0; p < kinds.size(); ++p) {
    const std::vector<double>& par = params[p];
    ModOp<T> op{kinds[p], nullptr, 0, 0, 0, 0, static_cast<T>(par.empty() ? 0.0 : par[0]), nullptr, 0, 0, 0, 0};
    const at::Tensor& t = tensors[p];
    if (op.kind == kHashed) {
      TORCH_CHECK(t.dim() == 4 && t.size(1) == H && t.size(2) >= 2 && t.size(2) - 2 < kMaxRounds &&
                      t.is_contiguous() && t.scalar_type() == at::kInt,
                  "hashed ids must be (B, H, 2 + R', N) contiguous int32 with R' < ", kMaxRounds);
      TORCH_CHECK(par.size() == 4, "hashed takes (n_chunks, causal, causal_offset, shared)");
      op.ids = t.data_ptr<int32_t>();
      op.heads = H;
      op.others = t.size(2) - 2;
      op.n_items = t.size(3);
      op.n_chunks = static_cast<int64_t>(par[0]);
      op.causal = par[1] != 0.0;
      op.causal_off = static_cast<int64_t>(par[2]);
      op.shared = par[3] != 0.0;
      for (int64_t c = 1; c <= op.others + 1; ++c) op.log_count[c] = static_cast<T>(std::log(static_cast<double>(c)));
      ops.push_back(op);
      continue;
    }
    if (op.kind == kBias) {
      TORCH_CHECK(t.dim() == 4 && t.scalar_type() == c10::CppTypeToScalarType<T>::value,
                  "a bias must be 4-D in the compute dtype");
      op.data = t.data_ptr<T>();
      int64_t* st[4] = {&op.sb, &op.sh, &op.si, &op.sj};
      for (int d = 0; d < 4; ++d) *st[d] = t.size(d) == 1 ? 0 : t.stride(d);
    } else if (op.kind == kAlibi) {
      TORCH_CHECK(t.dim() == 1 && t.size(0) == H && t.is_contiguous() &&
                      t.scalar_type() == c10::CppTypeToScalarType<T>::value,
                  "ALiBi slopes must be (H,) contiguous in the compute dtype");
      op.data = t.data_ptr<T>();
    } else {
      TORCH_CHECK(op.kind == kSoftcap && par.size() == 1 && par[0] > 0, "unknown score modifier kind ", op.kind);
    }
    ops.push_back(op);
  }
  return ops;
}

// The "hashed" modifier on one score row: sorted item i against sorted items j0 .. j0 + n (n <= kMaxRun).
// Written as separate passes over the row so that each inner loop vectorises.
template <typename T>
void hashed_row(const ModOp<T>& op, T* s, int64_t n, int64_t b, int64_t h, int64_t i, int64_t j0) {
  const T ninf = -std::numeric_limits<T>::infinity();
  const int64_t N = op.n_items;
  const int32_t* row = op.ids + (b * op.heads + h) * (2 + op.others) * N;
  const int64_t qi = row[i];
  if (qi < 0) {  // not a query: nothing to attend
    std::fill(s, s + n, ninf);
    return;
  }
  if (op.shared && i >= j0 && i < j0 + n) s[i - j0] = static_cast<T>(kSelfScore);
  if (op.others > 0) {  // rounds that attend each pair: this one, and each other one that puts the
    int32_t count[kMaxRun];  // key in the query's chunk or the chunk before it
    std::fill(count, count + n, 1);
    const int32_t* chunks = row + 2 * N;
    for (int64_t r = 0; r < op.others; ++r) {
      const int32_t mine = chunks[r * N + i], before = mine - 1;
      const int32_t wrap = mine == 0 ? static_cast<int32_t>(op.n_chunks - 1) : before;
      const int32_t* ck = chunks + r * N + j0;
      for (int64_t j = 0; j < n; ++j) count[j] += (ck[j] == mine) | (ck[j] == before) | (ck[j] == wrap);
    }
    for (int64_t j = 0; j < n; ++j) s[j] -= op.log_count[count[j]];
  }
  const int32_t* kpos = row + N + j0;
  const int64_t limit = op.causal ? qi + op.causal_off : INT32_MAX;
  const int32_t last = static_cast<int32_t>(std::clamp<int64_t>(limit, -1, INT32_MAX));
  for (int64_t j = 0; j < n; ++j) s[j] = (kpos[j] < 0 || kpos[j] > last) ? ninf : s[j];
}

// Modifies one score row s[0, n) of (batch b, query head h, query i, keys j0 ..); stores each
// soft-cap's tanh in tanh_rows[c] (c-th soft-cap) when given.
template <typename T>
void mods_row(const std::vector<ModOp<T>>& ops, T* s, int64_t n, int64_t b, int64_t h, int64_t i, int64_t j0,
              int64_t shift, T* const* tanh_rows) {
  int64_t c = 0;
  for (const ModOp<T>& op : ops) {
    if (op.kind == kHashed) {
      hashed_row<T>(op, s, n, b, h, i, j0);
    } else if (op.kind == kBias) {
      const T* src = op.data + b * op.sb + h * op.sh + i * op.si + j0 * op.sj;
      if (op.sj == 0) {
        const T x = src[0];
        at::vec::map([x](Vec<T> a) { return a + Vec<T>(x); }, s, s, n);
      } else if (op.sj == 1) {
        at::vec::map2([](Vec<T> a, Vec<T> x) { return a + x; }, s, s, src, n);
      } else {
        for (int64_t j = 0; j < n; ++j) s[j] += src[j * op.sj];
      }
    } else if (op.kind == kAlibi) {
      const T slope = op.data[h];
      const int64_t d0 = j0 - i - shift;
      for (int64_t j = 0; j < n; ++j) s[j] -= slope * static_cast<T>(std::abs(d0 + j));
    } else {
      const T cap = op.cap;
      T* tr = tanh_rows == nullptr ? nullptr : tanh_rows[c++];
      constexpr int64_t W = Vec<T>::size();
      int64_t j = 0;
      for (; j + W <= n; j += W) {
        const Vec<T> t = (Vec<T>::loadu(s + j) / Vec<T>(cap)).tanh();
        if (tr != nullptr) t.store(tr + j);
        (t * Vec<T>(cap)).store(s + j);
      }
      for (; j < n; ++j) {
        const T t = std::tanh(s[j] / cap);
        if (tr != nullptr) tr[j] = t;
        s[j] = cap * t;
      }
    }
  }
}

// The way back through mods_row: g (dL/d modified scores of the row) becomes dL/d raw scores;
// each bias with a gradient buffer receives dL/d its output.
template <typename T>
void mods_row_backward(const std::vector<ModOp<T>>& ops, T* g, int64_t n, int64_t b, int64_t h, int64_t i,
                       int64_t j0, const T* const* tanh_rows, int64_t n_caps) {
  int64_t c = n_caps;
  for (auto it = ops.rbegin(); it != ops.rend(); ++it) {
    const ModOp<T>& op = *it;
    if (op.kind == kHashed) {
      if (op.shared && i >= j0 && i < j0 + n) g[i - j0] = T(0);  // the self score is a constant
    } else if (op.kind == kSoftcap) {
      const T* tr = tanh_rows[--c];
      // masked keys carry g = 0, whatever their (possibly NaN) score was
      for (int64_t j = 0; j < n; ++j) g[j] = g[j] == T(0) ? T(0) : g[j] * (T(1) - tr[j] * tr[j]);
    } else if (op.kind == kBias && op.grad != nullptr) {
      T* dst = op.grad + b * op.gb + h * op.gh + i * op.gi + j0 * op.gj;
      if (op.gj == 0) {
        T sum = T(0);
        for (int64_t j = 0; j < n; ++j) sum += g[j];
        dst[0] += sum;
      } else {
        at::vec::map2([](Vec<T> a, Vec<T> x) { return a + x; }, dst, dst, g, n);  // gj == 1: contiguous
      }
    }
  }
}

struct Plan {
  // forward: groups of consecutive query blocks sharing one list of key blocks (the union of theirs)
  const int64_t* slice_ptr;  // (Bm*Hm + 1) groups of each mask slice
  const int64_t* grp_q0;     // (nG) first query block of each group
  const int64_t* grp_nq;     // (nG) query blocks in each group (<= G)
  const int64_t* grp_ptr;    // (nG + 1) key blocks of each group in grp_col
  const int64_t* grp_col;    // (nU) key block
  const int64_t* grp_lib;    // (nU, G) per query block of the group: -1 full, -2 empty, else a sub-mask
  // backward: kept tiles by key block
  const int64_t* col_ptr;    // (Bm*Hm*nK + 1)
  const int64_t* col_row;    // (n) query block
  const int64_t* col_lib;    // (n) -1 full, else a sub-mask
  const uint8_t* masks;      // (L, bq, bk) 1 = attend
  int64_t Bm, Hm, nQ, nK, bq, bk, G;
};

Plan make_plan(const std::vector<at::Tensor>& t, int64_t Bm, int64_t Hm, int64_t nQ, int64_t nK, int64_t bq,
               int64_t bk, int64_t G) {
  TORCH_CHECK(t.size() == 10, "the plan has 10 tensors");
  for (size_t i = 0; i < 9; ++i)
    TORCH_CHECK(t[i].scalar_type() == at::kLong && t[i].is_contiguous(), "plan tensor ", i, " must be int64");
  TORCH_CHECK(t[9].scalar_type() == at::kByte && t[9].is_contiguous(), "tile masks must be uint8");
  return Plan{t[0].data_ptr<int64_t>(), t[1].data_ptr<int64_t>(), t[2].data_ptr<int64_t>(),
              t[3].data_ptr<int64_t>(), t[4].data_ptr<int64_t>(), t[5].data_ptr<int64_t>(),
              t[6].data_ptr<int64_t>(), t[7].data_ptr<int64_t>(), t[8].data_ptr<int64_t>(),
              t[9].data_ptr<uint8_t>(), Bm, Hm, nQ, nK, bq, bk, G};
}

// Runs items [0, n) on every thread, round-robin (costs that grow along the range, as with a causal
// mask, are then shared out evenly).
template <typename F>
void parallel_round_robin(int64_t n, const F& body) {
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, nt, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) body(t, nt);
  });
}

// ---------------------------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------------------------

// Rows of x (B, H, T, D) bfloat16 in VNNI pairs for products that take them as the right operand
// with T as the inner dimension: (B, H, ceil(T / 2), D, 2), [.., p, y, e] = x[.., 2p + e, y] (0
// past T). Rows [i0, i1) with i0 even are then the contiguous slice from pair i0 / 2. Packed in
// parallel, 64 rows at a time.
at::Tensor row_pairs(const at::Tensor& x) {
  const int64_t BH = x.size(0) * x.size(1), T = x.size(2), D = x.size(3), Tp = T + (T & 1);
  constexpr int64_t kRows = 64;
  const int64_t chunks = (T + kRows - 1) / kRows;
  at::Tensor out = at::empty({x.size(0), x.size(1), Tp / 2, D, 2}, x.options());
  const at::BFloat16* src = x.data_ptr<at::BFloat16>();
  at::BFloat16* dst = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, BH * chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t bh = c / chunks, r0 = (c % chunks) * kRows, rows = std::min(kRows, T - r0);
      pack_vnni(false, D, rows, src + (bh * T + r0) * D, D, dst + (bh * Tp + r0) * D);
    }
  });
  return out;
}

// The data of a packed operand, or null where none was packed.
const at::BFloat16* packed_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<at::BFloat16>() : nullptr; }

// K^T of every full key block of k (B, Hkv, S, D) bfloat16 in VNNI order, the right operand of the
// scores: (B, Hkv, nK, D / 2, bk, 2), [.., j, p, y, e] = k[.., j bk + y, 2p + e] (D even). A
// partial last block is left unset (the forward packs it where it is used). Each pair (2p, 2p + 1)
// of a key's row moves together, so a block is a transpose of pairs; blocks in parallel.
at::Tensor key_blocks_t(const at::Tensor& k, int64_t nK, int64_t bk) {
  const int64_t BH = k.size(0) * k.size(1), S = k.size(2), D = k.size(3), half = D / 2;
  TORCH_CHECK(D % 2 == 0, "key_blocks_t needs an even head dim");
  at::Tensor out = at::empty({k.size(0), k.size(1), nK, half, bk, 2}, k.options());
  const at::BFloat16* src = k.data_ptr<at::BFloat16>();
  at::BFloat16* dst = out.data_ptr<at::BFloat16>();
  at::parallel_for(0, BH * nK, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      const int64_t bh = i / nK, j0 = (i % nK) * bk;
      if (j0 + bk > S) continue;
      const at::BFloat16* ks = src + (bh * S + j0) * D;
      at::BFloat16* d = dst + i * D * bk;
      for (int64_t y = 0; y < bk; ++y) {
        const at::BFloat16* row = ks + y * D;
        for (int64_t p = 0; p < half; ++p) {
          d[(p * bk + y) * 2] = row[2 * p];
          d[(p * bk + y) * 2 + 1] = row[2 * p + 1];
        }
      }
    }
  });
  return out;
}

template <typename T, typename I>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, at::Tensor& lse,
                  const Plan& pl, double scale_d, const std::vector<ModOp<T>>& mods, const I* kt_blocks,
                  const I* v_pairs) {
  const int64_t B = q.size(0), H = q.size(1), T_ = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2), Dv = v.size(3);
  const int64_t rep = H / Hkv, bq = pl.bq, bk = pl.bk, G = pl.G;
  const T scale = static_cast<T>(scale_d);
  const T ninf = -std::numeric_limits<T>::infinity();
  // one-token decode: the query heads sharing a kv head (and a mask) are the rows of one product
  const int64_t fold = (T_ == 1 && pl.Hm == 1) ? rep : 1;
  const int64_t hgroups = H / fold;
  const I* qp = q.data_ptr<I>();
  const I* kp = k.data_ptr<I>();
  const I* vp = v.data_ptr<I>();
  T* op = out.data_ptr<T>();
  T* lp = lse.data_ptr<T>();
  // work items: (batch, head group, query-block group)
  std::vector<int64_t> items;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < hgroups; ++g) {
      const int64_t bm = pl.Bm == 1 ? 0 : b, hm = pl.Hm == 1 ? 0 : g * fold, sl = bm * pl.Hm + hm;
      for (int64_t gr = pl.slice_ptr[sl]; gr < pl.slice_ptr[sl + 1]; ++gr) {
        items.push_back(b);
        items.push_back(g);
        items.push_back(gr);
      }
    }
  const int64_t n_items = static_cast<int64_t>(items.size()) / 3;
  const int64_t rows_max = std::max(bq * G, fold);
  parallel_round_robin(n_items, [&](int64_t tid, int64_t nt) {
    std::vector<T> sbuf(rows_max * kMaxRun), obuf(rows_max * Dv), mrow(rows_max), lrow(rows_max), alpha(rows_max);
    std::vector<I> pin(std::is_same_v<T, I> ? 0 : rows_max * (kMaxRun + 1));  // P rounded to the input type
    std::vector<I> pk;  // a partial key block's K^T, packed
    for (int64_t it = tid; it < n_items; it += nt) {
      const int64_t b = items[3 * it], g = items[3 * it + 1], gr = items[3 * it + 2];
      const int64_t h0 = g * fold, hk = h0 / rep;
      const int64_t i0 = pl.grp_q0[gr] * bq, nqb = pl.grp_nq[gr];
      const int64_t m_tok = std::min(nqb * bq, T_ - i0), m = m_tok * fold;
      const I* qb = qp + ((b * H + h0) * T_ + i0) * D;
      const I* kb = kp + (b * Hkv + hk) * S * D;
      const I* vb = vp + (b * Hkv + hk) * S * Dv;
      std::fill(obuf.begin(), obuf.begin() + m * Dv, T(0));
      std::fill(mrow.begin(), mrow.begin() + m, ninf);
      std::fill(lrow.begin(), lrow.begin() + m, T(0));
      const int64_t t_end = pl.grp_ptr[gr + 1];
      for (int64_t t = pl.grp_ptr[gr]; t < t_end;) {
        // a run of consecutive key blocks
        int64_t t2 = t + 1;
        while (t2 < t_end && pl.grp_col[t2] == pl.grp_col[t2 - 1] + 1 && (t2 - t + 1) * bk <= kMaxRun) ++t2;
        const int64_t j0 = pl.grp_col[t] * bk, j1 = std::min(S, (pl.grp_col[t2 - 1] + 1) * bk), n = j1 - j0;
        T* s = sbuf.data();
        bool done = false;
        if constexpr (!std::is_same_v<T, I>) {
          if (kt_blocks != nullptr) {  // block by block from the packed K^T; a partial last block packed here
            for (int64_t u = t; u < t2; ++u) {  // (packed only for even D)
              const int64_t c0 = (u - t) * bk, nc = std::min(bk, n - c0);
              const I* bt = kt_blocks + ((b * Hkv + hk) * pl.nK + pl.grp_col[u]) * D * bk;
              if (nc != bk) {
                pk.resize(D * nc);
                pack_vnni(true, nc, D, kb + (j0 + c0) * D, D, pk.data());
                bt = pk.data();
              }
              at::native::cpublas::brgemm(m, nc, D, D, nc, n, false, qb, bt, s + c0, true);
            }
            for (int64_t i = 0; i < m; ++i)
              at::vec::map([scale](Vec<T> x) { return x * Vec<T>(scale); }, s + i * n, s + i * n, n);
            done = true;
          }
        }
        if (!done) mm<T, I>(false, true, m, n, D, scale, qb, D, kb + j0 * D, D, T(0), s, n);
        if (!mods.empty()) {  // row r: query head h0 + r / m_tok, query i0 + r % m_tok
          for (int64_t r = 0; r < m; ++r)
            mods_row<T>(mods, s + r * n, n, b, h0 + r / m_tok, i0 + r % m_tok, j0, S - T_, nullptr);
        }
        for (int64_t u = t; u < t2; ++u) {
          const int64_t c0 = (u - t) * bk, nc = std::min(bk, n - c0);
          for (int64_t a = 0; a < nqb; ++a) {
            const int64_t lib = pl.grp_lib[u * G + a];
            if (lib == -1) continue;
            const int64_t r0 = a * bq, nr = std::min(bq, m_tok - r0);
            if (lib == -2) {  // this query block keeps nothing here
              for (int64_t i = r0; i < r0 + nr; ++i) std::fill(s + i * n + c0, s + i * n + c0 + nc, ninf);
              continue;
            }
            const uint8_t* mk = pl.masks + lib * bq * bk;
            if (fold == 1) {
              apply_mask<T>(s + r0 * n + c0, n, nr, nc, mk, bk, bk);
            } else {
              apply_mask<T>(s + c0, n, m, nc, mk, bk, 0);  // every row is query 0
            }
          }
        }
        for (int64_t i = 0; i < m; ++i) {
          T* si = s + i * n;
          const T mx = nan_max(mrow[i], row_max(si, n));
          if (mx == ninf) {  // nothing allowed yet: p = 0
            std::fill(si, si + n, T(0));
            alpha[i] = T(1);
            continue;
          }
          const T a = std::exp(mrow[i] - mx);  // 0 when the old maximum is -inf
          const T sum = exp_sum(si, n, mx);
          lrow[i] = lrow[i] * a + sum;
          mrow[i] = mx;
          alpha[i] = a;
        }
        for (int64_t i = 0; i < m; ++i) {
          if (alpha[i] != T(1)) {
            T* oi = obuf.data() + i * Dv;
            const T a = alpha[i];
            at::vec::map([a](Vec<T> x) { return x * Vec<T>(a); }, oi, oi, Dv);
          }
        }
        if constexpr (!std::is_same_v<T, I>) {
          if (v_pairs != nullptr) {  // P rounded, rows padded to an even width, times V's row pairs
            const int64_t np = n + (n & 1);
            for (int64_t i = 0; i < m; ++i) {
              at::vec::convert(s + i * n, pin.data() + i * np, n);
              if (np != n) pin[i * np + n] = I(0.f);
            }
            mm_vnni(m, Dv, np, 1.f, pin.data(), np, v_pairs + ((b * Hkv + hk) * ((S + 1) / 2) + j0 / 2) * 2 * Dv, 1.f,
                    obuf.data(), Dv);
            t = t2;
            continue;
          }
        }
        mm<T, I>(false, false, m, Dv, n, T(1), as_input<T, I>(s, m * n, pin), n, vb + j0 * Dv, Dv, T(1), obuf.data(),
                 Dv);
        t = t2;
      }
      T* ob = op + ((b * H + h0) * T_ + i0) * Dv;
      T* lb = lp + (b * H + h0) * T_ + i0;
      for (int64_t i = 0; i < m; ++i) {
        const T l = lrow[i];
        T* oi = ob + i * Dv;
        const T* src = obuf.data() + i * Dv;
        if (l == T(0)) {  // no allowed key: zero output, lse = -inf
          std::fill(oi, oi + Dv, T(0));
          lb[i] = ninf;
          continue;
        }
        const T inv = T(1) / l;
        at::vec::map([inv](Vec<T> x) { return x * Vec<T>(inv); }, oi, src, Dv);
        lb[i] = mrow[i] + std::log(l);
      }
    }
    if constexpr (!std::is_same_v<T, I>) {
      if (has_bf16_gemm()) at::native::cpublas::brgemm_release();  // the brgemm context of this thread
    }
  });
}

std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const std::vector<at::Tensor>& plan, int64_t Bm, int64_t Hm, int64_t nQ, int64_t nK,
                                int64_t bq, int64_t bk, int64_t G, double scale, const std::vector<int64_t>& mod_kinds,
                                const std::vector<at::Tensor>& mod_tensors,
                                const std::vector<std::vector<double>>& mod_params) {
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(), "q, k, v must be contiguous");
  TORCH_CHECK(bk <= kMaxRun, "block_k must be at most ", kMaxRun);
  Plan pl = make_plan(plan, Bm, Hm, nQ, nK, bq, bk, G);
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), "q, k, v must share a dtype");
  const auto compute = q.options().dtype(q.scalar_type() == at::kBFloat16 ? at::kFloat : q.scalar_type());
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, compute);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, compute);
  if (q.scalar_type() == at::kFloat) {
    forward_impl<float, float>(q, k, v, out, lse, pl, scale,
                               make_mods<float>(mod_kinds, mod_tensors, mod_params, q.size(1)), nullptr, nullptr);
  } else if (q.scalar_type() == at::kBFloat16) {
    // K^T by key block and V as row pairs, the right operands of every product, packed once per
    // call (key runs start on block boundaries, so on even rows when blocks are even)
    at::Tensor kt_blocks, v_pairs;
    if (has_bf16_gemm() && bk % 2 == 0 && q.size(3) % 2 == 0) {
      kt_blocks = key_blocks_t(k, nK, bk);
      v_pairs = row_pairs(v);
    }
    forward_impl<float, at::BFloat16>(q, k, v, out, lse, pl, scale,
                                      make_mods<float>(mod_kinds, mod_tensors, mod_params, q.size(1)),
                                      packed_or_null(kt_blocks), packed_or_null(v_pairs));
  } else {
    TORCH_CHECK(q.scalar_type() == at::kDouble, "float32, float64 or bfloat16 expected");
    forward_impl<double, double>(q, k, v, out, lse, pl, scale,
                                 make_mods<double>(mod_kinds, mod_tensors, mod_params, q.size(1)), nullptr, nullptr);
  }
  return {out, lse};
}

// ---------------------------------------------------------------------------------------------
// backward: per (batch, kv head, key block), the query tiles of its column, dK and dV kept locally
// ---------------------------------------------------------------------------------------------

// dst (n x ld, bfloat16) = src^T for src (m x n bfloat16, leading dimension lds), by 16 x 16
// blocks; columns m .. ld of dst are zero.
void transpose_bf16(const at::BFloat16* src, int64_t m, int64_t n, int64_t lds, at::BFloat16* dst, int64_t ld) {
  constexpr int64_t Bt = 16;
  for (int64_t x0 = 0; x0 < m; x0 += Bt) {
    for (int64_t y0 = 0; y0 < n; y0 += Bt) {
      const at::BFloat16* s = src + x0 * lds + y0;
      at::BFloat16* d = dst + y0 * ld + x0;
      if (x0 + Bt <= m && y0 + Bt <= n) {
        at::vec::transpose_mxn<at::BFloat16, Bt, Bt>(s, lds, d, ld);
      } else {
        at::vec::transpose_mxn<at::BFloat16>(s, lds, d, ld, static_cast<int>(std::min(Bt, m - x0)),
                                             static_cast<int>(std::min(Bt, n - y0)));
      }
    }
  }
  for (int64_t y = 0; y < n; ++y) std::fill(dst + y * ld + m, dst + (y + 1) * ld, at::BFloat16(0.f));
}

// The five products of the backward on the tile group (m query rows) x (one key block of n keys).
// float / double: gemm calls. bfloat16 with brgemm: the key block's K^T, V^T and K are packed once
// (set_keys) for all of its query tiles, Q and dO come packed once per call (row_pairs), and P / dS
// are rounded and transposed by 16 x 16 blocks, so no operand is packed element by element per tile.
template <typename T, typename I>
struct BackwardProducts {
  static constexpr bool kPacked = !std::is_same_v<T, I>;
  int64_t D, Dv, rmax;
  bool packed;  // bfloat16 with brgemm
  const I *kb = nullptr, *vb = nullptr;
  int64_t n = 0, np = 0;
  std::vector<I> kt, vt, kn, pin, ptr, scr;  // packed K^T, V^T, K; P / dS rounded; transposed; scratch

  BackwardProducts(int64_t D_, int64_t Dv_, int64_t rmax_, int64_t bk)
      : D(D_), Dv(Dv_), rmax(rmax_), packed(kPacked && has_bf16_gemm()) {
    if constexpr (kPacked) {
      pin.resize(rmax * (bk + 1));
      if (packed) {
        kt.resize((D + 1) * bk);
        vt.resize((Dv + 1) * bk);
        kn.resize((bk + 1) * D);
        ptr.resize((bk + 1) * (rmax + 1));
      }
    }
  }

  void set_keys(const I* kb_, const I* vb_, int64_t n_) {
    kb = kb_;
    vb = vb_;
    n = n_;
    np = n + (n & 1);
    if constexpr (kPacked) {
      if (packed) {
        pack_vnni(true, n, D, kb, D, kt.data());
        pack_vnni(true, n, Dv, vb, Dv, vt.data());
        pack_vnni(false, D, n, kb, D, kn.data());
      }
    }
  }

  // s (m x n) = scale Q K^T
  void scores(const I* qb, int64_t m, T scale, T* s) {
    if constexpr (kPacked) {
      if (packed && D % 2 == 0) return mm_vnni(m, n, D, scale, qb, D, kt.data(), 0.f, s, n);
    }
    mm<T, I>(false, true, m, n, D, scale, qb, D, kb, D, T(0), s, n);
  }

  // dP (m x n) = dO V^T
  void dp(const I* dob, int64_t m, T* dp) {
    if constexpr (kPacked) {
      if (packed && Dv % 2 == 0) return mm_vnni(m, n, Dv, 1.f, dob, Dv, vt.data(), 0.f, dp, n);
    }
    mm<T, I>(false, true, m, n, Dv, T(1), dob, Dv, vb, Dv, T(0), dp, n);
  }

  // dV (n x Dv) += P^T dO for P (m x n); dO's rows also as pairs (null: pack them here)
  void dv(T* p, int64_t m, const I* dob, const I* do_pairs, T* dvbuf) {
    if constexpr (kPacked) {
      if (packed) {
        const int64_t mp = m + (m & 1);
        at::vec::convert(p, pin.data(), m * n);
        transpose_bf16(pin.data(), m, n, n, ptr.data(), mp);
        if (do_pairs == nullptr) {
          scr.resize(mp * Dv);
          pack_vnni(false, Dv, m, dob, Dv, scr.data());
          do_pairs = scr.data();
        }
        return mm_vnni(n, Dv, mp, 1.f, ptr.data(), mp, do_pairs, 1.f, dvbuf, Dv);
      }
    }
    mm<T, I>(true, false, n, Dv, m, T(1), as_input<T, I>(p, m * n, pin), n, dob, Dv, T(1), dvbuf, Dv);
  }

  // dK (n x D) += scale dS^T Q and dQ (m x D, rows of dq) += scale dS K for dS (m x n, overwritten)
  void dk_dq(T* ds, int64_t m, T scale, const I* qb, const I* q_pairs, T* dkbuf, T* dq) {
    if constexpr (kPacked) {
      if (packed) {
        const int64_t mp = m + (m & 1);
        for (int64_t i = 0; i < m; ++i) {  // scale dS, round it (rows np wide, the padding zero)
          at::vec::map([scale](Vec<T> x) { return x * Vec<T>(scale); }, ds + i * n, ds + i * n, n);
          at::vec::convert(ds + i * n, pin.data() + i * np, n);
          if (np != n) pin[i * np + n] = I(0.f);
        }
        transpose_bf16(pin.data(), m, n, np, ptr.data(), mp);
        if (q_pairs == nullptr) {
          scr.resize(mp * D);
          pack_vnni(false, D, m, qb, D, scr.data());
          q_pairs = scr.data();
        }
        mm_vnni(n, D, mp, 1.f, ptr.data(), mp, q_pairs, 1.f, dkbuf, D);
        return mm_vnni(m, D, np, 1.f, pin.data(), np, kn.data(), 1.f, dq, D);
      }
    }
    const I* d = as_input<T, I>(ds, m * n, pin);
    mm<T, I>(true, false, n, D, m, scale, d, n, qb, D, T(1), dkbuf, D);
    mm<T, I>(false, false, m, D, n, scale, d, n, kb, D, T(1), dq, D);
  }
};

template <typename T, typename I>
void backward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& dout,
                   const at::Tensor& lse, const at::Tensor& delta, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                   const Plan& pl, double scale_d, const std::vector<ModOp<T>>& mods,
                   std::vector<at::Tensor>& dbias, const I* q_pairs, const I* do_pairs) {
  const int64_t B = q.size(0), H = q.size(1), T_ = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2), Dv = v.size(3);
  const int64_t rep = H / Hkv, bq = pl.bq, bk = pl.bk, nK = pl.nK, nQ = pl.nQ;
  int64_t n_caps = 0;
  bool mods_grad = false;  // whether dS goes back through the modifiers (soft-caps, bias gradients)
  for (size_t p = 0; p < mods.size(); ++p) {
    n_caps += mods[p].kind == kSoftcap;
    mods_grad = mods_grad || mods[p].kind == kSoftcap || dbias[p].defined() ||
                (mods[p].kind == kHashed && mods[p].shared);
  }
  const T scale = static_cast<T>(scale_d);
  const I* qp = q.data_ptr<I>();
  const I* kp = k.data_ptr<I>();
  const I* vp = v.data_ptr<I>();
  const I* dop = dout.data_ptr<I>();
  const T* lp = lse.data_ptr<T>();
  const T* dlp = delta.data_ptr<T>();
  T* dkp = dk.data_ptr<T>();
  T* dvp = dv.data_ptr<T>();
  const int64_t n_threads = at::get_num_threads();
  const int64_t heads = B * Hkv;
  // enough heads to share out: each task owns its query heads' dQ rows; else per-thread dQ buffers
  const bool by_head = heads >= 4 * n_threads || heads % n_threads == 0;
  const int64_t n_items = by_head ? heads : heads * nK;
  std::vector<at::Tensor> dq_bufs;
  if (!by_head && n_threads > 1) {
    for (int64_t i = 0; i < n_threads; ++i) dq_bufs.push_back(at::Tensor());
  }
  const int64_t rmax = std::min<int64_t>(kMaxRun, std::max<int64_t>(bq, (kMaxRun / bq) * bq));
  // bias gradients: written in place where no two work items reach the same element, else into
  // per-thread buffers summed at the end
  std::vector<std::vector<at::Tensor>> dbias_bufs(n_threads);
  std::vector<bool> shared_dbias(mods.size(), false);
  for (size_t p = 0; p < mods.size(); ++p) {
    if (!dbias[p].defined() || n_threads == 1) continue;
    const at::Tensor& g = dbias[p];
    shared_dbias[p] =
        (B > 1 && g.size(0) == 1) || (Hkv > 1 && g.size(1) == 1) || (!by_head && nK > 1 && g.size(3) == 1);
  }
  parallel_round_robin(n_items, [&](int64_t tid, int64_t nt) {
    std::vector<T> pbuf(rmax * bk), dpbuf(rmax * bk), dkbuf(bk * D), dvbuf(bk * Dv), tbuf(n_caps * rmax * bk);
    BackwardProducts<T, I> prod(D, Dv, rmax, bk);
    std::vector<T*> tanh_rows(std::max<int64_t>(n_caps, 1));
    T* dqp = dq.data_ptr<T>();
    if (!dq_bufs.empty()) {
      if (!dq_bufs[tid].defined()) dq_bufs[tid] = at::zeros_like(dq);
      dqp = dq_bufs[tid].data_ptr<T>();
    }
    std::vector<ModOp<T>> ops = mods;  // this thread's view (its own gradient buffers)
    for (size_t p = 0; p < ops.size(); ++p) {
      if (!dbias[p].defined()) continue;
      at::Tensor g = dbias[p];
      if (shared_dbias[p]) {
        if (dbias_bufs[tid].empty()) dbias_bufs[tid].resize(ops.size());
        dbias_bufs[tid][p] = at::zeros_like(g);
        g = dbias_bufs[tid][p];
      }
      ops[p].grad = g.data_ptr<T>();
      int64_t* st[4] = {&ops[p].gb, &ops[p].gh, &ops[p].gi, &ops[p].gj};
      for (int d = 0; d < 4; ++d) *st[d] = g.size(d) == 1 ? 0 : g.stride(d);
    }
    for (int64_t it = tid; it < n_items; it += nt) {
      const int64_t head = by_head ? it : it / nK;
      const int64_t kb_lo = by_head ? 0 : it % nK, kb_hi = by_head ? nK : kb_lo + 1;
      const int64_t b = head / Hkv, hk = head % Hkv;
      for (int64_t kj = kb_lo; kj < kb_hi; ++kj) {
        const int64_t j0 = kj * bk, n = std::min(bk, S - j0);
        const I* kb = kp + ((b * Hkv + hk) * S + j0) * D;
        const I* vb = vp + ((b * Hkv + hk) * S + j0) * Dv;
        std::fill(dkbuf.begin(), dkbuf.begin() + n * D, T(0));
        std::fill(dvbuf.begin(), dvbuf.begin() + n * Dv, T(0));
        bool any = false, keys_set = false;
        for (int64_t h = hk * rep; h < (hk + 1) * rep; ++h) {
          const int64_t bm = pl.Bm == 1 ? 0 : b, hm = pl.Hm == 1 ? 0 : h;
          const int64_t c = (bm * pl.Hm + hm) * nK + kj;
          const int64_t t_end = pl.col_ptr[c + 1];
          for (int64_t t = pl.col_ptr[c]; t < t_end;) {
            int64_t t2 = t + 1;
            while (t2 < t_end && pl.col_row[t2] == pl.col_row[t2 - 1] + 1 && (t2 - t + 1) * bq <= rmax) ++t2;
            any = true;
            if (!keys_set) {
              prod.set_keys(kb, vb, n);
              keys_set = true;
            }
            const int64_t i0 = pl.col_row[t] * bq, i1 = std::min(T_, (pl.col_row[t2 - 1] + 1) * bq), m = i1 - i0;
            const int64_t row0 = (b * H + h) * T_ + i0;
            const int64_t pair0 = (b * H + h) * ((T_ + 1) / 2) + i0 / 2;  // in q_pairs / do_pairs
            const I* qb = qp + row0 * D;
            const I* dob = dop + row0 * Dv;
            T* p = pbuf.data();
            T* dp = dpbuf.data();
            prod.scores(qb, m, scale, p);
            if (!ops.empty()) {
              for (int64_t i = 0; i < m; ++i) {
                for (int64_t c = 0; c < n_caps; ++c) tanh_rows[c] = tbuf.data() + (c * rmax + i) * n;
                mods_row<T>(ops, p + i * n, n, b, h, i0 + i, j0, S - T_, n_caps ? tanh_rows.data() : nullptr);
              }
            }
            for (int64_t u = t; u < t2; ++u) {
              if (pl.col_lib[u] < 0) continue;
              const int64_t r0 = (u - t) * bq, nr = std::min(bq, m - r0);
              apply_mask<T>(p + r0 * n, n, nr, n, pl.masks + pl.col_lib[u] * bq * bk, bk, bk);
            }
            for (int64_t i = 0; i < m; ++i) {  // p = exp(s - lse); dead rows (lse = -inf) give 0
              const T l = lp[row0 + i];
              T* pi = p + i * n;
              if (l == -std::numeric_limits<T>::infinity()) {
                std::fill(pi, pi + n, T(0));
              } else {
                exp_sum(pi, n, l);
              }
            }
            prod.dv(p, m, dob, do_pairs == nullptr ? nullptr : do_pairs + pair0 * 2 * Dv, dvbuf.data());
            prod.dp(dob, m, dp);
            for (int64_t i = 0; i < m; ++i) {  // dS = P * (dP - delta)
              const T d = dlp[row0 + i];
              T* pi = p + i * n;
              const T* dpi = dp + i * n;
              at::vec::map2([d](Vec<T> x, Vec<T> y) { return x * (y - Vec<T>(d)); }, pi, pi, dpi, n);
            }
            if (mods_grad) {  // dS of the modified scores -> dS of the raw scores (and the bias gradients)
              for (int64_t i = 0; i < m; ++i) {
                for (int64_t c = 0; c < n_caps; ++c) tanh_rows[c] = tbuf.data() + (c * rmax + i) * n;
                mods_row_backward<T>(ops, p + i * n, n, b, h, i0 + i, j0, tanh_rows.data(), n_caps);
              }
            }
            prod.dk_dq(p, m, scale, qb, q_pairs == nullptr ? nullptr : q_pairs + pair0 * 2 * D, dkbuf.data(),
                       dqp + row0 * D);
            t = t2;
          }
        }
        if (any) {
          std::copy(dkbuf.begin(), dkbuf.begin() + n * D, dkp + ((b * Hkv + hk) * S + j0) * D);
          std::copy(dvbuf.begin(), dvbuf.begin() + n * Dv, dvp + ((b * Hkv + hk) * S + j0) * Dv);
        }
      }
    }
    if constexpr (!std::is_same_v<T, I>) {
      if (has_bf16_gemm()) at::native::cpublas::brgemm_release();  // the brgemm context of this thread
    }
  });
  for (auto& buf : dq_bufs) {
    if (buf.defined()) dq.add_(buf);
  }
  for (auto& bufs : dbias_bufs) {
    for (size_t p = 0; p < bufs.size(); ++p) {
      if (bufs[p].defined()) dbias[p].add_(bufs[p]);
    }
  }
}

std::vector<at::Tensor> backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& dout, const at::Tensor& lse, const at::Tensor& delta,
                                 const std::vector<at::Tensor>& plan, int64_t Bm, int64_t Hm, int64_t nQ,
                                 int64_t nK, int64_t bq, int64_t bk, int64_t G, double scale,
                                 const std::vector<int64_t>& mod_kinds, const std::vector<at::Tensor>& mod_tensors,
                                 const std::vector<std::vector<double>>& mod_params,
                                 const std::vector<int64_t>& mod_grads) {
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous() && dout.is_contiguous() &&
                  lse.is_contiguous() && delta.is_contiguous(),
              "inputs must be contiguous");
  TORCH_CHECK(bq <= kMaxRun, "block_q must be at most ", kMaxRun);
  Plan pl = make_plan(plan, Bm, Hm, nQ, nK, bq, bk, G);
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
                  dout.scalar_type() == q.scalar_type(),
              "q, k, v and dout must share a dtype");
  const auto compute = q.options().dtype(q.scalar_type() == at::kBFloat16 ? at::kFloat : q.scalar_type());
  TORCH_CHECK(lse.scalar_type() == compute.dtype() && delta.scalar_type() == compute.dtype(),
              "lse and delta must be in the compute dtype");
  at::Tensor dq = at::zeros(q.sizes(), compute), dk = at::zeros(k.sizes(), compute), dv = at::zeros(v.sizes(), compute);
  TORCH_CHECK(mod_grads.size() == mod_kinds.size(), "one gradient flag per modifier");
  std::vector<at::Tensor> dbias(mod_kinds.size());  // undefined: no gradient wanted
  for (size_t p = 0; p < mod_kinds.size(); ++p) {
    if (mod_grads[p] && mod_kinds[p] == kBias) dbias[p] = at::zeros(mod_tensors[p].sizes(), compute);
  }
  if (q.scalar_type() == at::kFloat) {
    backward_impl<float, float>(q, k, v, dout, lse, delta, dq, dk, dv, pl, scale,
                                make_mods<float>(mod_kinds, mod_tensors, mod_params, q.size(1)), dbias, nullptr,
                                nullptr);
  } else if (q.scalar_type() == at::kBFloat16) {
    // Q and dO as row pairs, the right operands of dK and dV, packed once (query tiles start on even rows)
    at::Tensor q_pairs, do_pairs;
    if (has_bf16_gemm() && bq % 2 == 0) {
      q_pairs = row_pairs(q);
      do_pairs = row_pairs(dout);
    }
    backward_impl<float, at::BFloat16>(q, k, v, dout, lse, delta, dq, dk, dv, pl, scale,
                                       make_mods<float>(mod_kinds, mod_tensors, mod_params, q.size(1)), dbias,
                                       packed_or_null(q_pairs), packed_or_null(do_pairs));
  } else {
    TORCH_CHECK(q.scalar_type() == at::kDouble, "float32, float64 or bfloat16 expected");
    backward_impl<double, double>(q, k, v, dout, lse, delta, dq, dk, dv, pl, scale,
                                  make_mods<double>(mod_kinds, mod_tensors, mod_params, q.size(1)), dbias, nullptr,
                                  nullptr);
  }
  std::vector<at::Tensor> res{dq, dk, dv};
  for (auto& g : dbias) res.push_back(g.defined() ? g : at::empty({0}, compute));
  return res;
}

// ---------------------------------------------------------------------------------------------
// angular LSH buckets
// ---------------------------------------------------------------------------------------------

// Bucket of every row of x (N, D) in each of R rounds: argmax over [x r, -x r] of the round's
// projections r (D, half), as torch's max / min and where(top >= -low, argmax, argmin + half)
// give it: the first index of a maximum, and for a row whose projections hold a NaN, the first
// NaN's index + half. rot (D, R * half). One parallel pass; each block of rows is projected into
// a buffer that stays in cache and reduced there.
template <typename T>
void hash_impl(const at::Tensor& x, const at::Tensor& rot, at::Tensor& out, int64_t rounds) {
  const int64_t N = x.size(0), D = x.size(1), W = rot.size(1), half = W / rounds;
  constexpr int64_t kRows = 64;
  const T* xp = x.data_ptr<T>();
  const T* rp = rot.data_ptr<T>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, (N + kRows - 1) / kRows, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> buf(kRows * W);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t r0 = blk * kRows, m = std::min(kRows, N - r0);
      gemm<T>(false, false, m, W, D, T(1), xp + r0 * D, D, rp, W, T(0), buf.data(), W);
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t r = 0; r < rounds; ++r) {
          const T* p = buf.data() + i * W + r * half;
          int64_t top = 0, low = 0, nan = -1;
          for (int64_t j = 0; j < half; ++j) {
            if (p[j] != p[j]) {
              nan = j;
              break;
            }
            if (p[j] > p[top]) top = j;
            if (p[j] < p[low]) low = j;
          }
          op[(r0 + i) * rounds + r] = nan >= 0 ? nan + half : (p[top] >= -p[low] ? top : low + half);
        }
      }
    }
  });
}

at::Tensor hash_buckets(const at::Tensor& x, const at::Tensor& rot, int64_t rounds) {
  TORCH_CHECK(x.dim() == 2 && rot.dim() == 2 && x.size(1) == rot.size(0) && rounds >= 1 && rot.size(1) % rounds == 0 &&
                  rot.size(1) >= rounds,
              "hash_buckets takes x (N, D) and rotations (D, R * half)");
  TORCH_CHECK(x.is_contiguous() && rot.is_contiguous() && x.scalar_type() == rot.scalar_type(),
              "x and the rotations must be contiguous and of one dtype");
  at::Tensor out = at::empty({x.size(0), rounds}, x.options().dtype(at::kLong));
  if (x.scalar_type() == at::kFloat) {
    hash_impl<float>(x, rot, out, rounds);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kDouble, "float32 or float64 expected");
    hash_impl<double>(x, rot, out, rounds);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "tile-sparse attention forward: (out, lse)");
  m.def("backward", &backward, "tile-sparse attention backward: (dq, dk, dv, *bias gradients)");
  m.def("has_blas", &has_blas, "whether libtorch exports the BLAS sgemm_/dgemm_ used for tile products");
  m.def("has_bf16_gemm", &has_bf16_gemm, "whether ATen's bfloat16 brgemm takes VNNI-packed operands here");
  m.def("hash_buckets", &hash_buckets, "angular LSH buckets (N, R) of x (N, D) under rotations (D, R * half)");
}
