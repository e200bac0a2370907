/* Mamba v1's selective scan on a CPU, forward and backward, fused (see cpu_scan.py).
 *
 * The same recurrence as ssm_ref._SelectiveScanLoop, per batch element b, channel d and state k:
 *     h_t = exp(delta_t A_dk) h_(t-1) + delta_t u_t B_tk,      y_t = sum_k C_tk h_t,
 * and its adjoint g_t = C_t gy_t + exp(delta_(t+1) A) g_(t+1). PyTorch runs that as ~5 (forward) and ~12
 * (backward) separate passes over a (b, n, d) state per token; here one loop keeps a block of VL channels' n
 * states in registers / L1 and touches each input once. Nothing is saved between forward and backward: the
 * backward recomputes the states of one channel block (L x n x VL values, in a scratch buffer) and then runs
 * the reverse recurrence, so memory is O(inputs) instead of O(L b d n).
 *
 * Compiled twice by cpu_scan.py: -DREAL=float (exp2 by a polynomial, vectorisable) and -DREAL=double
 * (libm's exp2; the float64 tests). Layouts (all contiguous): u, delta, y, gy, du, ddelta: (b, L, d);
 * A2 = A^T * log2(e): (n, d); Bm, Cm, dB, dC: (b, L, n); dA: (b, n, d) (one partial sum per batch element,
 * summed by the caller). Each call handles batch elements [b0, b1), so threads split the batch and never
 * write the same memory.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef REAL
#define REAL float
#endif
#ifndef VL
#define VL 32
#endif
/* VL: channels per block (32 floats: two AVX-512 or four AVX2 registers, built with -DVL) */
#define LN2 0.6931471805599453

#if defined(USE_LIBM_EXP2)
static inline REAL exp2_(REAL x) { return exp2(x); }
#else
/* 2^x for x <= 0 (decays): 2^round(x) * p(f), f in [-0.5, 0.5], Cephes' exp2f polynomial (~2 ulp); below
 * -126 it returns 2^-126 * p(f) ~ 1e-38 instead of 0 (a state that small times anything is 0 in float32
 * arithmetic that follows). Only mul/add/convert: the compiler vectorises it. */
static inline float exp2_(float x) {
    x = x < -126.0f ? -126.0f : x;
    float r = rintf(x);
    float f = x - r;
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    union { int32_t i; float v; } s;
    s.i = ((int32_t)r + 127) << 23;
    return p * s.v;
}
#endif

/* load VL channels from row[d0 ..], zeros past the end (w valid lanes) */
static inline void load(REAL *dst, const REAL *row, int w) {
    for (int j = 0; j < VL; j++) dst[j] = j < w ? row[j] : (REAL)0;
}

static inline void block_A(REAL *Ab, const REAL *A2, int64_t d0, int w, int64_t n, int64_t d) {
    for (int64_t k = 0; k < n; k++) load(Ab + k * VL, A2 + k * d + d0, w);
}

int scan_fwd(const REAL *restrict u, const REAL *restrict dl, const REAL *restrict A2, const REAL *restrict Bm,
             const REAL *restrict Cm, REAL *restrict y,
             int64_t b0, int64_t b1, int64_t L, int64_t d, int64_t n) {
    REAL *restrict Ab = malloc(sizeof(REAL) * n * VL), *restrict h = malloc(sizeof(REAL) * n * VL);
    REAL *restrict a = malloc(sizeof(REAL) * n * VL);
    if (!Ab || !h || !a) { free(Ab); free(h); free(a); return 1; }
    for (int64_t bi = b0; bi < b1; bi++) {
        for (int64_t d0 = 0; d0 < d; d0 += VL) {
            int w = (int)(d - d0 < VL ? d - d0 : VL);
            block_A(Ab, A2, d0, w, n, d);
            memset(h, 0, sizeof(REAL) * n * VL);
            for (int64_t t = 0; t < L; t++) {
                const int64_t row = (bi * L + t) * d + d0;
                const REAL *Bt = Bm + (bi * L + t) * n, *Ct = Cm + (bi * L + t) * n;
                REAL dt[VL], du[VL], yv[VL];
                load(dt, dl + row, w);
                load(du, u + row, w);
                for (int j = 0; j < VL; j++) { du[j] *= dt[j]; yv[j] = 0; }
                for (int64_t k = 0; k < n; k++) /* the decays first: n independent exps, no dependency chain */
                    for (int j = 0; j < VL; j++) a[k * VL + j] = exp2_(dt[j] * Ab[k * VL + j]);
                for (int64_t k = 0; k < n; k++) {
                    REAL *hk = h + k * VL;
                    const REAL *ak = a + k * VL;
                    const REAL bk = Bt[k], ck = Ct[k];
                    for (int j = 0; j < VL; j++) {
                        hk[j] = ak[j] * hk[j] + bk * du[j];
                        yv[j] += ck * hk[j];
                    }
                }
                for (int j = 0; j < w; j++) y[row + j] = yv[j];
            }
        }
    }
    free(Ab); free(h); free(a);
    return 0;
}

int scan_bwd(const REAL *restrict u, const REAL *restrict dl, const REAL *restrict A2, const REAL *restrict Bm,
             const REAL *restrict Cm, const REAL *restrict gy, REAL *restrict gu, REAL *restrict gdl,
             REAL *restrict dA, REAL *restrict dB, REAL *restrict dC,
             int64_t b0, int64_t b1, int64_t L, int64_t d, int64_t n) {
    REAL *restrict Ab = malloc(sizeof(REAL) * n * VL), *restrict g = malloc(sizeof(REAL) * n * VL);
    REAL *restrict an = malloc(sizeof(REAL) * n * VL), *restrict dAb = malloc(sizeof(REAL) * n * VL);
    const size_t big = sizeof(REAL) * (size_t)L * n * VL;
    REAL *restrict hs = malloc(big), *restrict as = malloc(big); /* the block's states h_t and decays, recomputed */
    REAL *restrict sC = malloc(big), *restrict sB = malloc(big); /* dC, dB summed lane-wise over channel blocks */
    if (!Ab || !g || !an || !dAb || !hs || !as || !sC || !sB) {
        free(Ab); free(g); free(an); free(dAb); free(hs); free(as); free(sC); free(sB);
        return 1;
    }
    for (int64_t bi = b0; bi < b1; bi++) {
        memset(sC, 0, big);
        memset(sB, 0, big);
        for (int64_t d0 = 0; d0 < d; d0 += VL) {
            int w = (int)(d - d0 < VL ? d - d0 : VL);
            block_A(Ab, A2, d0, w, n, d);
            /* forward again, keeping the states */
            for (int64_t t = 0; t < L; t++) {
                const int64_t row = (bi * L + t) * d + d0;
                const REAL *Bt = Bm + (bi * L + t) * n;
                REAL dt[VL], du[VL];
                load(dt, dl + row, w);
                load(du, u + row, w);
                for (int j = 0; j < VL; j++) du[j] *= dt[j];
                REAL *ht = hs + t * n * VL, *hp = ht - n * VL, *at = as + t * n * VL;
                for (int64_t k = 0; k < n * VL; k++) at[k] = exp2_(dt[k % VL] * Ab[k]);
                for (int64_t k = 0; k < n; k++) {
                    const REAL bk = Bt[k];
                    for (int j = 0; j < VL; j++) {
                        REAL prev = t ? hp[k * VL + j] : (REAL)0;
                        ht[k * VL + j] = at[k * VL + j] * prev + bk * du[j];
                    }
                }
            }
            /* the reverse recurrence */
            memset(g, 0, sizeof(REAL) * n * VL);
            memset(an, 0, sizeof(REAL) * n * VL); /* exp(delta_(t+1) A); 0 past the end */
            memset(dAb, 0, sizeof(REAL) * n * VL);
            for (int64_t t = L - 1; t >= 0; t--) {
                const int64_t row = (bi * L + t) * d + d0;
                const int64_t rn = (bi * L + t) * n;
                const REAL *Bt = Bm + rn, *Ct = Cm + rn;
                REAL dt[VL], uu[VL], du[VL], gyv[VL], ddu[VL], dAd[VL];
                load(dt, dl + row, w);
                load(uu, u + row, w);
                load(gyv, gy + row, w);
                for (int j = 0; j < VL; j++) { du[j] = dt[j] * uu[j]; ddu[j] = 0; dAd[j] = 0; }
                const REAL *ht = hs + t * n * VL, *hp = t ? ht - n * VL : NULL, *at = as + t * n * VL;
                REAL *sCt = sC + t * n * VL, *sBt = sB + t * n * VL;
                for (int64_t k = 0; k < n; k++) {
                    REAL *gk = g + k * VL, *ank = an + k * VL, *dAk = dAb + k * VL;
                    REAL *sCk = sCt + k * VL, *sBk = sBt + k * VL;
                    const REAL *ak = Ab + k * VL, *hk = ht + k * VL, *atk = at + k * VL;
                    const REAL bk = Bt[k], ck = Ct[k];
                    for (int j = 0; j < VL; j++) {
                        gk[j] = gk[j] * ank[j] + ck * gyv[j]; /* g_t */
                        sCk[j] += gyv[j] * hk[j];
                        sBk[j] += du[j] * gk[j];
                        ddu[j] += bk * gk[j];
                        ank[j] = atk[j]; /* exp(delta_t A), for g_(t-1) */
                    }
                    if (hp) { /* grad of delta_t A: g_t exp(delta_t A) h_(t-1); the state before t = 0 is zero */
                        const REAL *hpk = hp + k * VL;
                        for (int j = 0; j < VL; j++) {
                            REAL p = gk[j] * atk[j] * hpk[j];
                            dAk[j] += p * dt[j];
                            dAd[j] += p * ak[j];
                        }
                    }
                }
                for (int j = 0; j < w; j++) {
                    gu[row + j] = ddu[j] * dt[j];
                    gdl[row + j] = dAd[j] * (REAL)LN2 + ddu[j] * uu[j]; /* A2 carries log2(e) */
                }
            }
            for (int64_t k = 0; k < n; k++)
                for (int j = 0; j < w; j++) dA[(bi * n + k) * d + d0 + j] += dAb[k * VL + j];
        }
        for (int64_t i = 0; i < L * n; i++) { /* lanes -> dC, dB (padded lanes hold zeros) */
            REAL c = 0, b_ = 0;
            for (int j = 0; j < VL; j++) { c += sC[i * VL + j]; b_ += sB[i * VL + j]; }
            dC[bi * L * n + i] += c;
            dB[bi * L * n + i] += b_;
        }
    }
    free(Ab); free(g); free(an); free(dAb); free(hs); free(as); free(sC); free(sB);
    return 0;
}
