// Native CPU kernels for temperance's samplers (float32 rows, row-major [B, V]).
//
// Built on first use by temperance/ops/_native.py (g++ -O3 -march=native, no torch headers; cached
// under ~/.cache/temperance/native) and called through ctypes. The pure-torch code is the reference
// (ops/_cut.py, ops/top_k.py, noise.py, ...): tests check that both give identical results, so
// nothing here is needed for correctness. Float32 arithmetic that must match torch's is written op
// for op (the build turns off implicit FMA contraction).
//
// Mass cuts (top-p, typical). A *cut* keeps the shortest prefix of a row, in (key ascending, token
// id ascending) order, whose probability mass reaches target * z (masses w_i = exp(x_i - max) in
// float64, z = sum w_i). It is returned as (kstar, q, n): keep every token with key < kstar plus
// the first q tokens (lowest ids) with key == kstar, n tokens in all.
//   mode 0 (top-p):   key = -x  (kstar is reported as the logit value t: keep x > t, q ties at t)
//   mode 1 (typical): key = |x - c| in float64, c = E_p[x] = max + sum(w d) / z
// One read of the row for max/min, one for the masses and a histogram of the keys (NB bins), then
// only the bin holding the crossing token is sorted. The row stays in cache between the passes.
//
// Top-k: a heap of the k best by (value desc, id asc), fed by a block scan that skips blocks of 16
// which cannot beat the heap's worst entry.

#include <algorithm>
#include <cmath>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

namespace {

constexpr int NB = 1024;       // histogram bins per row
constexpr double RCAP = 80.0;  // keys beyond this (nats) share the last bin: their mass is < e^-80
constexpr int64_t ALL = std::numeric_limits<int64_t>::max() / 4;  // "q": keep every tie
const float FINF = std::numeric_limits<float>::infinity();

// exp(d) for d <= 0 (or -inf) in float64, branch-free so that loops vectorise. Cody-Waite
// reduction and a degree-13 Taylor polynomial: relative error ~2e-16. Returns 0 below -708.
inline double exp_le0(double d) {
    const double MAGIC = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
    const double dd = d < -708.0 ? -708.0 : d;
    const double km = dd * 1.4426950408889634 + MAGIC;
    const double k = km - MAGIC;
    const double r = (dd - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10;
    // Horner with explicit fused multiply-adds where the CPU has them (the build turns off implicit
    // contraction elsewhere, so that float32 arithmetic matches torch's op for op)
#ifdef __FMA__
#define TEMPERANCE_MADD(a, b, c) std::fma(a, b, c)
#else
#define TEMPERANCE_MADD(a, b, c) ((a) * (b) + (c))
#endif
    double p = 1.0 / 6227020800.0;
    p = TEMPERANCE_MADD(p, r, 1.0 / 479001600.0);
    p = TEMPERANCE_MADD(p, r, 1.0 / 39916800.0);
    p = TEMPERANCE_MADD(p, r, 1.0 / 3628800.0);
    p = TEMPERANCE_MADD(p, r, 1.0 / 362880.0);
    p = TEMPERANCE_MADD(p, r, 1.0 / 40320.0);
    p = TEMPERANCE_MADD(p, r, 1.0 / 5040.0);
    p = TEMPERANCE_MADD(p, r, 1.0 / 720.0);
    p = TEMPERANCE_MADD(p, r, 1.0 / 120.0);
    p = TEMPERANCE_MADD(p, r, 1.0 / 24.0);
    p = TEMPERANCE_MADD(p, r, 1.0 / 6.0);
    p = TEMPERANCE_MADD(p, r, 0.5);
    p = TEMPERANCE_MADD(p, r, 1.0);
    p = TEMPERANCE_MADD(p, r, 1.0);
#undef TEMPERANCE_MADD
    int64_t kb, mb;
    std::memcpy(&kb, &km, 8);
    std::memcpy(&mb, &MAGIC, 8);
    const int64_t eb = (kb - mb + 1023) << 52;  // 2^k, k in [-1022, 0]
    double scale;
    std::memcpy(&scale, &eb, 8);
    return d < -708.0 ? 0.0 : p * scale;
}

// Sum in a fixed order with 8 independent accumulators (vectorises; deterministic).
inline double sum8(const double* w, int64_t n) {
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) a[j] += w[i + j];
    double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; i < n; ++i) s += w[i];
    return s;
}

struct Scratch {
    std::vector<double> w, key;
    std::vector<int32_t> bin;
    std::vector<double> hm;
    std::vector<std::pair<double, int64_t>> band;
    void size(int64_t V) {
        if ((int64_t)w.size() < V) { w.resize(V); key.resize(V); bin.resize(V); }
        hm.assign(4 * NB, 0.0);
    }
};

// Max and min finite entry of a row; returns 1 if it holds NaN or +inf.
int scan(const float* x, int64_t V, float& hi, float& lo) {
    int bad = 0;
    for (int64_t i = 0; i < V; ++i) bad |= (x[i] != x[i]) | (x[i] == FINF);
    if (bad) return 1;
    float h = -FINF, l = FINF;
#pragma omp simd reduction(max : h) reduction(min : l)
    for (int64_t i = 0; i < V; ++i) {
        h = x[i] > h ? x[i] : h;
        const float u = x[i] > -FINF ? x[i] : FINF;
        l = u < l ? u : l;
    }
    hi = h, lo = l;
    return 0;
}

// Returns 1 for a row with NaN or +inf or no finite entry (the caller uses the reference code).
int cut_row(const float* x, int64_t V, int mode, double target, Scratch& s, double& kstar,
            double& center, int64_t& q, int64_t& n) {
    float hi, lo;
    if (scan(x, V, hi, lo) || hi == -FINF) return 1;
    s.size(V);
    double* w = s.w.data();
    const double m = hi;
    for (int64_t i = 0; i < V; ++i) w[i] = exp_le0((double)x[i] - m);
    const double z = sum8(w, V);
    double* key = s.key.data();
    int32_t* bin = s.bin.data();
    double range;
    if (mode == 0) {
        center = m;
        // bins of hi - x in float32: monotone in x (all that matters), -inf lands in the last
        range = std::min((double)hi - (double)lo, RCAP);
        // a range near FLT_MIN would make the scale overflow to inf (0 * inf = NaN): cap it
        const float sc = range > 0 ? (float)std::min((NB - 1) / range, (double)std::numeric_limits<float>::max())
                                   : 1.0f;
        for (int64_t i = 0; i < V; ++i) {
            const float v = (hi - x[i]) * sc;
            bin[i] = v < (float)(NB - 1) ? (int32_t)v : NB - 1;  // NaN or beyond: the last bin
        }
    } else {
        for (int64_t i = 0; i < V; ++i) key[i] = w[i] * ((double)x[i] - m);
        // -inf entries: w = 0 and d = -inf give NaN; they carry no mass, so drop them from the sum
        for (int64_t i = 0; i < V; ++i) key[i] = w[i] > 0 ? key[i] : 0.0;
        center = m + sum8(key, V) / z;
        const double c = center;
        range = std::min(std::max(m - c, c - (double)lo), m - c + RCAP);
        const double sc = range > 0 ? (NB - 1) / range : 1.0;
        for (int64_t i = 0; i < V; ++i) {
            key[i] = std::fabs((double)x[i] - c);  // +inf for -inf entries: the last bin
            const double v = key[i] * sc;
            bin[i] = v < (double)(NB - 1) ? (int32_t)v : NB - 1;  // NaN or beyond: the last bin
        }
    }
    double* hm = s.hm.data();  // four interleaved histograms: shorter store-to-load chains
    double *h1 = hm + NB, *h2 = hm + 2 * NB, *h3 = hm + 3 * NB;
    int64_t i2 = 0;
    for (; i2 + 4 <= V; i2 += 4) {
        hm[bin[i2]] += w[i2];
        h1[bin[i2 + 1]] += w[i2 + 1];
        h2[bin[i2 + 2]] += w[i2 + 2];
        h3[bin[i2 + 3]] += w[i2 + 3];
    }
    for (; i2 < V; ++i2) hm[bin[i2]] += w[i2];
    for (int b2 = 0; b2 < NB; ++b2) hm[b2] += (h1[b2] + h2[b2]) + h3[b2];
    const double goal = target * z;
    double acc = 0.0;
    int b = 0;
    for (; b < NB; ++b) {
        // (with goal > 0 the first bin that reaches it holds mass, so it is not empty; with
        // goal <= 0 (top_p = 0) it is bin 0, which holds the maximum)
        if (acc + hm[b] >= goal) break;
        acc += hm[b];
    }
    if (b == NB) {  // the target is past the whole row (top_p = 1, or rounding): keep every token
        int64_t fin = 0;
        double kmax = 0;
        for (int64_t i = 0; i < V; ++i) {
            fin += x[i] > -FINF;
            if (mode == 1 && x[i] > -FINF) kmax = std::max(kmax, key[i]);
        }
        kstar = mode == 0 ? (double)lo : kmax;
        q = ALL;
        n = fin;
        return 0;
    }
    int64_t before = 0;  // entries in the bins before b (all finite: -inf sits in the last bin)
    for (int64_t i = 0; i < V; ++i) before += bin[i] < b;
    s.band.clear();
    constexpr int L = 16;
    for (int64_t i0 = 0; i0 < V; i0 += L) {  // test 16 at a time (vectorised), then look closer
        const int64_t e = std::min(V, i0 + L);
        int hit = 0;
        for (int64_t i = i0; i < e; ++i) hit |= bin[i] == b;
        if (!hit) continue;
        for (int64_t i = i0; i < e; ++i)
            if (bin[i] == b && x[i] > -FINF) s.band.emplace_back(mode == 0 ? -(double)x[i] : key[i], i);
    }
    if (s.band.empty()) return 1;  // cannot happen; the reference code decides if it does
    std::sort(s.band.begin(), s.band.end());  // key ascending, then token id
    size_t j = 0;
    for (; j < s.band.size(); ++j) {
        acc += w[s.band[j].second];
        if (acc >= goal) break;
    }
    if (j == s.band.size()) j = s.band.size() - 1;  // short by rounding only: the whole bin
    const double kj = s.band[j].first;
    int64_t ties = 1;
    while (j >= (size_t)ties && s.band[j - ties].first == kj) ++ties;
    kstar = mode == 0 ? -kj : kj;
    const bool more = j + 1 < s.band.size() && s.band[j + 1].first == kj;  // ties left out
    q = more ? ties : ALL;
    n = before + (int64_t)j + 1;
    return 0;
}

// Copy the entries >= t of a row (values and ids, in order) to vals/ids; returns how many. The
// caller has room for all of them. AVX-512 compresses 16 at a time; elsewhere a branch-free loop.
int64_t select_ge(const float* x, int64_t V, float t, float* vals, int64_t* ids) {
    int64_t k = 0, i = 0;
#ifdef __AVX512F__
    const __m512 tv = _mm512_set1_ps(t);
    const __m512i step = _mm512_set1_epi64(8);
    __m512i lo = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    for (; i + 16 <= V; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        const __mmask16 m = _mm512_cmp_ps_mask(v, tv, _CMP_GE_OQ);
        const __m512i hi = _mm512_add_epi64(lo, step);
        if (m) {
            _mm512_mask_compressstoreu_ps(vals + k, m, v);
            const __mmask8 m0 = (__mmask8)(m & 0xFF), m1 = (__mmask8)(m >> 8);
            _mm512_mask_compressstoreu_epi64(ids + k, m0, lo);
            const int64_t k0 = __builtin_popcount(m0);
            _mm512_mask_compressstoreu_epi64(ids + k + k0, m1, hi);
            k += k0 + __builtin_popcount(m1);
        }
        lo = _mm512_add_epi64(hi, step);
    }
#endif
    for (; i < V; ++i)
        if (x[i] >= t) { vals[k] = x[i]; ids[k++] = i; }
    return k;
}

inline bool above(const float* x, int64_t i, int mode, double kstar, double c, bool& tie) {
    if (mode == 0) {
        tie = (double)x[i] == kstar;
        return (double)x[i] > kstar;
    }
    const double k = std::fabs((double)x[i] - c);
    tie = k == kstar;
    return k < kstar;
}

}  // namespace

extern "C" {

// Cut every row of x [B, V] (row-major) at the mass p[r] (a float32 knob): the target is the
// midpoint between p and the float32 below it, i.e. "reaches p within float32 rounding"; p >= 1
// keeps everything. Outputs kstar, center, q, n per row. Returns the largest n, or -1 if a row
// holds NaN/+inf or nothing finite (nothing is cut then: the caller runs the reference).
int64_t temperance_cut(const float* x, int64_t B, int64_t V, int mode, const float* p,
                       double* kstar, double* center, int64_t* q, int64_t* n) {
    thread_local Scratch s;  // reused across calls: no page faults on fresh scratch
    int64_t nmax = 1;
    for (int64_t r = 0; r < B; ++r) {
        const double target = p[r] >= 1 ? 2.0 : ((double)p[r] + (double)std::nextafter(p[r], -1.0f)) / 2;
        if (cut_row(x + r * V, V, mode, target, s, kstar[r], center[r], q[r], n[r])) return -1;
        nmax = std::max(nmax, n[r]);
    }
    return nmax;
}

// Dense output: out = x where kept, -inf elsewhere.
void temperance_cut_dense(const float* x, int64_t B, int64_t V, int mode, const double* kstar,
                          const double* center, const int64_t* q, float* out) {
    for (int64_t r = 0; r < B; ++r) {
        const float* xr = x + r * V;
        float* o = out + r * V;
        const double ks = kstar[r], c = center[r];
        if (mode == 0)  // keep x >= t (vectorises), then drop the ties past the first q
            for (int64_t i = 0; i < V; ++i) o[i] = (double)xr[i] >= ks ? xr[i] : -FINF;
        else
            for (int64_t i = 0; i < V; ++i) o[i] = std::fabs((double)xr[i] - c) <= ks ? xr[i] : -FINF;
        if (q[r] >= ALL) continue;
        int64_t ties = 0;
        for (int64_t i = 0; i < V; ++i) {
            bool tie;
            above(xr, i, mode, ks, c, tie);
            if (tie && ties++ >= q[r]) o[i] = -FINF;
        }
    }
}

// Compacted output: the kept entries of each row, in token-id order, into vals/ids [B, K]
// (padding: -inf and V).
void temperance_cut_compact(const float* x, int64_t B, int64_t V, int mode, const double* kstar,
                            const double* center, const int64_t* q, int64_t K, float* vals,
                            int64_t* ids) {
    for (int64_t r = 0; r < B; ++r) {
        const float* xr = x + r * V;
        float* vr = vals + r * K;
        int64_t* ir = ids + r * K;
        const double ks = kstar[r], c = center[r];
        int64_t ties = 0, k = 0;
        if (q[r] >= ALL && mode == 0) {  // keep x >= t: exactly the row's n entries (n <= K)
            k = select_ge(xr, V, (float)ks, vr, ir);  // (ks is a logit value: exact as a float)
        } else {
            for (int64_t i = 0; i < V && k < K; ++i) {
                bool tie;
                if (above(xr, i, mode, ks, c, tie) || (tie && ties++ < q[r])) {
                    vr[k] = xr[i];
                    ir[k++] = i;
                }
            }
        }
        for (; k < K; ++k) { vr[k] = -FINF; ir[k] = V; }
    }
}

}  // extern "C"

namespace {

using Entry = std::pair<float, int64_t>;

// "a ranks before b": larger value, then lower id. As std::push_heap's comparator it keeps the
// worst entry at the front.
inline bool before(const Entry& a, const Entry& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// Push (v, i) into a heap of the k best so far (std heap with `before`: worst at the front).
inline void offer(std::vector<Entry>& heap, int64_t k, const Entry& c) {
    if (k <= 0) return;
    if ((int64_t)heap.size() < k) {
        heap.push_back(c);
        std::push_heap(heap.begin(), heap.end(), before);
    } else if (before(c, heap.front())) {
        std::pop_heap(heap.begin(), heap.end(), before);
        heap.back() = c;
        std::push_heap(heap.begin(), heap.end(), before);
    }
}

inline int has_nan(const float* x, int64_t V) {
    int nan = 0;
    for (int64_t i = 0; i < V; ++i) nan |= x[i] != x[i];  // (a streaming pass: fast)
    return nan;
}

// The maximum of a row (+inf counts); returns 1 if the row holds NaN. (`omp simd` lets the max
// reduction vectorise: max is exact in any order; -fopenmp-simd needs no OpenMP runtime.)
int max_row(const float* x, int64_t V, float* hi) {
    int nan = 0;
    float h = -FINF;
#pragma omp simd reduction(max : h) reduction(| : nan)
    for (int64_t i = 0; i < V; ++i) {
        h = x[i] > h ? x[i] : h;
        nan |= x[i] != x[i];
    }
    if (hi != nullptr) *hi = h;
    return nan;
}

// The k best entries of a row (above -inf) into `heap`, ties to the lower id, skipping the
// positions skip[0..T) (ascending; may run past V). `hi` (if given) gets the row's maximum;
// returns 1 if the row holds NaN. After one pass for the maximum, blocks of 16 are read with one vectorised test
// of whether any entry can beat the heap's worst (most cannot).
int topk_scan(const float* xr, int64_t V, int64_t k, std::vector<Entry>& heap, const int64_t* skip,
              int64_t T, float* hi) {
    if (hi != nullptr ? max_row(xr, V, hi) : has_nan(xr, V)) return 1;
    heap.clear();
    float floor = -FINF;  // entries must beat this: the heap's worst value once it is full
    int64_t p = 0;        // the next skipped position at or after the current one
    constexpr int L = 16;
    for (int64_t i0 = 0; i0 < V; i0 += L) {
        const int64_t e = std::min(V, i0 + L);
        int hit = 0;
        for (int64_t i = i0; i < e; ++i) hit |= xr[i] > floor;
        if (!hit) continue;
        for (int64_t i = i0; i < e; ++i) {
            if (!(xr[i] > floor)) continue;  // equal to the worst kept: a higher id, not better
            while (p < T && skip[p] < i) ++p;
            if (p < T && skip[p] == i) continue;
            offer(heap, k, {xr[i], i});
            if ((int64_t)heap.size() == k) floor = heap.front().first;
        }
    }
    return 0;
}

int topk_row(const float* xr, int64_t V, int64_t k, std::vector<Entry>& heap) {
    if (topk_scan(xr, V, k, heap, nullptr, 0, nullptr)) return 1;
    std::sort(heap.begin(), heap.end(), before);
    return 0;
}

}  // namespace

extern "C" {

// The k largest entries of every row, ties to the lower id: vals/ids [B, k], sorted by value
// descending then id ascending (padding -inf / V past a row's entries above -inf). Returns 1 if a
// row holds NaN.
int temperance_topk(const float* x, int64_t B, int64_t V, int64_t k, float* vals, int64_t* ids) {
    thread_local std::vector<Entry> heap;
    for (int64_t r = 0; r < B; ++r) {
        if (topk_row(x + r * V, V, k, heap)) return 1;
        float* vr = vals + r * k;
        int64_t* ir = ids + r * k;
        int64_t j = 0;
        for (; j < (int64_t)heap.size(); ++j) { vr[j] = heap[j].first; ir[j] = heap[j].second; }
        for (; j < k; ++j) { vr[j] = -FINF; ir[j] = V; }
    }
    return 0;
}

// Top-k written densely: out = x on each row's k[r] best entries, -inf elsewhere (k[r] <= 0 or
// >= V: the row as it is). Returns 1 if a row holds NaN (out is then incomplete).
int temperance_topk_dense(const float* x, int64_t B, int64_t V, const int64_t* k, float* out) {
    thread_local std::vector<Entry> heap;
    for (int64_t r = 0; r < B; ++r) {
        const float* xr = x + r * V;
        float* o = out + r * V;
        if (k[r] <= 0 || k[r] >= V) {
            std::memcpy(o, xr, V * sizeof(float));
            continue;
        }
        if (topk_row(xr, V, k[r], heap)) return 1;
        for (int64_t i = 0; i < V; ++i) o[i] = -FINF;
        for (const Entry& e : heap) o[e.second] = e.first;
    }
    return 0;
}

// Top-k of rows where a few tokens have new values (penalties / logit bias applied to just those):
// row r's tokens ov_ids[r, :T] (ascending, padding >= V) take the values ov_vals[r, :T] instead
// of x. Output: each row's k[r] best (k[r] <= kmax) in token-id order, vals/ids [B, kmax]
// (padding -inf / V), and rawmax[r] = max of the row of x itself. Returns 1 if a row holds NaN.
int temperance_topk_override(const float* x, int64_t B, int64_t V, const int64_t* k, int64_t kmax,
                             int64_t T, const int64_t* ov_ids, const float* ov_vals, float* vals,
                             int64_t* ids, float* rawmax) {
    thread_local std::vector<Entry> heap;
    for (int64_t r = 0; r < B; ++r) {
        const int64_t* oi = ov_ids + r * T;
        const float* ovr = ov_vals + r * T;
        if (topk_scan(x + r * V, V, k[r], heap, oi, T, rawmax + r)) return 1;
        for (int64_t j = 0; j < T && oi[j] < V; ++j)  // the edited tokens, with their new values
            if (ovr[j] > -FINF) offer(heap, k[r], {ovr[j], oi[j]});
        std::sort(heap.begin(), heap.end(), [](const Entry& a, const Entry& b) { return a.second < b.second; });
        float* vr = vals + r * kmax;
        int64_t* ir = ids + r * kmax;
        int64_t j = 0;
        for (; j < (int64_t)heap.size(); ++j) { vr[j] = heap[j].first; ir[j] = heap[j].second; }
        for (; j < kmax; ++j) { vr[j] = -FINF; ir[j] = V; }
    }
    return 0;
}

// Repetition/frequency/presence penalties followed by top-k, on rows x [B, V] with token
// histories hist [B, L] (right-aligned, -1 = none) and penalty windows last_n [B] (the last n
// tokens; -1 = all, 0 = none): the rule of ops.penalties (each distinct token
// in the window: logit / theta if positive, * theta otherwise, once; then - count * freq - pres;
// non-finite logits untouched; the result clamped to float32's range) applied to just those
// tokens, float32 operation for operation as torch does them, then each row's k[r] best (ties to
// the lower id) in token-id order into vals/ids [B, kmax]; rawmax = each raw row's maximum.
// Returns 1 if a row holds NaN, 2 if a row's maximum is +inf or -inf (the caller says which).
int temperance_penalized_topk(const float* x, int64_t B, int64_t V, int64_t L, const int64_t* hist,
                              const int64_t* last_n, const float* theta, const float* freq,
                              const float* pres, const int64_t* k, int64_t kmax, float* vals,
                              int64_t* ids, float* rawmax) {
    thread_local std::vector<Entry> heap;
    thread_local std::vector<int64_t> win, uid;
    thread_local std::vector<float> uval;
    const float FMAX = std::numeric_limits<float>::max();
    for (int64_t r = 0; r < B; ++r) {
        const float* xr = x + r * V;
        win.clear();
        const int64_t n = last_n[r] < 0 ? L : std::min(last_n[r], L);
        for (int64_t j = L - n; j < L; ++j)
            if (hist[r * L + j] >= 0) win.push_back(hist[r * L + j]);
        std::sort(win.begin(), win.end());
        uid.clear();
        uval.clear();
        for (size_t j = 0; j < win.size();) {
            size_t e = j;
            while (e < win.size() && win[e] == win[j]) ++e;
            const float old = xr[win[j]];
            float v = old;
            if (std::isfinite(old)) {
                v = old > 0 ? old / theta[r] : old * theta[r];
                const float cf = (float)(e - j) * freq[r];
                v = v - cf;
                v = v - pres[r];
                v = std::min(std::max(v, -FMAX), FMAX);
            }
            uid.push_back(win[j]);
            uval.push_back(v);
            j = e;
        }
        if (topk_scan(xr, V, k[r], heap, uid.data(), (int64_t)uid.size(), rawmax + r)) return 1;
        for (size_t j = 0; j < uid.size(); ++j)
            if (uval[j] > -FINF) offer(heap, k[r], {uval[j], uid[j]});
        std::sort(heap.begin(), heap.end(), [](const Entry& a, const Entry& b) { return a.second < b.second; });
        float* vr = vals + r * kmax;
        int64_t* ir = ids + r * kmax;
        int64_t j = 0;
        for (; j < (int64_t)heap.size(); ++j) { vr[j] = heap[j].first; ir[j] = heap[j].second; }
        for (; j < kmax; ++j) { vr[j] = -FINF; ir[j] = V; }
    }
    for (int64_t r = 0; r < B; ++r)
        if (!std::isfinite(rawmax[r])) return 2;
    return 0;
}

// Min-p written densely: per row t = max + lmp[r] (float32, as torch adds them; lmp = log(min_p),
// -inf for min_p = 0), out = x where x >= t, -inf elsewhere (out may be x). 1 if a row holds NaN.
int temperance_min_p_dense(const float* x, int64_t B, int64_t V, const float* lmp, float* out) {
    for (int64_t r = 0; r < B; ++r) {
        const float* xr = x + r * V;
        float* o = out + r * V;
        float hi;
        if (max_row(xr, V, &hi)) return 1;
        const float t = hi + lmp[r];
        for (int64_t i = 0; i < V; ++i) o[i] = xr[i] >= t ? xr[i] : -FINF;
    }
    return 0;
}

// Per row, how many entries are >= t[r] (NaN never is); returns the largest count (at least 1).
int64_t temperance_count_ge(const float* x, int64_t B, int64_t V, const double* t, int64_t* n) {
    int64_t nmax = 1;
    for (int64_t r = 0; r < B; ++r) {
        const float* xr = x + r * V;
        const float tr = (float)t[r];  // t is a float32 value (a logit), so this is exact
        int64_t c = 0;
        for (int64_t i = 0; i < V; ++i) c += xr[i] >= tr;
        n[r] = c;
        nmax = std::max(nmax, c);
    }
    return nmax;
}

// Mean and population variance of the finite entries of each row, in float64, two passes
// (top-nσ's moments; ops/top_n_sigma.py is the reference). The reductions vectorise (omp simd):
// a fixed order per build, not torch's, so the two agree to ~1e-15, not bit for bit.
void temperance_moments(const float* x, int64_t B, int64_t V, double* mean, double* var) {
    for (int64_t r = 0; r < B; ++r) {
        const float* xr = x + r * V;
        double sum = 0.0, cnt = 0.0;
#pragma omp simd reduction(+ : sum, cnt)
        for (int64_t i = 0; i < V; ++i) {
            const float v = xr[i];
            const bool f = std::fabs(v) < FINF;  // finite (NaN fails)
            sum += f ? (double)v : 0.0;
            cnt += f ? 1.0 : 0.0;
        }
        const double m = sum / cnt;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < V; ++i) {
            const float v = xr[i];
            const double d = (double)v - m;
            ss += std::fabs(v) < FINF ? d * d : 0.0;
        }
        mean[r] = m;
        var[r] = ss / cnt;
    }
}

// Exact statistics of q = softmax(x) per row, for `temperance eval score`. x [B, K] float32 logits
// (-inf = removed, at least one finite per row); pos[r] the column of the true token, -1 if it is
// not a candidate. With d_i = x_i - max and w_i = exp(d_i) in float64, z = sum w:
//   out[r] = (q(y) = w_y / z, sum q^2 = sum w^2 / z^2, -sum q ln q = ln z - sum w d / z, #kept)
// where kept = x > -inf (a kept token whose w underflows to 0 is still kept). mask (if not null)
// gets the kept flags [B, K] as bytes. Returns 1 if a row holds NaN or +inf, or nothing finite.
int temperance_softmax_stats(const float* x, int64_t B, int64_t K, const int64_t* pos, double* out,
                             uint8_t* mask) {
    thread_local std::vector<double> w, wd;
    if ((int64_t)w.size() < K) { w.resize(K); wd.resize(K); }
    for (int64_t r = 0; r < B; ++r) {
        const float* xr = x + r * K;
        float hi;
        if (max_row(xr, K, &hi) || hi == FINF || hi == -FINF) return 1;
        const double m = hi;
        int64_t kept = 0;
        for (int64_t i = 0; i < K; ++i) {
            const double d = (double)xr[i] - m;
            const double e = exp_le0(d);
            w[i] = e;
            wd[i] = e > 0.0 ? e * d : 0.0;
            kept += xr[i] > -FINF;
        }
        const double z = sum8(w.data(), K), sd = sum8(wd.data(), K);
        for (int64_t i = 0; i < K; ++i) w[i] *= w[i];
        const double s2 = sum8(w.data(), K);
        const double wy = pos[r] >= 0 ? exp_le0((double)xr[pos[r]] - m) : 0.0;
        double* o = out + 4 * r;
        o[0] = wy / z;
        o[1] = s2 / (z * z);
        o[2] = std::log(z) - sd / z;
        o[3] = (double)kept;
        if (mask != nullptr)
            for (int64_t i = 0; i < K; ++i) mask[r * K + i] = xr[i] > -FINF;
    }
    return 0;
}

// Counter-based uniforms (temperance.noise.uniform, bit for bit): SplitMix64's finaliser of
// (seed, step, token id), 53 bits, in (0, 1). index [B, K]; out [B, K] float64.
void temperance_uniform(const int64_t* seed, const int64_t* step, const int64_t* index, int64_t B,
                        int64_t K, int64_t salt, double* out) {
    auto mix = [](uint64_t z) {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    };
    const uint64_t g = 0x9E3779B97F4A7C15ull;
    for (int64_t r = 0; r < B; ++r) {
        uint64_t h = mix((uint64_t)seed[r] + g * (uint64_t)(salt + 1));
        h = mix(h + (uint64_t)step[r] * g);
        const int64_t* ir = index + r * K;
        double* o = out + r * K;
        for (int64_t i = 0; i < K; ++i)
            o[i] = ((double)(mix((uint64_t)ir[i] + h) >> 11) + 0.5) * 0x1p-53;
    }
}

}  // extern "C"
