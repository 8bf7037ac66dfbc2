// A whole training sequence of the plastic LIF network in one compiled routine per direction.
//
// The equations are those of hybridopt.snn.network.network_step (see its docstring) and of the
// rule families and modulation modes in hybridopt.snn.rules / hybridopt.snn.modes:
//
//   I_t   = x_t W_in + b + x_t (alpha_in . H_in) + s_{t-1} (W + alpha . H)
//   v_t   = beta v_{t-1} (1 - s_{t-1}) + I_t     or   beta v_{t-1} - theta s_{t-1} + I_t
//   s_t   = Heaviside(v_t - theta)                (backward: the surrogate derivative)
//           with k winners: Heaviside(v_t - max(theta, (v_t^(k) + v_t^(k+1)) / 2)), midway between
//           the k-th and (k+1)-th largest of the sample's potentials, detached as the reset is
//   y_t   = kappa y_{t-1} + s_t (W_out + alpha_out . H_out) + b_out
//   M_t   = tanh(w_M . [x_t, s_t] + b_M)          (per modulated projection; [x_t, s_t, y_t]
//                                                   when it reads the output: w_M_y set)
//      or   zbar_t = zbar_{t-1} + (w_M . [x_t, s_t] + b_M - zbar_{t-1}) / tau_M,  M_t = tanh(zbar_t)
//      times  G_t = sigmoid(w_G . [x_t, s_t] + b_G)  where gated
//   xpre  = lambda xpre + pre,  xpost = lambda xpost + post
//   D     = rule(xpre, xpost, pre, post, H_{t-1}, phi_{t-1})
//           (ABCD: A_ij xpre_i xpost_j + B_ij xpre_i + C_ij xpost_j + D_ij, a coefficient of each
//            kind per synapse)
//   U     = H + gain . D   or   E <- (1 - c) E + c D,  U = H + M E
//   H_t   = clip(U, -h_max, h_max)
//   phi_t = phi_{t-1} + (xpost^2 - phi_{t-1}) / tau
//
// The family and mode of each projection are read at run time, so one build serves every
// genome.  Forward keeps the small per-step values (traces, M, phi, v, s, y) and H (and E)
// every K steps; backward recomputes each chunk of K steps from its checkpoint (the same code,
// so the same bits and clip masks) and walks it in reverse with the vector-Jacobian products
// written out below.  The dense weights' gradients, sum_t a_t^T g_t, are summed over the non-zero
// rows of a_t as the walk goes: spikes (and the tasks' inputs) are mostly zero, so this is a
// small part of the dense product the caller would otherwise do over all T B rows.
//
// Plain C ABI (one struct of pointers), no Python or PyTorch headers: the library builds in
// about 30 CPU-seconds (once per machine) with the system compiler and is loaded with ctypes.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

enum Rule : int32_t { NONE = 0, HEBBIAN = 1, OJA = 2, BCM = 3, STDP = 4, ABCD = 5 };
enum Mode : int32_t { PLAIN = 0, NEUROMOD = 1, RETRO = 2 };

struct Proj {
  int32_t rule, mode, n_pre, n_post, n_eta, c_inside, tau_inside, pad;
  double h_max, lam, c, a_plus, a_minus, tau, mtau;  // mtau: the modulator's filter (zb: its state)
  // parameters
  // zx: T x B, x . w_M[:n_in] + b_M; w_M_s, w_M_y: w_M's parts on s and y (w_M_y null: not read)
  const void *alpha, *eta, *mod_a, *mod_b, *w_M_s, *w_M_y, *zx;
  // gated: the gate's drive zgx (T x B, x . w_G[:n_in] + b_G) and w_G's parts on s and y (zgx null:
  // not gated; w_G_y null: not read)
  const void *w_G_s, *w_G_y, *zgx;
  const void *cA, *cB, *cC, *cD;  // ABCD: the per-synapse coefficients (I x J each)
  // state: read at start, written at the end (H, E: B x I x J; traces B x I, B x J; phi B x J)
  void *H, *E, *xpre, *xpost, *phi, *zb;
  // tape: xpre_all T x B x I, xpost_all T x B x J, phi_all T x B x J (before the step), M_all T x B,
  // checkpoints H_ck / E_ck (T / K + 1) x B x I x J
  void *xpre_all, *xpost_all, *phi_all, *M_all, *H_ck, *E_ck;
  void *G_all, *Mu_all;  // gated: the gate and the ungated tanh(zbar), T x B each
  // backward: carried gradients (in: on the final state, out: on the initial one)
  void *gH, *gE, *gxpre, *gxpost, *gphi, *gzb;
  // backward: gradients of the parameters (accumulated) and of the modulator's drive (T x B)
  void *g_alpha, *g_eta, *g_mod_a, *g_mod_b, *g_z;
  void *g_zg;  // gated: the gradient on the gate's drive (T x B)
  void *g_cA, *g_cB, *g_cC, *g_cD;  // ABCD (accumulated, I x J each)
  double g_c, g_a_plus, g_a_minus, g_tau;
};

struct Net {
  int32_t T, B, n_in, N, n_out, reset, surrogate, K, store, winners;  // winners: k (0: no competition)
  double beta, theta, slope, kappa;
  const void *x, *W_in, *b_hid, *W_rec, *W_out, *b_out;  // x: T x B x n_in
  const void *v0, *s0, *y0;
  void *v_all, *s_all, *y_all;  // T x B x N, T x B x N, T x B x n_out
  // backward: gs_all / gy_all (in: the loss's gradients; gy_all out: the total on y_t), gcur_all (out)
  void *gs_all, *gy_all, *gcur_all;
  void *gv, *gs, *gy;  // in: on the final v, s, y; out: on the initial ones
  void *gW_in, *gb_hid, *gW_rec, *gW_out, *gb_out;  // out: the dense weights' gradients (accumulated)
  Proj p[3];           // input, recurrent, readout (rule NONE: static)
};

template <typename T>
inline T surrogate(int32_t kind, T x, T k) {
  if (kind == 0) {
    T d = k * std::fabs(x) + T(1);
    return T(1) / (d * d);
  }
  const T h = T(3.14159265358979323846) * k * x / T(2);
  return (k / T(2)) / (T(1) + h * h);
}

// k winners take all: theta_t = max(theta, (v^(k) + v^(k+1)) / 2), midway between the k-th and
// the (k+1)-th largest of a sample's N potentials; theta itself when there is no competition
// (k = 0 or k >= N)
template <typename T>
inline T competition_threshold(const T* v, int N, int k, T theta, std::vector<T>& work) {
  if (k <= 0 || k >= N) return theta;
  work.assign(v, v + N);
  std::nth_element(work.begin(), work.begin() + k, work.end(), [](T a, T b) { return a > b; });
  const T kth = *std::min_element(work.begin(), work.begin() + k);  // the k-th largest
  return std::max(theta, (kth + work[k]) / T(2));
}

#if defined(__GNUC__)
#define HYB_INLINE __attribute__((always_inline))
#else
#define HYB_INLINE
#endif

// sum of acc[0..W) as a tree of halves (each level one vector add)
template <int W, typename T>
inline T fold(T* acc) {
  if constexpr (W == 1) {
    return acc[0];
  } else {
#pragma omp simd
    for (int l = 0; l < W / 2; ++l) acc[l] += acc[l + W / 2];
    return fold<W / 2>(acc);
  }
}

// sum of x[0..n), kept per vector lane and folded in a tree (an in-order sum is a chain of adds)
template <int W, typename T>
inline T lane_sum(const T* __restrict__ x, size_t n) {
  alignas(64) T acc[W] = {};
  size_t q0 = 0;
  for (; q0 + W <= n; q0 += W) {
#pragma omp simd
    for (int l = 0; l < W; ++l) acc[l] += x[q0 + l];
  }
  for (size_t q = q0; q < n; ++q) acc[q - q0] += x[q];
  return fold<W>(acc);
}

template <typename T>
struct Seq {
  const Net& n;
  int B, N, nin, nout;
  static constexpr int L = 64 / sizeof(T);  // vector lanes of a 64-byte register
  explicit Seq(const Net& net) : n(net), B(net.B), N(net.N), nin(net.n_in), nout(net.n_out) {}

  static const T* c(const void* p) { return static_cast<const T*>(p); }
  static T* m(void* p) { return static_cast<T*>(p); }

  const T* s_at(int t) const { return t < 0 ? c(n.s0) : c(n.s_all) + (size_t)t * B * N; }
  const T* x_at(int t) const { return c(n.x) + (size_t)t * B * nin; }
  const T* y_at(int t) const { return c(n.y_all) + (size_t)t * B * nout; }

  // pre and post activity of projection k at step t (readout's post, tanh(y_t), into buf)
  void activity(int k, int t, const T*& pre, const T*& post, std::vector<T>& buf) const {
    if (k == 0) {
      pre = x_at(t);
      post = s_at(t);
    } else if (k == 1) {
      pre = s_at(t - 1);
      post = s_at(t);
    } else {
      pre = s_at(t);
      buf.resize((size_t)B * nout);
      const T* y = y_at(t);
      for (size_t q = 0; q < buf.size(); ++q) buf[q] = std::tanh(y[q]);
      post = buf.data();
    }
  }

  // What an update of projection k at step t reads: its activities, the traces, phi (before the
  // step) and M from the tape, and its constants.
  struct At {
    int I, J;
    const T *pre, *post, *xpre, *xpost, *phi, *M;
    T h, ap, am, cc;
  };
  At at(int k, int t, std::vector<T>& buf) const {
    const Proj& p = n.p[k];
    At v;
    v.I = p.n_pre;
    v.J = p.n_post;
    activity(k, t, v.pre, v.post, buf);
    v.xpre = c(p.xpre_all) + (size_t)t * B * v.I;
    v.xpost = c(p.xpost_all) + (size_t)t * B * v.J;
    v.phi = p.rule == BCM ? c(p.phi_all) + (size_t)t * B * v.J : nullptr;
    v.M = p.mode != PLAIN ? c(p.M_all) + (size_t)t * B : nullptr;
    v.h = T(p.h_max);
    v.ap = T(p.a_plus);
    v.am = T(p.a_minus);
    v.cc = T(p.c);
    return v;
  }

  // D_ij of the rule R at one synapse (the reference's operations, in its order)
  template <int R>
  static inline T rule_D(T xi, T si, T yj, T sj, T Hj, T qj, T ap, T am) {
    if constexpr (R == HEBBIAN) return xi * yj;
    else if constexpr (R == OJA) return qj * (xi - Hj * yj);
    else if constexpr (R == BCM) return xi * qj;
    else return ap * (xi * sj) - am * (si * yj);
  }

  // per (b, j): the gain on D (plain, neuromodulated) and the rule's post factor q (Oja, BCM)
  void post_factors(const Proj& p, int b, const T* __restrict__ yq, const T* __restrict__ phi_t, const T* M_t,
                    T* __restrict__ gain, T* __restrict__ q) const {
    const int J = p.n_post;  // (each case its own loop, so that every loop vectorises)
    const bool one = p.n_eta == 1;
    if (p.mode == PLAIN) {
      const T* __restrict__ eta = c(p.eta);
      for (int j = 0; j < J; ++j) gain[j] = eta[one ? 0 : j];
    } else if (p.mode == NEUROMOD) {
      const T* __restrict__ a = c(p.mod_a);
      const T* __restrict__ bb = c(p.mod_b);
      const T Mb = M_t[b];
      if (one) std::fill(gain, gain + J, a[0] * Mb + bb[0]);
      else
        for (int j = 0; j < J; ++j) gain[j] = a[j] * Mb + bb[j];
    } else {
      std::fill(gain, gain + J, T(p.c));
    }
    if (p.rule == OJA)
      for (int j = 0; j < J; ++j) q[j] = yq[j] / (T(1) + yq[j] * yq[j]);
    else if (p.rule == BCM)
      for (int j = 0; j < J; ++j) q[j] = yq[j] * (yq[j] - phi_t[(size_t)b * J + j]);
    else
      std::fill(q, q + J, T(0));
  }

#define HYB_RULES_MODES(X) \
  X(HEBBIAN, PLAIN) X(HEBBIAN, NEUROMOD) X(HEBBIAN, RETRO) X(OJA, PLAIN) X(OJA, NEUROMOD) X(OJA, RETRO) \
  X(BCM, PLAIN) X(BCM, NEUROMOD) X(BCM, RETRO) X(STDP, PLAIN) X(STDP, NEUROMOD) X(STDP, RETRO) \
  X(ABCD, PLAIN) X(ABCD, NEUROMOD) X(ABCD, RETRO)

  // The B x I x J update of projection k at step t, H_in -> H_out, E_in -> E_out (distinct
  // buffers); traces, phi (before the step) and M from the tape.
  void update(int k, int t, const T* H_in, T* H_out, const T* E_in, T* E_out, std::vector<T>& buf) const {
    switch (n.p[k].rule * 3 + n.p[k].mode) {
#define HYB_CASE(R, M) \
  case R * 3 + M: return update_rm<R, M>(k, t, H_in, H_out, E_in, E_out, buf);
      HYB_RULES_MODES(HYB_CASE)
#undef HYB_CASE
    }
  }

  template <int R, int M>
  void update_rm(int k, int t, const T* __restrict__ H_in, T* __restrict__ H_out, const T* __restrict__ E_in,
                 T* __restrict__ E_out, std::vector<T>& buf) const {
    const Proj& p = n.p[k];
    const At v = at(k, t, buf);
    const int I = v.I, J = v.J;
    const T *pre = v.pre, *post = v.post, *xpre_t = v.xpre, *xpost_t = v.xpost, *phi_t = v.phi, *M_t = v.M;
    const T h = v.h, ap = v.ap, am = v.am, cc = v.cc;
    std::vector<T> gain_v(J), q_v(J);
    T* __restrict__ gain = gain_v.data();
    T* __restrict__ q = q_v.data();
    for (int b = 0; b < B; ++b) {
      const T* __restrict__ yq = xpost_t + (size_t)b * J;
      const T* __restrict__ so = post + (size_t)b * J;
      post_factors(p, b, yq, phi_t, M_t, gain, q);
      const T Mb = M_t ? M_t[b] : T(0);
      for (int i = 0; i < I; ++i) {
        const size_t row = ((size_t)b * I + i) * J;
        const T* __restrict__ Hi = H_in + row;
        T* __restrict__ Ho = H_out + row;
        const T xi = xpre_t[(size_t)b * I + i], si = pre[(size_t)b * I + i];
        const size_t ij = (size_t)i * J;  // ABCD: the row's coefficients (read only by that family)
        const bool abcd = R == ABCD;
        const T *__restrict__ cA = abcd ? c(p.cA) + ij : nullptr, *__restrict__ cB = abcd ? c(p.cB) + ij : nullptr;
        const T *__restrict__ cC = abcd ? c(p.cC) + ij : nullptr, *__restrict__ cD = abcd ? c(p.cD) + ij : nullptr;
        auto D_at = [&](int j) HYB_INLINE {
          if constexpr (R == ABCD) return cA[j] * (xi * yq[j]) + cB[j] * xi + cC[j] * yq[j] + cD[j];
          else return rule_D<R>(xi, si, yq[j], so[j], Hi[j], q[j], ap, am);
        };
        if constexpr (M == RETRO) {
          const T* __restrict__ Ei = E_in + row;
          T* __restrict__ Eo = E_out + row;
#pragma omp simd
          for (int j = 0; j < J; ++j) {
            const T D = D_at(j);
            const T e = (T(1) - cc) * Ei[j] + cc * D;
            Eo[j] = e;
            const T u = Hi[j] + Mb * e;
            Ho[j] = std::min(std::max(u, -h), h);
          }
        } else {
#pragma omp simd
          for (int j = 0; j < J; ++j) {
            const T D = D_at(j);
            const T u = Hi[j] + gain[j] * D;
            Ho[j] = std::min(std::max(u, -h), h);
          }
        }
      }
    }
  }

  // out (B x n) += a (B x m) w (m x n), row-major; 4 vectors of output columns at a time held in
  // registers (a vector type: an array of accumulators would be kept in memory)
  static void matmul_acc(int B, int m, int n, const T* __restrict__ a, const T* __restrict__ w, T* __restrict__ out) {
    typedef T V __attribute__((vector_size(64)));
    constexpr int W = 4 * L;
    int c0 = 0;
    for (; c0 + W <= n; c0 += W)
      for (int b = 0; b < B; ++b) {
        T* o = out + (size_t)b * n + c0;
        V a0, a1, a2, a3;
        std::memcpy(&a0, o, sizeof(V));
        std::memcpy(&a1, o + L, sizeof(V));
        std::memcpy(&a2, o + 2 * L, sizeof(V));
        std::memcpy(&a3, o + 3 * L, sizeof(V));
        for (int k = 0; k < m; ++k) {
          const T ak = a[(size_t)b * m + k];
          const T* wr = w + (size_t)k * n + c0;
          V w0, w1, w2, w3;
          std::memcpy(&w0, wr, sizeof(V));
          std::memcpy(&w1, wr + L, sizeof(V));
          std::memcpy(&w2, wr + 2 * L, sizeof(V));
          std::memcpy(&w3, wr + 3 * L, sizeof(V));
          a0 += ak * w0;
          a1 += ak * w1;
          a2 += ak * w2;
          a3 += ak * w3;
        }
        std::memcpy(o, &a0, sizeof(V));
        std::memcpy(o + L, &a1, sizeof(V));
        std::memcpy(o + 2 * L, &a2, sizeof(V));
        std::memcpy(o + 3 * L, &a3, sizeof(V));
      }
    if (c0 < n)
      for (int b = 0; b < B; ++b)
        for (int k = 0; k < m; ++k) {
          const T ak = a[(size_t)b * m + k];
          const T* wr = w + (size_t)k * n;
          T* o = out + (size_t)b * n;
#pragma omp simd
          for (int q = c0; q < n; ++q) o[q] += ak * wr[q];
        }
  }

  // the indices of a's non-zero entries, ending in -1 (compacted without a branch per entry:
  // spikes are too irregular for the branch predictor)
  static int* active(const T* a, int I) {
    static thread_local std::vector<int> idx;
    if ((int)idx.size() < I + 1) idx.resize(I + 1);
    int* x = idx.data();
    int k = 0;
    for (int i = 0; i < I; ++i) {
      x[k] = i;
      k += a[i] != T(0);
    }
    x[k] = -1;
    return x;
  }

  // cur_bj += sum_i a_bi (alpha_ij H_bij)   (a: spikes or inputs; zero rows skipped)
  static void plastic_current(int B, int I, int J, const T* a, const T* alpha, const T* H, T* cur) {
    for (int b = 0; b < B; ++b) {
      T* cb = cur + (size_t)b * J;
      const T* ab = a + (size_t)b * I;
      int* act = active(ab, I);
      for (int* it = act; *it >= 0; ++it) {
        const int i = *it;
        const T ai = ab[i];
        const T* Al = alpha + (size_t)i * J;
        const T* Hr = H + ((size_t)b * I + i) * J;
        for (int j = 0; j < J; ++j) cb[j] += ai * (Al[j] * Hr[j]);
      }
    }
  }

  // cur_bj += sum_i a_bi W_ij
  static void dense_current(int B, int I, int J, const T* a, const T* W, T* cur) {
    for (int b = 0; b < B; ++b) {
      T* cb = cur + (size_t)b * J;
      const T* ab = a + (size_t)b * I;
      int* act = active(ab, I);
      for (int* it = act; *it >= 0; ++it) {
        const int i = *it;
        const T ai = ab[i];
        const T* Wr = W + (size_t)i * J;
        for (int j = 0; j < J; ++j) cb[j] += ai * Wr[j];
      }
    }
  }

  // out_ij += sum_b a_bi g_bj, and (with gsum) gsum_j += sum_b g_bj   (zero rows of a skipped)
  static void outer_acc(int B, int I, int J, const T* a, const T* g, T* out, T* gsum) {
    for (int b = 0; b < B; ++b) {
      const T* ab = a + (size_t)b * I;
      const T* __restrict__ gb = g + (size_t)b * J;
      int* act = active(ab, I);
      for (int* it = act; *it >= 0; ++it) {
        const T ai = ab[*it];
        T* __restrict__ o = out + (size_t)*it * J;
#pragma omp simd
        for (int j = 0; j < J; ++j) o[j] += ai * gb[j];
      }
      if (gsum) {
#pragma omp simd
        for (int j = 0; j < J; ++j) gsum[j] += gb[j];
      }
    }
  }

  // Work memory that outlives a call (per thread): a large buffer freed after every call would
  // be handed back to the system and faulted in again, page by page, on the next one.
  static T* scratch(int slot, size_t size) {
    static thread_local std::vector<T> pool[16];
    if (pool[slot].size() < size) pool[slot].resize(size);
    return pool[slot].data();
  }

  size_t bij(int k) const { return (size_t)B * n.p[k].n_pre * n.p[k].n_post; }

  // a modulator's (or its gate's) drive at step t for sample b: zx_tb + s_tb . w_s (+ y_tb . w_y)
  T read_drive(const void* zx, const void* w_s, const void* w_y, int t, int b) const {
    const T* s = s_at(t) + (size_t)b * N;
    const T* w = c(w_s);
    T z = c(zx)[(size_t)t * B + b];
#pragma omp simd reduction(+ : z)
    for (int j = 0; j < N; ++j) z += s[j] * w[j];
    if (w_y) {
      const T* y = y_at(t) + (size_t)b * nout;
      for (int o = 0; o < nout; ++o) z += y[o] * c(w_y)[o];
    }
    return z;
  }

  // its backward: the gradient g on that drive reaches s_tb (gs) and y_tb (gy, where read)
  void spread_drive(T g, const void* w_s, const void* w_y, int b, std::vector<T>& gs, std::vector<T>& gy) const {
    const T* w = c(w_s);
    for (int j = 0; j < N; ++j) gs[(size_t)b * N + j] += g * w[j];
    if (w_y)
      for (int o = 0; o < nout; ++o) gy[(size_t)b * nout + o] += g * c(w_y)[o];
  }

  // small per-step bookkeeping before a projection's update: traces, phi, M into the tape
  void drive(int k, int t, std::vector<T>& buf) {
    Proj& p = const_cast<Proj&>(n.p[k]);
    const int I = p.n_pre, J = p.n_post;
    const T* pre;
    const T* post;
    activity(k, t, pre, post, buf);
    const T lam = T(p.lam);
    T* xp = m(p.xpre);
    T* xo = m(p.xpost);
    for (size_t q = 0; q < (size_t)B * I; ++q) xp[q] = lam * xp[q] + pre[q];
    for (size_t q = 0; q < (size_t)B * J; ++q) xo[q] = lam * xo[q] + post[q];
    std::memcpy(m(p.xpre_all) + (size_t)t * B * I, xp, sizeof(T) * B * I);
    std::memcpy(m(p.xpost_all) + (size_t)t * B * J, xo, sizeof(T) * B * J);
    if (p.rule == BCM) std::memcpy(m(p.phi_all) + (size_t)t * B * J, p.phi, sizeof(T) * B * J);
    if (p.mode != PLAIN) {
      T* M = m(p.M_all) + (size_t)t * B;
      for (int b = 0; b < B; ++b) {
        T z = read_drive(p.zx, p.w_M_s, p.w_M_y, t, b);
        if (p.zb) {  // the filtered drive
          T* zb = m(p.zb);
          zb[b] = zb[b] + (z - zb[b]) / T(p.mtau);
          z = zb[b];
        }
        M[b] = std::tanh(z);
        if (p.zgx) {  // gated: M = G tanh(zbar), G = sigmoid(w_G . features + b_G)
          const T G = T(1) / (T(1) + std::exp(-read_drive(p.zgx, p.w_G_s, p.w_G_y, t, b)));
          m(p.G_all)[(size_t)t * B + b] = G;
          m(p.Mu_all)[(size_t)t * B + b] = M[b];
          M[b] = G * M[b];
        }
      }
    }
  }

  void threshold(int k) {
    Proj& p = const_cast<Proj&>(n.p[k]);
    if (p.rule != BCM) return;
    const T tau = T(p.tau);
    T* phi = m(p.phi);
    const T* xo = c(p.xpost);
    for (size_t q = 0; q < (size_t)B * p.n_post; ++q) phi[q] = phi[q] + (xo[q] * xo[q] - phi[q]) / tau;
  }

  void forward() {
    std::vector<T> v(c(n.v0), c(n.v0) + (size_t)B * N), cur((size_t)B * N), y(c(n.y0), c(n.y0) + (size_t)B * nout);
    std::vector<T> o((size_t)B * nout), buf, work;
    const T beta = T(n.beta), theta = T(n.theta), kappa = T(n.kappa);
    // each plastic state alternates between the caller's buffer and a second one
    T *Hc[3], *Hx[3], *Ec[3], *Ex[3];
    for (int k = 0; k < 3; ++k) {
      Hc[k] = Hx[k] = Ec[k] = Ex[k] = nullptr;
      if (n.p[k].rule == NONE) continue;
      Hc[k] = m(n.p[k].H);
      Hx[k] = scratch(k, bij(k));
      if (n.p[k].mode == RETRO) {
        Ec[k] = m(n.p[k].E);
        Ex[k] = scratch(3 + k, bij(k));
      }
    }
    for (int k = 0; k < 3; ++k)
      if (n.store && n.p[k].rule != NONE) {
        std::memcpy(n.p[k].H_ck, n.p[k].H, sizeof(T) * bij(k));
        if (n.p[k].mode == RETRO) std::memcpy(n.p[k].E_ck, n.p[k].E, sizeof(T) * bij(k));
      }
    for (int t = 0; t < n.T; ++t) {
      const T* sp = s_at(t - 1);
      for (int b = 0; b < B; ++b) std::memcpy(cur.data() + (size_t)b * N, n.b_hid, sizeof(T) * N);
      dense_current(B, nin, N, x_at(t), c(n.W_in), cur.data());
      dense_current(B, N, N, sp, c(n.W_rec), cur.data());
      if (n.p[0].rule != NONE) plastic_current(B, nin, N, x_at(t), c(n.p[0].alpha), Hc[0], cur.data());
      if (n.p[1].rule != NONE) plastic_current(B, N, N, sp, c(n.p[1].alpha), Hc[1], cur.data());
      T* s = m(n.s_all) + (size_t)t * B * N;
      T* vt = m(n.v_all) + (size_t)t * B * N;
      for (size_t q = 0; q < (size_t)B * N; ++q) {
        const T vv = n.reset == 0 ? beta * v[q] * (T(1) - sp[q]) + cur[q] : beta * v[q] - theta * sp[q] + cur[q];
        v[q] = vv;
        vt[q] = vv;
        s[q] = (vv - theta) > T(0) ? T(1) : T(0);
      }
      if (n.winners > 0 && n.winners < N)  // competition: the raised threshold, sample by sample
        for (int b = 0; b < B; ++b) {
          const T* vb = vt + (size_t)b * N;
          const T thr = competition_threshold(vb, N, n.winners, theta, work);
          for (int j = 0; j < N; ++j) s[(size_t)b * N + j] = (vb[j] - thr) > T(0) ? T(1) : T(0);
        }
      std::fill(o.begin(), o.end(), T(0));
      dense_current(B, N, nout, s, c(n.W_out), o.data());
      if (n.p[2].rule != NONE) plastic_current(B, N, nout, s, c(n.p[2].alpha), Hc[2], o.data());
      T* yt = m(n.y_all) + (size_t)t * B * nout;
      for (int b = 0; b < B; ++b)
        for (int j = 0; j < nout; ++j) {
          const size_t q = (size_t)b * nout + j;
          y[q] = kappa * y[q] + o[q] + c(n.b_out)[j];
          yt[q] = y[q];
        }
      for (int k = 0; k < 3; ++k) {
        if (n.p[k].rule == NONE) continue;
        drive(k, t, buf);
        update(k, t, Hc[k], Hx[k], Ec[k], Ex[k], buf);  // into the other buffer of the pair
        std::swap(Hc[k], Hx[k]);
        std::swap(Ec[k], Ex[k]);
        threshold(k);
        if (n.store && (t + 1) % n.K == 0) {
          const size_t at = (size_t)((t + 1) / n.K) * bij(k);
          std::memcpy(m(n.p[k].H_ck) + at, Hc[k], sizeof(T) * bij(k));
          if (n.p[k].mode == RETRO) std::memcpy(m(n.p[k].E_ck) + at, Ec[k], sizeof(T) * bij(k));
        }
      }
    }
    for (int k = 0; k < 3; ++k) {  // the final state where the caller expects it
      if (n.p[k].rule == NONE) continue;
      if (Hc[k] != m(n.p[k].H)) std::memcpy(n.p[k].H, Hc[k], sizeof(T) * bij(k));
      if (n.p[k].mode == RETRO && Ec[k] != m(n.p[k].E)) std::memcpy(n.p[k].E, Ec[k], sizeof(T) * bij(k));
    }
  }

  // ------------------------------------------------------------------------------- backward
  // The update of step t, backward: gH (on H_{t+1}) becomes the gradient on H_t (from the update
  // alone), gE likewise; the reductions the small part needs go to r.
  struct Red {
    std::vector<T> g_pre, g_post, g_phi, g_gain, g_M;  // B x I, B x J, B x J, B x J, B
  };
  std::vector<T> R2s_, Ys_;  // STDP: gradients on the pre and post spikes (B x I, B x J)

  // With `a_next` (the projection's input at step t + 1, whose current read H_{t+1}) the backward
  // of that current, cur_bj += sum_i a_bi alpha_ij H_bij with gradient g_next, is folded into the
  // same pass over H_{t+1}: gH += alpha a g^T before the clip mask, g_alpha += a g H, and (with
  // ga_next) ga_next_bi += sum_j alpha_ij H_bij g_bj.
  void update_backward(int k, int t, const T* H_prev, const T* H_new, const T* E_prev, const T* E_new,
                       std::vector<T>& buf, Red& r, const T* a_next, const T* g_next, T* ga_next) {
    const int F = a_next == nullptr ? 0 : (ga_next == nullptr ? 1 : 2);
    switch ((n.p[k].rule * 3 + n.p[k].mode) * 3 + F) {
#define HYB_CASE_F(R, M, F) \
  case (R * 3 + M) * 3 + F: return update_backward_rm<R, M, F>(k, t, H_prev, H_new, E_prev, E_new, buf, r, a_next, g_next, ga_next);
#define HYB_CASE(R, M) HYB_CASE_F(R, M, 0) HYB_CASE_F(R, M, 1) HYB_CASE_F(R, M, 2)
      HYB_RULES_MODES(HYB_CASE)
#undef HYB_CASE
#undef HYB_CASE_F
    }
  }

  template <int R, int M, int F>
  void update_backward_rm(int k, int t, const T* __restrict__ H_prev, const T* __restrict__ H_new,
                          const T* __restrict__ E_prev, const T* __restrict__ E_new, std::vector<T>& buf, Red& r,
                          const T* __restrict__ a_next, const T* __restrict__ g_next, T* __restrict__ ga_next) {
    Proj& p = const_cast<Proj&>(n.p[k]);
    const At v = at(k, t, buf);
    const int I = v.I, J = v.J;
    const T *pre = v.pre, *post = v.post, *xpre_t = v.xpre, *xpost_t = v.xpost, *phi_t = v.phi, *M_t = v.M;
    const T h = v.h, ap = v.ap, am = v.am, cc = v.cc;
    T* gH = m(p.gH);
    T* gE = m(p.gE);
    r.g_pre.assign((size_t)B * I, T(0));
    r.g_post.assign((size_t)B * J, T(0));
    r.g_phi.assign((size_t)B * J, T(0));
    r.g_gain.assign((size_t)B * J, T(0));
    r.g_M.assign((size_t)B, T(0));
    std::vector<T> gain_v(J), q_v(J), hs_v(J), Y_v(J), Z_v(J), Y2_v(J), wR_v(J), w2_v(J);
    T* __restrict__ wR = wR_v.data();
    T* __restrict__ w2 = w2_v.data();
    T* __restrict__ gain = gain_v.data();
    T* __restrict__ q = q_v.data();
    T* __restrict__ hs = hs_v.data();
    T* __restrict__ Y = Y_v.data();
    T* __restrict__ Z = Z_v.data();
    T* __restrict__ Y2 = Y2_v.data();
    double g_c = 0, g_ap = 0, g_am = 0;
    for (int b = 0; b < B; ++b) {
      const T* __restrict__ yq = xpost_t + (size_t)b * J;
      const T* __restrict__ so = post + (size_t)b * J;
      const T Mb = M_t ? M_t[b] : T(0);
      post_factors(p, b, yq, phi_t, M_t, gain, q);
      for (int j = 0; j < J; ++j) hs[j] = R == OJA ? gain[j] * -(q[j] * yq[j]) : T(0);  // gain dD/dH
      // Per row only sums of the incoming gradient gX are formed; D is never rebuilt, since
      // every family's D is a sum of pre x post outer products (Oja's also times H):
      //   P_j = sum_i gX_ij xpre_i,  Q_j = sum_i gX_ij s_pre_i (STDP),  Z_j = sum_i gX_ij H_ij (Oja),
      //   sum_i gX_ij D_ij = ypart_j (from P, Q, Z),  d xpre_i = sum_j gX_ij gain_j w_j.
      // ABCD's coefficients differ per synapse, so its D is rebuilt in the pass (into Z) and the
      // gradient on xpost summed there (into Y), beside its coefficients' own gradients.
      for (int j = 0; j < J; ++j) {
        const T w = R == HEBBIAN ? yq[j] : (R == STDP ? so[j] : q[j]);
        wR[j] = gain[j] * w;
        w2[j] = gain[j] * yq[j];
      }
      std::fill(Y, Y + J, T(0));  // P
      std::fill(Z, Z + J, T(0));
      std::fill(Y2, Y2 + J, T(0));  // Q
      T gM = 0;
      for (int i = 0; i < I; ++i) {
        const size_t row = ((size_t)b * I + i) * J;
        const T* __restrict__ Hp = H_prev + row;
        const T* __restrict__ Hn = H_new + row;
        T* __restrict__ g = gH + row;
        T* __restrict__ ge = M == RETRO ? gE + row : nullptr;
        const T* __restrict__ Ep = M == RETRO ? E_prev + row : nullptr;
        const T* __restrict__ En = M == RETRO ? E_new + row : nullptr;
        const T xi = xpre_t[(size_t)b * I + i], si = pre[(size_t)b * I + i];
        const T an = F > 0 ? a_next[(size_t)b * I + i] : T(0);
        const T* __restrict__ Al = c(p.alpha) + (size_t)i * J;
        T* __restrict__ gal = m(p.g_alpha) + (size_t)i * J;
        const T* __restrict__ gn = F > 0 ? g_next + (size_t)b * J : nullptr;
        const bool abcd = R == ABCD;  // the row's coefficients and their gradients
        const size_t ij = (size_t)i * J;
        const T *__restrict__ cA = abcd ? c(p.cA) + ij : nullptr, *__restrict__ cB = abcd ? c(p.cB) + ij : nullptr;
        const T *__restrict__ cC = abcd ? c(p.cC) + ij : nullptr, *__restrict__ cD = abcd ? c(p.cD) + ij : nullptr;
        T *__restrict__ gcA = abcd ? m(p.g_cA) + ij : nullptr, *__restrict__ gcB = abcd ? m(p.g_cB) + ij : nullptr;
        T *__restrict__ gcC = abcd ? m(p.g_cC) + ij : nullptr, *__restrict__ gcD = abcd ? m(p.g_cD) + ij : nullptr;
        // A row whose input is silent at t + 1 adds nothing to the next step's current, whose
        // part (a read-modify-write of g_alpha) is then left out of the row's pass.
        // The row sums are kept per vector lane and folded in a tree at the end of the row (an
        // in-order sum over the lanes, as a reduction clause compiles, is a chain of dependent adds).
        auto sweep = [&](auto carry, T& Rs, T& R2, T& gMi, T& gEi, T& gAi) {
          alignas(64) T aRs[L] = {}, aR2[L] = {}, aM[L] = {}, aE[L] = {}, aA[L] = {};
          auto body = [&](int j, int l) HYB_INLINE {
            T gin = g[j];
            if constexpr (decltype(carry)::value) {  // the next step's current
              const T pg = an * gn[j];
              gin += Al[j] * pg;
              gal[j] += pg * Hn[j];
            }
            if constexpr (F == 2) aA[l] += Al[j] * Hn[j] * gn[j];
            const T gU = (Hn[j] > -h && Hn[j] < h) ? gin : T(0);
            T gX;
            if constexpr (M == RETRO) {
              gX = ge[j] + Mb * gU;  // the total gradient on the new E
              aM[l] += gU * En[j];
              aE[l] += gX * Ep[j];
              ge[j] = (T(1) - cc) * gX;
            } else {
              gX = gU;
            }
            g[j] = R == OJA ? gU + gX * hs[j] : gU;
            if constexpr (R == ABCD) {  // D_ij = A xpre_i xpost_j + B xpre_i + C xpost_j + D, per synapse
              const T y = yq[j], gD = gX * gain[j];
              aRs[l] += gD * (cA[j] * y + cB[j]);
              Y[j] += gD * (cA[j] * xi + cC[j]);                               // on xpost_j
              Z[j] += gX * (cA[j] * (xi * y) + cB[j] * xi + cC[j] * y + cD[j]);  // sum_i gX_ij D_ij
              gcA[j] += gD * (xi * y);
              gcB[j] += gD * xi;
              gcC[j] += gD * y;
              gcD[j] += gD;
            } else {
              Y[j] += gX * xi;
              aRs[l] += gX * wR[j];
            }
            if constexpr (R == OJA) Z[j] += gX * Hp[j];
            if constexpr (R == STDP) {
              Y2[j] += gX * si;
              aR2[l] += gX * w2[j];
            }
          };
          int j0 = 0;
          for (; j0 + L <= J; j0 += L) {
#pragma omp simd
            for (int l = 0; l < L; ++l) body(j0 + l, l);
          }
          for (int j = j0; j < J; ++j) body(j, j - j0);
          Rs = fold<L>(aRs);
          if constexpr (R == STDP) R2 = fold<L>(aR2);
          if constexpr (M == RETRO) {
            gMi = fold<L>(aM);
            gEi = fold<L>(aE);
          }
          if constexpr (F == 2) gAi = fold<L>(aA);
        };
        T Rs = 0, R2 = 0, gMi = 0, gEi = 0, gAi = 0;
        if (F > 0 && an != T(0)) sweep(std::integral_constant<bool, (F > 0)>{}, Rs, R2, gMi, gEi, gAi);
        else sweep(std::false_type{}, Rs, R2, gMi, gEi, gAi);
        gM += gMi;
        g_c -= double(gEi);
        if constexpr (F == 2) ga_next[(size_t)b * I + i] += gAi;
        if constexpr (R == STDP) {
          r.g_pre[(size_t)b * I + i] = ap * Rs;
          R2s_[(size_t)b * I + i] = -am * R2;
        } else {
          r.g_pre[(size_t)b * I + i] = Rs;
        }
      }
      T* gg = r.g_gain.data() + (size_t)b * J;
      T* gpo = r.g_post.data() + (size_t)b * J;
      T* gph = r.g_phi.data() + (size_t)b * J;
      for (int j = 0; j < J; ++j) {
        const T y = yq[j], P = Y[j], gP = gain[j] * P;
        T sum_gD;  // sum_i gX_ij D_ij
        if constexpr (R == HEBBIAN) {
          sum_gD = y * P;
          gpo[j] = gP;
        } else if constexpr (R == OJA) {
          sum_gD = q[j] * (P - y * Z[j]);
          const T den = T(1) + y * y;
          const T dp = (T(1) - y * y) / (den * den);
          const T gZ = gain[j] * Z[j];
          gpo[j] = dp * (gP - y * gZ) - q[j] * gZ;
        } else if constexpr (R == BCM) {
          sum_gD = q[j] * P;
          gpo[j] = gP * (T(2) * y - phi_t[(size_t)b * J + j]);
          gph[j] = -gP * y;
        } else if constexpr (R == ABCD) {  // (Y: the gradient on xpost, gain included; Z: sum_i gX D)
          sum_gD = Z[j];
          gpo[j] = P;
        } else {  // STDP: the post spike a+ gain P, xpost -a- gain Q
          const T gQ = gain[j] * Y2[j];
          sum_gD = ap * (so[j] * P) - am * (y * Y2[j]);
          g_ap += double(so[j] * gP);
          g_am += -double(y * gQ);
          gpo[j] = -am * gQ;
          Ys_[(size_t)b * J + j] = ap * gP;
        }
        if constexpr (M == RETRO) {
          g_c += double(sum_gD);
        } else {
          gg[j] = sum_gD;
        }
      }
      r.g_M[b] = gM;
    }
    p.g_c += g_c;
    p.g_a_plus += g_ap;
    p.g_a_minus += g_am;
  }


  void backward() {
    const T beta = T(n.beta), theta = T(n.theta), kappa = T(n.kappa), slope = T(n.slope);
    std::vector<T> gv(c(n.gv), c(n.gv) + (size_t)B * N), gs(c(n.gs), c(n.gs) + (size_t)B * N);
    std::vector<T> gy(c(n.gy), c(n.gy) + (size_t)B * nout), gs_prev((size_t)B * N), buf, work;
    const int K = n.K;
    const int n_chunks = (n.T + K - 1) / K;
    T *cH[3], *cE[3];  // the chunk's states: cH[k] + u * bij(k) = H after t0 + u updates
    for (int k = 0; k < 3; ++k) {
      cH[k] = n.p[k].rule != NONE ? scratch(6 + k, (size_t)(K + 1) * bij(k)) : nullptr;
      cE[k] = n.p[k].mode == RETRO && n.p[k].rule != NONE ? scratch(9 + k, (size_t)(K + 1) * bij(k)) : nullptr;
    }
    Red r;
    std::vector<T> gxp, gxo, WT((size_t)N * N), WoT((size_t)N * nout);
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j) WT[(size_t)j * N + i] = c(n.W_rec)[(size_t)i * N + j];
    for (int j = 0; j < N; ++j)
      for (int o = 0; o < nout; ++o) WoT[(size_t)o * N + j] = c(n.W_out)[(size_t)j * nout + o];
    for (int ch = n_chunks - 1; ch >= 0; --ch) {
      const int t0 = ch * K, t1 = std::min(n.T, t0 + K);
      // recompute the chunk's states: cH[k][u] = H after t0 + u updates
      for (int k = 0; k < 3; ++k) {
        if (n.p[k].rule == NONE) continue;
        const size_t S = bij(k);
        std::memcpy(cH[k], c(n.p[k].H_ck) + (size_t)ch * S, sizeof(T) * S);
        if (n.p[k].mode == RETRO) std::memcpy(cE[k], c(n.p[k].E_ck) + (size_t)ch * S, sizeof(T) * S);
        for (int t = t0; t < t1; ++t) {
          const size_t a = (size_t)(t - t0) * S, z = a + S;
          T* Ea = n.p[k].mode == RETRO ? cE[k] + a : nullptr;
          T* Ez = n.p[k].mode == RETRO ? cE[k] + z : nullptr;
          update(k, t, cH[k] + a, cH[k] + z, Ea, Ez, buf);
        }
      }
      for (int t = t1 - 1; t >= t0; --t) {
        const T* s = s_at(t);
        const T* sp = s_at(t - 1);
        std::fill(gs_prev.begin(), gs_prev.end(), T(0));
        T* gyt = m(n.gy_all) + (size_t)t * B * nout;
        const T* gst = c(n.gs_all) + (size_t)t * B * N;
        for (size_t q = 0; q < gy.size(); ++q) gy[q] += gyt[q];
        for (size_t q = 0; q < gs.size(); ++q) gs[q] += gst[q];
        for (int k = 2; k >= 0; --k) {
          Proj& p = const_cast<Proj&>(n.p[k]);
          if (p.rule == NONE) continue;
          const int I = p.n_pre, J = p.n_post;
          const size_t S = bij(k), a = (size_t)(t - t0) * S;
          const T* xpost_t = c(p.xpost_all) + (size_t)t * B * J;
          // the threshold's backward first (it was updated last)
          T* gphi = m(p.gphi);
          T* gxo_c = m(p.gxpost);
          T* gxp_c = m(p.gxpre);
          gxo.assign(gxo_c, gxo_c + (size_t)B * J);
          gxp.assign(gxp_c, gxp_c + (size_t)B * I);
          if (p.rule == BCM) {
            const T tau = T(p.tau);
            const T* phi_t = c(p.phi_all) + (size_t)t * B * J;
            double g_tau = 0;
            for (size_t q = 0; q < (size_t)B * J; ++q) {
              const T g = gphi[q];
              gxo[q] += g * T(2) * xpost_t[q] / tau;
              g_tau += double(g * -((xpost_t[q] * xpost_t[q] - phi_t[q]) / (tau * tau)));
              gphi[q] = g * (T(1) - T(1) / tau);
            }
            if (p.tau_inside) p.g_tau += g_tau;
          }
          if (p.rule == STDP) {
            R2s_.assign((size_t)B * I, T(0));
            Ys_.assign((size_t)B * J, T(0));
          }
          const T* Hp = cH[k] + a;
          const T* Hn = Hp + S;
          const T* Ep = p.mode == RETRO ? cE[k] + a : nullptr;
          const T* En = p.mode == RETRO ? Ep + S : nullptr;
          const bool fuse = k < 2 && t + 1 < n.T;  // the current of step t + 1 read H_{t+1}
          const T* a_next = !fuse ? nullptr : (k == 0 ? x_at(t + 1) : s);
          const T* g_next = fuse ? c(n.gcur_all) + (size_t)(t + 1) * B * N : nullptr;
          update_backward(k, t, Hp, Hn, Ep, En, buf, r, a_next, g_next, fuse && k == 1 ? gs.data() : nullptr);
          for (size_t q = 0; q < gxp.size(); ++q) gxp[q] += r.g_pre[q];
          for (size_t q = 0; q < gxo.size(); ++q) gxo[q] += r.g_post[q];
          if (p.rule == BCM)
            for (size_t q = 0; q < (size_t)B * J; ++q) gphi[q] += r.g_phi[q];
          // the gain's parameters and M
          std::vector<T> gM(r.g_M);
          const T* M_t = p.mode != PLAIN ? c(p.M_all) + (size_t)t * B : nullptr;
          // (sums kept in locals: accumulating through the output pointers would chain every
          // addition through memory)
          if (p.mode == PLAIN) {
            T* ge = m(p.g_eta);
            if (p.n_eta == 1) {
              ge[0] += lane_sum<L>(r.g_gain.data(), (size_t)B * J);
            } else {
              for (int b = 0; b < B; ++b)
                for (int j = 0; j < J; ++j) ge[j] += r.g_gain[(size_t)b * J + j];
            }
          } else if (p.mode == NEUROMOD) {
            T* __restrict__ ga = m(p.g_mod_a);
            T* __restrict__ gb = m(p.g_mod_b);
            const T* __restrict__ ma = c(p.mod_a);
            for (int b = 0; b < B; ++b) {
              const T* __restrict__ gg = r.g_gain.data() + (size_t)b * J;
              if (p.n_eta == 1) {  // ga += M_b sum_j g_bj, gb += sum_j g_bj, gM_b += a sum_j g_bj
                const T sg = lane_sum<L>(gg, J);
                ga[0] += sg * M_t[b];
                gb[0] += sg;
                gM[b] += sg * ma[0];
              } else {
                T sm = 0;
                for (int j = 0; j < J; ++j) {
                  ga[j] += gg[j] * M_t[b];
                  gb[j] += gg[j];
                  sm += gg[j] * ma[j];
                }
                gM[b] += sm;
              }
            }
          }
          // the activities: pre and post spikes, through the traces
          const T* pre;
          const T* post;
          activity(k, t, pre, post, buf);
          std::vector<T> gpre(gxp), gpost(gxo);
          if (p.rule == STDP) {
            for (size_t q = 0; q < gpre.size(); ++q) gpre[q] += R2s_[q];
            for (size_t q = 0; q < gpost.size(); ++q) gpost[q] += Ys_[q];
          }
          const T lam = T(p.lam);
          for (size_t q = 0; q < gxp.size(); ++q) gxp_c[q] = lam * gxp[q];
          for (size_t q = 0; q < gxo.size(); ++q) gxo_c[q] = lam * gxo[q];
          if (k == 0) {
            for (size_t q = 0; q < gs.size(); ++q) gs[q] += gpost[q];
          } else if (k == 1) {
            for (size_t q = 0; q < gs.size(); ++q) gs[q] += gpost[q];
            for (size_t q = 0; q < gs_prev.size(); ++q) gs_prev[q] += gpre[q];
          } else {
            for (size_t q = 0; q < gs.size(); ++q) gs[q] += gpre[q];
            for (size_t q = 0; q < gy.size(); ++q) gy[q] += gpost[q] * (T(1) - post[q] * post[q]);
          }
          if (p.mode != PLAIN) {  // M = tanh(z) (or G tanh(z)): z's gradient, and s_t's (y_t's) part of the drive
            T* gz = m(p.g_z) + (size_t)t * B;
            T* gzb = p.zb ? m(p.gzb) : nullptr;  // filtered: the gradient on zbar from later steps
            const T mtau = T(p.mtau);
            const T* G_t = p.zgx ? c(p.G_all) + (size_t)t * B : nullptr;
            const T* Mu_t = p.zgx ? c(p.Mu_all) + (size_t)t * B : nullptr;
            for (int b = 0; b < B; ++b) {
              T g;
              if (G_t) {  // M = G u, u = tanh(zbar), G = sigmoid(zg): dM/dzbar = G (1 - u^2), dM/dzg = u G (1 - G)
                const T G = G_t[b], u = Mu_t[b];
                const T gg = gM[b] * u * (G * (T(1) - G));
                m(p.g_zg)[(size_t)t * B + b] = gg;
                spread_drive(gg, p.w_G_s, p.w_G_y, b, gs, gy);
                g = gM[b] * G * (T(1) - u * u);
              } else {
                g = gM[b] * (T(1) - M_t[b] * M_t[b]);
              }
              if (gzb) {  // zbar_t = zbar_{t-1} + (z_t - zbar_{t-1}) / tau
                g += gzb[b];
                gzb[b] = g * (T(1) - T(1) / mtau);
                g = g / mtau;
              }
              gz[b] = g;
              spread_drive(g, p.w_M_s, p.w_M_y, b, gs, gy);  // (gy: the gradient on y_t, not yet used)
            }
          }
        }
        // readout: y_t = kappa y_{t-1} + s_t (W_out + alpha_out . H_out_t) + b_out
        std::memcpy(gyt, gy.data(), sizeof(T) * gy.size());
        outer_acc(B, N, nout, s, gy.data(), m(n.gW_out), m(n.gb_out));
        for (int b = 0; b < B; ++b)
          for (int o = 0; o < nout; ++o) {
            const T g = gy[(size_t)b * nout + o];
            const T* __restrict__ w = WoT.data() + (size_t)o * N;
            T* __restrict__ gsb = gs.data() + (size_t)b * N;
#pragma omp simd
            for (int j = 0; j < N; ++j) gsb[j] += g * w[j];
          }
        if (n.p[2].rule != NONE) {
          const size_t a = (size_t)(t - t0) * bij(2);
          current_backward(2, s, gy.data(), cH[2] + a, gs.data(), N, nout);
        }
        for (size_t q = 0; q < gy.size(); ++q) gy[q] *= kappa;
        // LIF
        const T* vt = c(n.v_all) + (size_t)t * B * N;
        T* gcur = m(n.gcur_all) + (size_t)t * B * N;
        for (int b = 0; b < B; ++b) {
          const size_t o0 = (size_t)b * N;
          const T thr = competition_threshold(vt + o0, N, n.winners, theta, work);
          for (size_t q = o0; q < o0 + N; ++q) {
            const T g = gv[q] + gs[q] * surrogate<T>(n.surrogate, vt[q] - thr, slope);
            gcur[q] = g;
            gv[q] = n.reset == 0 ? beta * (T(1) - sp[q]) * g : beta * g;
          }
        }
        outer_acc(B, nin, N, x_at(t), gcur, m(n.gW_in), m(n.gb_hid));
        outer_acc(B, N, N, sp, gcur, m(n.gW_rec), nullptr);
        // currents into the hidden layer
        matmul_acc(B, N, N, gcur, WT.data(), gs_prev.data());
        gs.swap(gs_prev);  // the plastic currents' part comes with step t - 1's update (above)
      }
    }
    // the currents of step 0 read the initial states (chunk 0 is the one loaded)
    if (n.p[1].rule != NONE) current_backward(1, s_at(-1), c(n.gcur_all), cH[1], gs.data(), N, N);
    if (n.p[0].rule != NONE) current_backward(0, x_at(0), c(n.gcur_all), cH[0], nullptr, nin, N);
    std::memcpy(n.gv, gv.data(), sizeof(T) * gv.size());
    std::memcpy(n.gs, gs.data(), sizeof(T) * gs.size());
    std::memcpy(n.gy, gy.data(), sizeof(T) * gy.size());
  }

  // backward of cur_bj += sum_i a_bi alpha_ij H_bij: g_a (when given), g_alpha, and gH += alpha a g^T
  void current_backward(int k, const T* a, const T* g, const T* H, T* g_a, int I, int J) {
    Proj& p = const_cast<Proj&>(n.p[k]);
    const T* alpha = c(p.alpha);
    T* ga = m(p.g_alpha);
    T* gH = m(p.gH);
    for (int b = 0; b < B; ++b) {
      const T* gb = g + (size_t)b * J;
      for (int i = 0; i < I; ++i) {
        const T ai = a[(size_t)b * I + i];
        const size_t row = ((size_t)b * I + i) * J;
        const T* Hr = H + row;
        const T* Al = alpha + (size_t)i * J;
        if (g_a) {
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int j = 0; j < J; ++j) acc += Al[j] * Hr[j] * gb[j];
          g_a[(size_t)b * I + i] += acc;
        }
        if (ai == T(0)) continue;
        T* gr = gH + row;
        T* gal = ga + (size_t)i * J;
        for (int j = 0; j < J; ++j) {
          const T pg = ai * gb[j];
          gal[j] += pg * Hr[j];
          gr[j] += Al[j] * pg;
        }
      }
    }
  }
};

}  // namespace

extern "C" {

int32_t hyb_abi(void) { return (int32_t)sizeof(Net) * 1000 + (int32_t)sizeof(Proj); }

void hyb_forward_f32(Net* n) { Seq<float>(*n).forward(); }
void hyb_forward_f64(Net* n) { Seq<double>(*n).forward(); }
void hyb_backward_f32(Net* n) { Seq<float>(*n).backward(); }
void hyb_backward_f64(Net* n) { Seq<double>(*n).backward(); }
}
