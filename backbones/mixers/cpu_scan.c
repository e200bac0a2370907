/* Mamba v1's selective scan on a CPU, forward and backward, fused (see cpu_scan.py).
 *
 * The same recurrence as ssm_ref._SelectiveScanLoop, per batch element b, channel d and state k:
 *     h_t = exp(delta_t A_dk) h_(t-1) + delta_t u_t B_tk,      y_t = sum_k C_tk h_t,
 * and its adjoint g_t = C_t gy_t + exp(delta_(t+1) A) g_(t+1). PyTorch runs that as ~5 (forward) and ~12
 * (backward) separate passes over a (b, n, d) state per token. Here the loops run over one block of VL
 * channels at a time, state by state (k outer, tokens inner), so a state's NV vectors, its adjoint and its dA
 * sums stay in registers along the whole sequence; the sums over states (y, and du, ddelta in the backward)
 * go to per-block buffers of L x VL values that stay in L1. Nothing is saved between forward and backward:
 * the backward recomputes one state's h_t and decays (2 x L x VL values) just before its reverse pass, so
 * memory is O(inputs) instead of O(L b d n).
 *
 * Compiled twice by cpu_scan.py: -DREAL=float (exp2 by a polynomial on whole vectors) and -DREAL=double
 * (libm's exp2; the float64 tests). Uses GCC / Clang vector extensions (SSE / AVX / NEON as the machine has).
 * Layouts (all contiguous): u, delta, y, gy, du, ddelta: (b, L, d); A2 = A^T * log2(e): (n, d); Bm, Cm, dB,
 * dC: (b, L, n); dA: (b, n, d) (one partial sum per batch element, summed by the caller). Each call handles
 * batch elements [b0, b1), so threads split the batch and never write the same memory. Returns 0, or 1 when
 * a scratch buffer cannot be allocated.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
#ifndef VL
#define VL 32 /* channels per block (set by cpu_scan.py) */
#endif
#define VB 32 /* bytes per vector: AVX2's width; the compiler splits it where the machine's is narrower */
typedef REAL vec __attribute__((vector_size(VB)));
#define LANES ((int)(VB / sizeof(REAL)))
#define NV (VL / LANES) /* vectors per channel block */
#define LN2 0.6931471805599453

#if defined(USE_LIBM_EXP2)
static inline vec exp2v(vec x) {
    vec r;
    for (int i = 0; i < LANES; i++) r[i] = exp2(x[i]);
    return r;
}
#else
typedef int32_t ivec __attribute__((vector_size(VB)));
/* 2^x for x <= 0 (decays): 2^round(x) * p(f), f in [-0.5, 0.5], Cephes' exp2f polynomial (~2 ulp); below
 * -126 it returns 2^-126 * p(f) ~ 1e-38 instead of 0 (a state that small times anything is 0 in float32
 * arithmetic that follows). Rounding by the 1.5 * 2^23 trick: only add / mul / convert on whole vectors. */
static inline vec exp2v(vec x) {
    const vec lo = (vec){0} - 126.0f;
    ivec m = x < lo;
    x = (vec)(((ivec)x & ~m) | ((ivec)lo & m));
    vec r = (x + 12582912.0f) - 12582912.0f;
    vec f = x - r;
    vec p = f * 1.535336188319500e-4f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    ivec e = (__builtin_convertvector(r, ivec) + 127) << 23;
    return p * (vec)e;
}
#endif

static void *alloc(size_t bytes) { return aligned_alloc(VB, (bytes + VB - 1) / VB * VB); }

/* VL channels of row[0 .. w) into NV vectors, zeros past w */
static inline void load(vec *dst, const REAL *row, int w) {
    REAL tmp[VL];
    for (int j = 0; j < VL; j++) tmp[j] = j < w ? row[j] : (REAL)0;
    memcpy(dst, tmp, sizeof tmp);
}

static inline void store(REAL *row, const vec *src, int w) {
    REAL tmp[VL];
    memcpy(tmp, src, sizeof tmp);
    for (int j = 0; j < w; j++) row[j] = tmp[j];
}

static inline REAL hsum(vec v) {
    REAL s = 0;
    for (int i = 0; i < LANES; i++) s += v[i];
    return s;
}

/* one channel block's delta (dt) and delta * u (du), L x NV vectors each */
static void load_block(vec *dt, vec *du, const REAL *u, const REAL *dl, int64_t bi, int64_t d0, int w,
                       int64_t L, int64_t d) {
    for (int64_t t = 0; t < L; t++) {
        const int64_t row = (bi * L + t) * d + d0;
        load(dt + t * NV, dl + row, w);
        load(du + t * NV, u + row, w);
        for (int q = 0; q < NV; q++) du[t * NV + q] *= dt[t * NV + q];
    }
}

int scan_fwd(const REAL *restrict u, const REAL *restrict dl, const REAL *restrict A2, const REAL *restrict Bm,
             const REAL *restrict Cm, REAL *restrict y,
             int64_t b0, int64_t b1, int64_t L, int64_t d, int64_t n) {
    const size_t blk = sizeof(vec) * NV * (size_t)L;
    vec *dt = alloc(blk), *du = alloc(blk), *yb = alloc(blk);
    if (!dt || !du || !yb) { free(dt); free(du); free(yb); return 1; }
    for (int64_t bi = b0; bi < b1; bi++) {
        const REAL *Bb = Bm + bi * L * n, *Cb = Cm + bi * L * n;
        for (int64_t d0 = 0; d0 < d; d0 += VL) {
            const int w = (int)(d - d0 < VL ? d - d0 : VL);
            load_block(dt, du, u, dl, bi, d0, w, L, d);
            memset(yb, 0, blk);
            for (int64_t k = 0; k < n; k++) {
                vec ak[NV], h[NV];
                load(ak, A2 + k * d + d0, w);
                for (int q = 0; q < NV; q++) h[q] = (vec){0};
                for (int64_t t = 0; t < L; t++) {
                    const REAL bk = Bb[t * n + k], ck = Cb[t * n + k];
                    for (int q = 0; q < NV; q++) {
                        h[q] = exp2v(dt[t * NV + q] * ak[q]) * h[q] + bk * du[t * NV + q];
                        yb[t * NV + q] += ck * h[q];
                    }
                }
            }
            for (int64_t t = 0; t < L; t++) store(y + (bi * L + t) * d + d0, yb + t * NV, w);
        }
    }
    free(dt); free(du); free(yb);
    return 0;
}

int scan_bwd(const REAL *restrict u, const REAL *restrict dl, const REAL *restrict A2, const REAL *restrict Bm,
             const REAL *restrict Cm, const REAL *restrict gy, REAL *restrict gu, REAL *restrict gdl,
             REAL *restrict dA, REAL *restrict dB, REAL *restrict dC,
             int64_t b0, int64_t b1, int64_t L, int64_t d, int64_t n) {
    const size_t blk = sizeof(vec) * NV * (size_t)L, lanes = sizeof(vec) * (size_t)L * n;
    vec *dt = alloc(blk), *du = alloc(blk), *gyb = alloc(blk), *ddu = alloc(blk), *dAd = alloc(blk);
    vec *hs = alloc(blk), *as = alloc(blk); /* one state's h_t and decays, recomputed */
    vec *sC = alloc(lanes), *sB = alloc(lanes); /* dC, dB: LANES partial sums per (t, k) over the blocks */
    if (!dt || !du || !gyb || !ddu || !dAd || !hs || !as || !sC || !sB) {
        free(dt); free(du); free(gyb); free(ddu); free(dAd); free(hs); free(as); free(sC); free(sB);
        return 1;
    }
    const vec zero[NV] = {{0}};
    for (int64_t bi = b0; bi < b1; bi++) {
        const REAL *Bb = Bm + bi * L * n, *Cb = Cm + bi * L * n;
        memset(sC, 0, lanes);
        memset(sB, 0, lanes);
        for (int64_t d0 = 0; d0 < d; d0 += VL) {
            const int w = (int)(d - d0 < VL ? d - d0 : VL);
            load_block(dt, du, u, dl, bi, d0, w, L, d);
            for (int64_t t = 0; t < L; t++) load(gyb + t * NV, gy + (bi * L + t) * d + d0, w);
            memset(ddu, 0, blk);
            memset(dAd, 0, blk);
            for (int64_t k = 0; k < n; k++) {
                vec ak[NV], h[NV], g[NV], an[NV], dAk[NV];
                load(ak, A2 + k * d + d0, w);
                for (int q = 0; q < NV; q++) h[q] = g[q] = an[q] = dAk[q] = (vec){0};
                for (int64_t t = 0; t < L; t++) { /* forward again, keeping this state's h_t and decays */
                    const REAL bk = Bb[t * n + k];
                    for (int q = 0; q < NV; q++) {
                        const vec a = exp2v(dt[t * NV + q] * ak[q]);
                        h[q] = a * h[q] + bk * du[t * NV + q];
                        as[t * NV + q] = a;
                        hs[t * NV + q] = h[q];
                    }
                }
                for (int64_t t = L - 1; t >= 0; t--) { /* the reverse recurrence; an = exp(delta_(t+1) A), 0 past the end */
                    const REAL bk = Bb[t * n + k], ck = Cb[t * n + k];
                    const vec *ht = hs + t * NV, *hp = t ? ht - NV : zero, *at = as + t * NV;
                    vec sc = {0}, sb = {0};
                    for (int q = 0; q < NV; q++) {
                        const vec gyq = gyb[t * NV + q];
                        g[q] = g[q] * an[q] + ck * gyq; /* g_t */
                        sc += gyq * ht[q];
                        sb += du[t * NV + q] * g[q];
                        ddu[t * NV + q] += bk * g[q];
                        /* grad of delta_t A: g_t exp(delta_t A) h_(t-1); the state before t = 0 is zero */
                        const vec p = g[q] * at[q] * hp[q];
                        dAk[q] += p * dt[t * NV + q];
                        dAd[t * NV + q] += p * ak[q];
                        an[q] = at[q];
                    }
                    sC[t * n + k] += sc;
                    sB[t * n + k] += sb;
                }
                REAL *dArow = dA + (bi * n + k) * d + d0, tmp[VL];
                memcpy(tmp, dAk, sizeof tmp);
                for (int j = 0; j < w; j++) dArow[j] += tmp[j];
            }
            for (int64_t t = 0; t < L; t++) {
                const int64_t row = (bi * L + t) * d + d0;
                vec o[NV], uq[NV];
                load(uq, u + row, w);
                for (int q = 0; q < NV; q++) o[q] = ddu[t * NV + q] * dt[t * NV + q];
                store(gu + row, o, w);
                for (int q = 0; q < NV; q++) o[q] = dAd[t * NV + q] * (REAL)LN2 + ddu[t * NV + q] * uq[q]; /* A2 carries log2(e) */
                store(gdl + row, o, w);
            }
        }
        for (int64_t i = 0; i < L * n; i++) { /* lanes -> dC, dB (padded lanes hold zeros) */
            dC[bi * L * n + i] += hsum(sC[i]);
            dB[bi * L * n + i] += hsum(sB[i]);
        }
    }
    free(dt); free(du); free(gyb); free(ddu); free(dAd); free(hs); free(as); free(sC); free(sB);
    return 0;
}
