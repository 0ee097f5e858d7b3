/* CPU kernels where torch's spend their time in overhead (sampling without autograd; dropout also in training):
 * built and loaded by tsdiffusion/kernels/__init__.py with ctypes.
 *
 * short_attention: softmax attention for many short sequences with narrow heads,
 *
 *     out[n, h, i, :] = sum_j softmax_j(scale * q[n, h, i, :] . k[n, h, j, :]) v[n, h, j, :]
 *
 * CSDI's transformers attend over thousands of sequences of 35-48 positions with heads 8 channels wide; there
 * torch's fused CPU kernel spends its time in per-block overhead, not in arithmetic. Here one (n, h) pair is one
 * unit of work: its keys are transposed into a (D x S) float32 block and its values copied into an (S x D) one,
 * both in L1; each query row is scored against all keys, and the scores, their maximum, the exponentials, their
 * sum and the output are kept in float32; the output is rounded once (bf16: to nearest even). Tensors come as a
 * base pointer and element strides (n, h, s, d); d must be contiguous (stride 1). Heads 8 wide have an AVX2 + FMA
 * path (a key or value row is one vector); other widths loops written for the compiler to vectorise.
 *
 * add_layer_norm: LayerNorm(x + r), the residual add and layer norm of a post-norm transformer layer in one pass.
 *
 * Scratch memory is allocated before each parallel region, so that every thread reaches its omp for.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16_t;

#define QB 4 /* queries at a time in the AVX-512 attention path (scratch: QB score rows) */

static inline float load_f32(const float *p) { return *p; }
static inline float load_bf16(const bf16_t *p) {
    uint32_t u = (uint32_t)*p << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline void store_f32(float *p, float f) { *p = f; }
static inline void store_bf16(bf16_t *p, float f) { /* round to nearest even; NaN stays NaN */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        *p = (bf16_t)((u >> 16) | 0x40u);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    *p = (bf16_t)(u >> 16);
}


#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HAVE_AVX2_D8 1

/* exp(x) for x <= 0 (scores minus their maximum): x = n ln2 + r, |r| <= ln2 / 2 (ln2 split in two for accuracy),
 * exp(r) by a degree-6 polynomial (relative error ~2e-7), 2^n by the exponent bits; below -87 the result is 0.
 * The AVX2 (8 lanes) and AVX-512 (16 lanes) versions share these constants. */
#define EXP_LO -87.0f
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO -2.12194440e-4f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

static inline __m256 exp_nonpos(__m256 x) {
    const __m256 lo = _mm256_set1_ps(EXP_LO);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 y = _mm256_set1_ps(EXP_P0);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P1));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P2));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P3));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P4));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P5));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline float hsum8(__m256 v) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load8_bf16(const bf16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline void store8_f32(float *p, __m256 v) { _mm256_storeu_ps(p, v); }
static inline void store8_bf16(bf16_t *p, __m256 v) { /* round to nearest even, NaN stays NaN, as store_bf16 */
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                           _mm256_set1_epi32(0x7f800000));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128((__m128i *)p, packed);
}

/* Head width 8 on AVX2 + FMA: a key or value row is one vector. Keys transposed into kt (8 x SP), values kept as
 * rows (S x 8); per query the scores of 8 keys at a time, max, exp, sum and the output row in registers. */
/* A head-8 unit's keys transposed into kt (8 x SP, zero-padded to SP columns) and its values as float32 rows
 * (S x 8), from rows at strides ks / vs; used by the AVX2 and AVX-512 units with their own SP. */
#define STAGE_KV8(LOAD8)                                                                                        \
    do {                                                                                                        \
        for (int64_t j = 0; j < S; j++) {                                                                       \
            float row[8];                                                                                       \
            _mm256_storeu_ps(row, LOAD8(kb + j * ks));                                                          \
            for (int c = 0; c < 8; c++) kt[c * SP + j] = row[c];                                                \
            _mm256_storeu_ps(vv + j * 8, LOAD8(vb + j * vs));                                                   \
        }                                                                                                       \
        for (int c = 0; c < 8; c++)                                                                             \
            for (int64_t j = S; j < SP; j++) kt[c * SP + j] = 0.0f;                                             \
    } while (0)

#define QA 2 /* queries at a time in the AVX2 path (16 vector registers) */
#define UNIT8(NAME, T, LOAD8, STORE8)                                                                           \
    static void NAME(const T *qb, const T *kb, const T *vb, T *ob, int64_t S, int64_t qs, int64_t ks,          \
                     int64_t vs, int64_t os, float scale, float *restrict kt, float *restrict vv,              \
                     float *restrict sc) {                                                                     \
        const int64_t SP = (S + 7) & ~(int64_t)7;                                                              \
        STAGE_KV8(LOAD8);                                                                                      \
        const __m256 ninf = _mm256_set1_ps(-1e30f); /* masked keys: exp gives 0 */                             \
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);                                        \
        const __m256 tail = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)(S - (SP - 8))), lane)); \
        for (int64_t i0 = 0; i0 < S; i0 += QA) {                                                               \
            float qv[QA][8];                                                                                   \
            for (int u = 0; u < QA; u++) {                                                                     \
                const int64_t i = i0 + u < S ? i0 + u : S - 1; /* past the end: repeat the last, not stored */  \
                _mm256_storeu_ps(qv[u], _mm256_mul_ps(LOAD8(qb + i * qs), _mm256_set1_ps(scale)));             \
            }                                                                                                  \
            __m256 mx[QA];                                                                                     \
            for (int u = 0; u < QA; u++) mx[u] = ninf;                                                         \
            for (int64_t j = 0; j < SP; j += 8) {                                                              \
                __m256 s[QA];                                                                                  \
                const __m256 k0 = _mm256_loadu_ps(kt + j);                                                     \
                for (int u = 0; u < QA; u++) s[u] = _mm256_mul_ps(_mm256_set1_ps(qv[u][0]), k0);               \
                for (int c = 1; c < 8; c++) {                                                                  \
                    const __m256 kc = _mm256_loadu_ps(kt + c * SP + j);                                        \
                    for (int u = 0; u < QA; u++) s[u] = _mm256_fmadd_ps(_mm256_set1_ps(qv[u][c]), kc, s[u]);   \
                }                                                                                              \
                for (int u = 0; u < QA; u++) {                                                                 \
                    if (j + 8 == SP) s[u] = _mm256_blendv_ps(ninf, s[u], tail);                                \
                    _mm256_storeu_ps(sc + u * SP + j, s[u]);                                                   \
                    mx[u] = _mm256_max_ps(mx[u], s[u]);                                                        \
                }                                                                                              \
            }                                                                                                  \
            __m256 m[QA], sum[QA], a0[QA], a1[QA];                                                             \
            for (int u = 0; u < QA; u++) {                                                                     \
                m[u] = _mm256_set1_ps(hmax8(mx[u]));                                                           \
                sum[u] = a0[u] = a1[u] = _mm256_setzero_ps();                                                  \
            }                                                                                                  \
            for (int64_t j = 0; j < SP; j += 8)                                                                \
                for (int u = 0; u < QA; u++) {                                                                 \
                    const __m256 e = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(sc + u * SP + j), m[u]));        \
                    _mm256_storeu_ps(sc + u * SP + j, e);                                                      \
                    sum[u] = _mm256_add_ps(sum[u], e);                                                         \
                }                                                                                              \
            for (int64_t j = 0; j < S; j++) {                                                                  \
                const __m256 vj = _mm256_loadu_ps(vv + j * 8);                                                 \
                for (int u = 0; u < QA; u++) {                                                                 \
                    if (j & 1)                                                                                 \
                        a1[u] = _mm256_fmadd_ps(_mm256_set1_ps(sc[u * SP + j]), vj, a1[u]);                    \
                    else                                                                                       \
                        a0[u] = _mm256_fmadd_ps(_mm256_set1_ps(sc[u * SP + j]), vj, a0[u]);                    \
                }                                                                                              \
            }                                                                                                  \
            for (int u = 0; u < QA && i0 + u < S; u++)                                                         \
                STORE8(ob + (i0 + u) * os,                                                                     \
                       _mm256_mul_ps(_mm256_add_ps(a0[u], a1[u]), _mm256_set1_ps(1.0f / hsum8(sum[u]))));      \
        }                                                                                                      \
    }

UNIT8(unit8_f32, float, load8_f32, store8_f32)
UNIT8(unit8_bf16, bf16_t, load8_bf16, store8_bf16)
#endif

#if defined(__AVX512F__) && defined(HAVE_AVX2_D8)
#define HAVE_AVX512_D8 1
/* exp_nonpos on 16 lanes. */
static inline __m512 exp_nonpos16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(EXP_LO);
    const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_max_ps(x, lo);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 y = _mm512_set1_ps(EXP_P0);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P1));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P2));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P3));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P4));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P5));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps((__mmask16)~under, y, _mm512_castsi512_ps(e));
}

/* Head width 8 on AVX-512: scores, exponentials and the value sum 16 lanes at a time, QB queries at a time (their
 * dependency chains interleave; one query alone waits on its FMA and exp latencies). Keys transposed into kt
 * (8 x SP, SP = S rounded up to 16, zero-padded), values as rows (S x 8, plus a zero row), so that one 16-lane load
 * holds the value rows of two keys, whose two weights one permute spreads over the two halves. */
#define UNIT16(NAME, T, LOAD8, STORE8)                                                                          \
    static void NAME(const T *qb, const T *kb, const T *vb, T *ob, int64_t S, int64_t qs, int64_t ks,          \
                     int64_t vs, int64_t os, float scale, float *restrict kt, float *restrict vv,              \
                     float *restrict sc) {                                                                     \
        const int64_t SP = (S + 15) & ~(int64_t)15;                                                            \
        STAGE_KV8(LOAD8);                                                                                      \
        _mm256_storeu_ps(vv + S * 8, _mm256_setzero_ps()); /* the partner of an odd last key */                \
        const __mmask16 tail = (__mmask16)((S % 16) ? ((1u << (S % 16)) - 1u) : 0xffffu);                      \
        const __m512i pair = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);                 \
        const __m512i two = _mm512_set1_epi32(2);                                                              \
        for (int64_t i0 = 0; i0 < S; i0 += QB) {                                                               \
            float qv[QB][8];                                                                                   \
            for (int u = 0; u < QB; u++) {                                                                     \
                const int64_t i = i0 + u < S ? i0 + u : S - 1; /* past the end: repeat the last, not stored */  \
                _mm256_storeu_ps(qv[u], _mm256_mul_ps(LOAD8(qb + i * qs), _mm256_set1_ps(scale)));             \
            }                                                                                                  \
            __m512 mx[QB];                                                                                     \
            for (int u = 0; u < QB; u++) mx[u] = _mm512_set1_ps(-1e30f);                                       \
            for (int64_t j = 0; j < SP; j += 16) {                                                             \
                __m512 s[QB];                                                                                  \
                const __m512 k0 = _mm512_loadu_ps(kt + j);                                                     \
                for (int u = 0; u < QB; u++) s[u] = _mm512_mul_ps(_mm512_set1_ps(qv[u][0]), k0);               \
                for (int c = 1; c < 8; c++) {                                                                  \
                    const __m512 kc = _mm512_loadu_ps(kt + c * SP + j);                                        \
                    for (int u = 0; u < QB; u++) s[u] = _mm512_fmadd_ps(_mm512_set1_ps(qv[u][c]), kc, s[u]);   \
                }                                                                                              \
                for (int u = 0; u < QB; u++) {                                                                 \
                    if (j + 16 == SP) s[u] = _mm512_mask_blend_ps(tail, _mm512_set1_ps(-1e30f), s[u]);         \
                    _mm512_storeu_ps(sc + u * SP + j, s[u]);                                                   \
                    mx[u] = _mm512_max_ps(mx[u], s[u]);                                                        \
                }                                                                                              \
            }                                                                                                  \
            __m512 m[QB], sum[QB], a0[QB], a1[QB];                                                             \
            for (int u = 0; u < QB; u++) {                                                                     \
                m[u] = _mm512_set1_ps(_mm512_reduce_max_ps(mx[u]));                                            \
                sum[u] = a0[u] = a1[u] = _mm512_setzero_ps();                                                  \
            }                                                                                                  \
            for (int64_t j = 0; j < SP; j += 16)                                                               \
                for (int u = 0; u < QB; u++) {                                                                 \
                    const __m512 e = exp_nonpos16(_mm512_sub_ps(_mm512_loadu_ps(sc + u * SP + j), m[u]));      \
                    _mm512_storeu_ps(sc + u * SP + j, e);                                                      \
                    sum[u] = _mm512_add_ps(sum[u], e);                                                         \
                }                                                                                              \
            for (int64_t j = 0; j < S; j += 16) {                                                              \
                __m512 p[QB];                                                                                  \
                for (int u = 0; u < QB; u++) p[u] = _mm512_loadu_ps(sc + u * SP + j); /* padding weighs 0 */   \
                __m512i idx = pair;                                                                            \
                const int64_t end = S - j < 16 ? S - j : 16;                                                   \
                for (int64_t jj = 0; jj < end; jj += 2) {                                                      \
                    const __m512 v2 = _mm512_loadu_ps(vv + (j + jj) * 8);                                      \
                    for (int u = 0; u < QB; u++) {                                                             \
                        if (jj & 2)                                                                            \
                            a1[u] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, p[u]), v2, a1[u]);              \
                        else                                                                                   \
                            a0[u] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, p[u]), v2, a0[u]);              \
                    }                                                                                          \
                    idx = _mm512_add_epi32(idx, two);                                                          \
                }                                                                                              \
            }                                                                                                  \
            for (int u = 0; u < QB && i0 + u < S; u++) {                                                       \
                const __m512 a = _mm512_add_ps(a0[u], a1[u]);                                                  \
                const __m256 acc = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));     \
                STORE8(ob + (i0 + u) * os, _mm256_mul_ps(acc, _mm256_set1_ps(1.0f / _mm512_reduce_add_ps(sum[u])))); \
            }                                                                                                  \
        }                                                                                                      \
    }

UNIT16(unit16_f32, float, load8_f32, store8_f32)
UNIT16(unit16_bf16, bf16_t, load8_bf16, store8_bf16)
#endif

/* UNIT(name, T, D): one (n, h) unit for element type T and head width D (0: the runtime width d).
 * kt: D x SP scratch (SP = S rounded up to 8), vv: S x D, sc: SP, acc: D. */
#define UNIT(NAME, T, LOAD, STORE, DW)                                                                          \
    static void NAME(const T *qb, const T *kb, const T *vb, T *ob, int64_t S, int64_t d, int64_t qs, int64_t ks, \
                     int64_t vs, int64_t os, float scale, float *restrict kt, float *restrict vv,               \
                     float *restrict sc, float *restrict acc) {                                                 \
        const int64_t D = DW ? DW : d;                                                                          \
        const int64_t SP = (S + 7) & ~(int64_t)7;                                                               \
        for (int64_t j = 0; j < S; j++)                                                                         \
            for (int64_t c = 0; c < D; c++) {                                                                   \
                kt[c * SP + j] = LOAD(kb + j * ks + c);                                                         \
                vv[j * D + c] = LOAD(vb + j * vs + c);                                                          \
            }                                                                                                   \
        for (int64_t c = 0; c < D; c++)                                                                         \
            for (int64_t j = S; j < SP; j++) kt[c * SP + j] = 0.0f;                                             \
        for (int64_t i = 0; i < S; i++) {                                                                       \
            float qr[DW ? DW : 64];                                                                             \
            for (int64_t c = 0; c < D; c++) qr[c] = LOAD(qb + i * qs + c) * scale;                              \
            for (int64_t j = 0; j < SP; j++) sc[j] = qr[0] * kt[j];                                             \
            for (int64_t c = 1; c < D; c++) {                                                                   \
                const float qc = qr[c];                                                                         \
                const float *restrict kc = kt + c * SP;                                                         \
                for (int64_t j = 0; j < SP; j++) sc[j] += qc * kc[j];                                           \
            }                                                                                                   \
            float m = sc[0];                                                                                    \
            for (int64_t j = 1; j < S; j++) m = sc[j] > m ? sc[j] : m;                                          \
            float sum = 0.0f;                                                                                   \
            for (int64_t j = 0; j < S; j++) {                                                                   \
                const float e = expf(sc[j] - m);                                                                \
                sc[j] = e;                                                                                      \
                sum += e;                                                                                       \
            }                                                                                                   \
            for (int64_t c = 0; c < D; c++) acc[c] = 0.0f;                                                      \
            for (int64_t j = 0; j < S; j++) {                                                                   \
                const float p = sc[j];                                                                          \
                const float *restrict vr = vv + j * D;                                                          \
                for (int64_t c = 0; c < D; c++) acc[c] += p * vr[c];                                            \
            }                                                                                                   \
            const float inv = 1.0f / sum;                                                                       \
            for (int64_t c = 0; c < D; c++) STORE(ob + i * os + c, acc[c] * inv);                               \
        }                                                                                                       \
    }

UNIT(unit_f32_8, float, load_f32, store_f32, 8)
UNIT(unit_f32_16, float, load_f32, store_f32, 16)
UNIT(unit_f32_32, float, load_f32, store_f32, 32)
UNIT(unit_f32_64, float, load_f32, store_f32, 64)
UNIT(unit_f32_any, float, load_f32, store_f32, 0)
UNIT(unit_bf16_8, bf16_t, load_bf16, store_bf16, 8)
UNIT(unit_bf16_16, bf16_t, load_bf16, store_bf16, 16)
UNIT(unit_bf16_32, bf16_t, load_bf16, store_bf16, 32)
UNIT(unit_bf16_64, bf16_t, load_bf16, store_bf16, 64)
UNIT(unit_bf16_any, bf16_t, load_bf16, store_bf16, 0)

#if defined(HAVE_AVX512_D8)
#define FAST8 1
#define UNIT8_CALL(SUFFIX) unit16_##SUFFIX(qb, kb, vb, ob, S, qs[2], ks[2], vs[2], os[2], scale, kt, vv, sc)
#elif defined(HAVE_AVX2_D8)
#define FAST8 1
#define UNIT8_CALL(SUFFIX) unit8_##SUFFIX(qb, kb, vb, ob, S, qs[2], ks[2], vs[2], os[2], scale, kt, vv, sc)
#else
#define FAST8 0
#define UNIT8_CALL(SUFFIX) (void)0
#endif

#define DISPATCH(T, SUFFIX)                                                                                     \
    {                                                                                                           \
        const T *qq = (const T *)q, *kk = (const T *)k, *vp = (const T *)v;                                     \
        T *oo = (T *)o;                                                                                         \
        _Pragma("omp for schedule(static)") for (int64_t u = 0; u < N * H; u++) {                               \
            const int64_t n = u / H, h = u % H;                                                                 \
            const T *qb = qq + n * qs[0] + h * qs[1], *kb = kk + n * ks[0] + h * ks[1];                         \
            const T *vb = vp + n * vs[0] + h * vs[1];                                                           \
            T *ob = oo + n * os[0] + h * os[1];                                                                 \
            if (D == 8 && FAST8) {                                                                              \
                UNIT8_CALL(SUFFIX);                                                                             \
                continue;                                                                                       \
            }                                                                                                   \
            switch (D) {                                                                                        \
            case 8: unit_##SUFFIX##_8(qb, kb, vb, ob, S, D, qs[2], ks[2], vs[2], os[2], scale, kt, vv, sc, acc); break;   \
            case 16: unit_##SUFFIX##_16(qb, kb, vb, ob, S, D, qs[2], ks[2], vs[2], os[2], scale, kt, vv, sc, acc); break; \
            case 32: unit_##SUFFIX##_32(qb, kb, vb, ob, S, D, qs[2], ks[2], vs[2], os[2], scale, kt, vv, sc, acc); break; \
            case 64: unit_##SUFFIX##_64(qb, kb, vb, ob, S, D, qs[2], ks[2], vs[2], os[2], scale, kt, vv, sc, acc); break; \
            default: unit_##SUFFIX##_any(qb, kb, vb, ob, S, D, qs[2], ks[2], vs[2], os[2], scale, kt, vv, sc, acc);     \
            }                                                                                                   \
        }                                                                                                       \
    }

/* q, k, v, o: (N, H, S, D) with element strides qs, ks, vs, os (4 each; the last must be 1); D <= 64;
 * bf16: 1 for bfloat16, 0 for float32; threads: OpenMP threads. Returns 0, -1 if scratch memory could not be
 * allocated, -2 for unsupported arguments. */
int short_attention(const void *q, const void *k, const void *v, void *o, int64_t N, int64_t H, int64_t S,
                    int64_t D, const int64_t *qs, const int64_t *ks, const int64_t *vs, const int64_t *os,
                    float scale, int bf16, int threads) {
    if (D < 1 || D > 64 || S < 1 || threads < 1 || qs[3] != 1 || ks[3] != 1 || vs[3] != 1 || os[3] != 1) return -2;
    const int64_t SP = (S + 15) & ~(int64_t)15; /* the widest path's padding (the others use less) */
    const size_t per = (size_t)(((D * SP + (S + 1) * D + QB * SP + D) / 16 + 4) * 16); /* floats, 64-byte multiple */
    float *all = (float *)aligned_alloc(64, sizeof(float) * per * (size_t)threads);
    if (!all) return -1; /* allocated before the parallel region: every thread reaches the omp for */
#pragma omp parallel num_threads(threads)
    {
        float *kt = all + per * (size_t)omp_get_thread_num(), *vv = kt + D * SP, *sc = vv + (S + 1) * D, *acc = sc + SP;
        if (bf16)
            DISPATCH(bf16_t, bf16)
        else
            DISPATCH(float, f32)
    }
    free(all);
    return 0;
}

/* out[t, :] = LayerNorm(x[t, :] + r[t, :]) * weight + bias over rows of width C, in float32 (two passes over the
 * row for the mean and the variance), rounded once; x, r, out: (T, C) contiguous, float32 or bf16 (bf16 = 1);
 * weight, bias: (C,) in the same dtype. The residual add and the layer norm of a post-norm transformer layer in
 * one pass over memory, where torch runs two (and rounds the sum to bf16 in between). */
#define ADD_LN(NAME, T, LOAD)                                                                                    \
    static void NAME(const T *x, const T *r, const T *w, const T *b, T *out, int64_t rows, int64_t C, float eps, \
                     int threads, float *all) {                                                                  \
        float *wf = all, *bf = all + C;                                                                          \
        for (int64_t c = 0; c < C; c++) {                                                                        \
            wf[c] = LOAD(w + c);                                                                                 \
            bf[c] = LOAD(b + c);                                                                                 \
        }                                                                                                        \
        _Pragma("omp parallel num_threads(threads)") {                                                           \
            float *y = all + 2 * C + C * (int64_t)omp_get_thread_num();                                          \
            _Pragma("omp for schedule(static)") for (int64_t t = 0; t < rows; t++) {                             \
                const T *xr = x + t * C, *rr = r + t * C;                                                        \
                float sum = 0.0f;                                                                                \
                for (int64_t c = 0; c < C; c++) {                                                                \
                    y[c] = LOAD(xr + c) + LOAD(rr + c);                                                          \
                    sum += y[c];                                                                                 \
                }                                                                                                \
                const float mean = sum / (float)C;                                                               \
                float ss = 0.0f;                                                                                 \
                for (int64_t c = 0; c < C; c++) {                                                                \
                    y[c] -= mean;                                                                                \
                    ss += y[c] * y[c];                                                                           \
                }                                                                                                \
                STORE_ROW_##T(out + t * C, y, wf, bf, 1.0f / sqrtf(ss / (float)C + eps), C);                     \
            }                                                                                                    \
        }                                                                                                        \
    }

static inline void STORE_ROW_float(float *o, const float *y, const float *w, const float *b, float rstd, int64_t C) {
    for (int64_t c = 0; c < C; c++) o[c] = y[c] * rstd * w[c] + b[c];
}
static inline void STORE_ROW_bf16_t(bf16_t *o, const float *y, const float *w, const float *b, float rstd,
                                    int64_t C) {
    int64_t c = 0;
#ifdef HAVE_AVX2_D8
    const __m256 rs = _mm256_set1_ps(rstd);
    for (; c + 8 <= C; c += 8)
        store8_bf16(o + c, _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(y + c), rs), _mm256_loadu_ps(w + c),
                                           _mm256_loadu_ps(b + c)));
#endif
    for (; c < C; c++) store_bf16(o + c, y[c] * rstd * w[c] + b[c]);
}

ADD_LN(add_ln_f32, float, load_f32)
ADD_LN(add_ln_bf16, bf16_t, load_bf16)

int add_layer_norm(const void *x, const void *r, const void *w, const void *b, void *out, int64_t rows, int64_t C,
                   float eps, int bf16, int threads) {
    if (C < 1 || threads < 1) return -2;
    float *all = (float *)malloc(sizeof(float) * (size_t)(C * (2 + threads)));
    if (!all) return -1;
    if (bf16)
        add_ln_bf16((const bf16_t *)x, (const bf16_t *)r, (const bf16_t *)w, (const bf16_t *)b, (bf16_t *)out, rows,
                    C, eps, threads, all);
    else
        add_ln_f32((const float *)x, (const float *)r, (const float *)w, (const float *)b, (float *)out, rows, C, eps,
                   threads, all);
    free(all);
    return 0;
}

/* out[t, c] = sigmoid(y[t, c]) * tanh(y[t, C + c]): the gated activation of a WaveNet-style residual layer on the
 * (T, 2C) output of its projection (gate, filter halves), in float32, rounded once; y, out contiguous. */
static inline float gated_tanh1(float a, float b) {
    const float ea = expf(-fabsf(a)), eb = expf(-2.0f * fabsf(b));
    const float s = (a >= 0.0f ? 1.0f : ea) / (1.0f + ea);
    const float th = (1.0f - eb) / (1.0f + eb);
    return s * (b >= 0.0f ? th : -th);
}

#ifdef HAVE_AVX2_D8
static inline __m256 gated_tanh8(__m256 a, __m256 b) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 ea = exp_nonpos(_mm256_or_ps(a, sign)); /* exp(-|a|) */
    const __m256 eb = exp_nonpos(_mm256_mul_ps(_mm256_set1_ps(2.0f), _mm256_or_ps(b, sign)));
    const __m256 num = _mm256_blendv_ps(one, ea, a); /* a < 0 (sign bit set): e^a / (1 + e^a) */
    const __m256 s = _mm256_div_ps(num, _mm256_add_ps(one, ea));
    const __m256 th = _mm256_div_ps(_mm256_sub_ps(one, eb), _mm256_add_ps(one, eb));
    return _mm256_mul_ps(s, _mm256_xor_ps(th, _mm256_and_ps(b, sign))); /* tanh(b) = sign(b) tanh(|b|) */
}
#endif

#define GATED(NAME, T, LOAD, STORE, LOAD8, STORE8)                                                               \
    static void NAME(const T *y, T *out, int64_t rows, int64_t C, int threads) {                                 \
        _Pragma("omp parallel for num_threads(threads) schedule(static)") for (int64_t t = 0; t < rows; t++) {   \
            const T *g = y + t * 2 * C, *f = g + C;                                                              \
            T *o = out + t * C;                                                                                  \
            int64_t c = 0;                                                                                       \
            GATED_VEC(LOAD8, STORE8)                                                                             \
            for (; c < C; c++) STORE(o + c, gated_tanh1(LOAD(g + c), LOAD(f + c)));                               \
        }                                                                                                        \
    }

#ifdef HAVE_AVX2_D8
#define GATED_VEC(LOAD8, STORE8) \
    for (; c + 8 <= C; c += 8) STORE8(o + c, gated_tanh8(LOAD8(g + c), LOAD8(f + c)));
GATED(gated_f32, float, load_f32, store_f32, load8_f32, store8_f32)
GATED(gated_bf16, bf16_t, load_bf16, store_bf16, load8_bf16, store8_bf16)
#else
#define GATED_VEC(LOAD8, STORE8)
GATED(gated_f32, float, load_f32, store_f32, , )
GATED(gated_bf16, bf16_t, load_bf16, store_bf16, , )
#endif

int gated_tanh(const void *y, void *out, int64_t rows, int64_t C, int bf16, int threads) {
    if (C < 1 || threads < 1) return -2;
    if (bf16)
        gated_bf16((const bf16_t *)y, (bf16_t *)out, rows, C, threads);
    else
        gated_f32((const float *)y, (float *)out, rows, C, threads);
    return 0;
}

/* dropout: out[i] = x[i] * scale where the element is kept, x[i] * 0 where dropped (NaN and inf give NaN, as
 * torch's), the mask a pure function of (seed, i).
 *
 * Element i takes 16 bits of splitmix64's output for block i / 4 (the generator's mixing function applied to the
 * counter seed + (i / 4 + 1) * golden gamma, as splitmix64's i-th draw from state seed): lane i % 4, kept iff those
 * bits are >= drop16, so P(keep) = 1 - drop16 / 2^16. Being counter-based, the mask is never stored: the backward
 * pass is the same call on the gradient with the same seed (dropout is linear in x). Blocks are independent, so
 * the loop splits over threads at any boundary of 4 elements and its result does not depend on the thread count. */
static inline uint64_t splitmix64_at(uint64_t seed, uint64_t block) {
    uint64_t z = seed + (block + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
/* 16 elements (4 blocks) at a time: the 4 hashes in one vector of 64-bit lanes, read as 16 lanes of 16 bits in
 * element order (little endian: bits 16l..16l+15 of block j are element 4j + l), compared with drop16 at once. */
static inline __m512 dropout_scale16(uint64_t seed, int64_t j, __m256i drop, __m512 scale) {
    const __m256i gamma = _mm256_set1_epi64x((long long)0x9E3779B97F4A7C15ull);
    __m256i z = _mm256_add_epi64(_mm256_set1_epi64x((long long)seed),
                                 _mm256_mullo_epi64(_mm256_add_epi64(_mm256_set1_epi64x(j + 1),
                                                                     _mm256_setr_epi64x(0, 1, 2, 3)), gamma));
    z = _mm256_mullo_epi64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)),
                           _mm256_set1_epi64x((long long)0xBF58476D1CE4E5B9ull));
    z = _mm256_mullo_epi64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)),
                           _mm256_set1_epi64x((long long)0x94D049BB133111EBull));
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
    return _mm512_maskz_mov_ps(_mm256_cmpge_epu16_mask(z, drop), scale);
}
static inline __m512 load16_bf16(const bf16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline __m256i round16_bf16(__m512 v) { /* round to nearest even, NaN stays NaN, as store_bf16 */
    __m512i u = _mm512_castps_si512(v);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                     _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x400000));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}
static inline void store16_bf16(bf16_t *p, __m512 v) { _mm256_storeu_si256((__m256i *)p, round16_bf16(v)); }
#define DROPOUT_VEC(LOAD16, STORE16)                                                                           \
    _Pragma("omp parallel for num_threads(threads) schedule(static) if (n > 65536)")                            \
    for (int64_t j = 0; j < n / 16; j++)                                                                       \
        STORE16(out + 16 * j, _mm512_mul_ps(LOAD16(x + 16 * j), dropout_scale16(seed, 4 * j, drop, vscale)));  \
    done = n / 16 * 4;
#define DROPOUT_VEC_SETUP                                                                                      \
    const __m256i drop = _mm256_set1_epi16((short)drop16);                                                     \
    const __m512 vscale = _mm512_set1_ps(scale);
#else
#define DROPOUT_VEC(LOAD16, STORE16)
#define DROPOUT_VEC_SETUP
#endif

/* blocks from `done` on one at a time (all of them without the AVX-512 path) */
#define DROPOUT(NAME, T, LOAD, STORE, LOAD16, STORE16)                                                         \
    static void NAME(const T *x, T *out, int64_t n, uint64_t seed, uint32_t drop16, float scale, int threads) { \
        int64_t done = 0;                                                                                      \
        DROPOUT_VEC_SETUP                                                                                      \
        DROPOUT_VEC(LOAD16, STORE16)                                                                           \
        _Pragma("omp parallel for num_threads(threads) schedule(static) if (n - 4 * done > 65536)")            \
        for (int64_t j = done; j < (n + 3) / 4; j++) {                                                         \
            uint64_t h = splitmix64_at(seed, (uint64_t)j);                                                    \
            for (int64_t i = 4 * j; i < 4 * j + 4 && i < n; i++) {                                             \
                float keep = ((uint32_t)(h >> (16 * (i - 4 * j))) & 0xffffu) >= drop16 ? scale : 0.0f;         \
                STORE(out + i, LOAD(x + i) * keep);                                                            \
            }                                                                                                  \
        }                                                                                                      \
    }
DROPOUT(dropout_f32, float, load_f32, store_f32, _mm512_loadu_ps, _mm512_storeu_ps)
DROPOUT(dropout_bf16, bf16_t, load_bf16, store_bf16, load16_bf16, store16_bf16)

int dropout(const void *x, void *out, int64_t n, uint64_t seed, uint32_t drop16, float scale, int bf16, int threads) {
    if (n < 0 || drop16 >= 65536u || threads < 1) return -2;
    if (bf16)
        dropout_bf16((const bf16_t *)x, (bf16_t *)out, n, seed, drop16, scale, threads);
    else
        dropout_f32((const float *)x, (float *)out, n, seed, drop16, scale, threads);
    return 0;
}

/* softmax_dropout: y = dropout(softmax(s)) over the last dim of a (rows, S) tensor, the dropout mask of element
 * i = row * S + t the one dropout() gives element i for the same seed. softmax_dropout_backward: gs = p (gp -
 * sum_t gp p) with gp = dropout(gy) and p = softmax(s) recomputed from s (bit for bit as the forward computed it),
 * so that only s is kept for the backward pass, not the float32 softmax (half the memory under bf16, and no
 * (S x S) float32 tensor written per call). Each of s / y / gy / gs is float32 or bf16 (flags); bf16 rows are
 * widened into float32 scratch, float32 rows read in place; results are rounded once when stored. One row is one
 * unit of work; S <= 4096 (scratch on the stack). */
/* bits[0 .. S + 16) = the 16-bit draws of elements i0, i0 + 1, ... (dropout()'s, from its blocks: hashed in one
 * vectorised loop, read as 16-bit lanes; 16 past S so that a vector path may read whole blocks of 16) */
static inline void row_bits(uint64_t seed, int64_t i0, int64_t S, uint16_t *bits) {
    int64_t j0 = i0 / 4, nb = (i0 % 4 + S + 16 + 3) / 4;
    uint64_t h[nb];
    for (int64_t b = 0; b < nb; b++) h[b] = splitmix64_at(seed, (uint64_t)(j0 + b));
    memcpy(bits, (const uint16_t *)h + i0 % 4, (size_t)(S + 16) * 2); /* little endian: lane l of block b */
}
static inline void row_mask(uint64_t seed, int64_t i0, int64_t S, uint32_t drop16, float scale, float *m) {
    uint16_t bits[S + 16];
    row_bits(seed, i0, S, bits);
    for (int64_t t = 0; t < S; t++) m[t] = bits[t] >= drop16 ? scale : 0.0f;
}
static inline void row_load(const void *base, int bf16, int64_t off, int64_t S, float *dst) {
    if (bf16) {
        const uint16_t *p = (const uint16_t *)base + off;
        for (int64_t t = 0; t < S; t++) {
            uint32_t u = (uint32_t)p[t] << 16;
            memcpy(dst + t, &u, 4);
        }
    } else {
        memcpy(dst, (const float *)base + off, (size_t)S * 4);
    }
}
static inline void row_store(void *base, int bf16, int64_t off, int64_t S, const float *src) {
    if (bf16) { /* round to nearest even, NaN stays NaN (branch-free, as store_bf16) */
        uint16_t *p = (uint16_t *)base + off;
        for (int64_t t = 0; t < S; t++) {
            uint32_t u;
            memcpy(&u, src + t, 4);
            uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
            p[t] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
        }
    } else {
        memcpy((float *)base + off, src, (size_t)S * 4);
    }
}

/* p[t] = softmax(x)[t] for one row (x float32, p any float32 scratch; the same instructions forward and backward) */
static inline void row_softmax(const float *x, int64_t S, float *p) {
    float mx = x[0];
    for (int64_t t = 1; t < S; t++) mx = x[t] > mx ? x[t] : mx;
    float sum = 0.0f;
    for (int64_t t = 0; t < S; t++) {
        p[t] = expf(x[t] - mx);
        sum += p[t];
    }
    float inv = 1.0f / sum;
    for (int64_t t = 0; t < S; t++) p[t] *= inv;
}

/* row r of s as float32: in place for float32, widened into buf for bf16 */
static inline const float *row_f32(const void *s, int bf16, int64_t r, int64_t S, float *buf) {
    if (!bf16) return (const float *)s + r * S;
    row_load(s, 1, r * S, S, buf);
    return buf;
}

#if defined(HAVE_AVX512_D8) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
/* The AVX-512 rows: 16 lanes at a time, the tail under a lane mask, bf16 widened and rounded in registers. */
#define SOFTMAX_FILL -3.0e38f /* the tail lanes' score: exp_nonpos16 of it minus the maximum is 0 */
static inline __mmask16 tail16(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u); }
static inline __m512 mload16(const void *base, int bf16, int64_t off, __mmask16 k, float fill) {
    if (bf16) {
        __m256i h = _mm256_maskz_loadu_epi16(k, (const uint16_t *)base + off);
        __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        return _mm512_mask_blend_ps(k, _mm512_set1_ps(fill), v);
    }
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), k, (const float *)base + off);
}
static inline void mstore16(void *base, int bf16, int64_t off, __mmask16 k, __m512 v) {
    if (!bf16) {
        _mm512_mask_storeu_ps((float *)base + off, k, v);
        return;
    }
    _mm256_mask_storeu_epi16((uint16_t *)base + off, k, round16_bf16(v));
}
/* p[0 .. S rounded up to 16) = softmax of the row (0 past S); the same instructions forward and backward */
static inline void row_softmax16(const void *s, int bf16, int64_t off, int64_t S, float *p) {
    __m512 vmx = _mm512_set1_ps(SOFTMAX_FILL);
    for (int64_t c = 0; c < S; c += 16) vmx = _mm512_max_ps(vmx, mload16(s, bf16, off + c, tail16(S - c), SOFTMAX_FILL));
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t c = 0; c < S; c += 16) {
        __m512 e = exp_nonpos16(_mm512_sub_ps(mload16(s, bf16, off + c, tail16(S - c), SOFTMAX_FILL), mx));
        _mm512_storeu_ps(p + c, e);
        sum = _mm512_add_ps(sum, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int64_t c = 0; c < S; c += 16) _mm512_storeu_ps(p + c, _mm512_mul_ps(_mm512_loadu_ps(p + c), inv));
}
int softmax_dropout(const void *s, void *y, int64_t rows, int64_t S, uint64_t seed, uint32_t drop16, float scale,
                    int s_bf16, int y_bf16, int threads) {
    if (S < 1 || S > 4096 || drop16 >= 65536u || threads < 1) return -2;
    const __m256i drop = _mm256_set1_epi16((short)drop16);
    const __m512 vscale = _mm512_set1_ps(scale);
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * S > 16384)
    for (int64_t r = 0; r < rows; r++) {
        float p[S + 16];
        uint16_t bits[S + 16];
        row_softmax16(s, s_bf16, r * S, S, p);
        row_bits(seed, r * S, S, bits);
        for (int64_t c = 0; c < S; c += 16) {
            __mmask16 keep = _mm256_cmpge_epu16_mask(_mm256_loadu_si256((const __m256i *)(bits + c)), drop);
            mstore16(y, y_bf16, r * S + c, tail16(S - c), _mm512_maskz_mul_ps(keep, _mm512_loadu_ps(p + c), vscale));
        }
    }
    return 0;
}

int softmax_dropout_backward(const void *s, const void *gy, void *gs, int64_t rows, int64_t S, uint64_t seed,
                             uint32_t drop16, float scale, int s_bf16, int gy_bf16, int threads) {
    if (S < 1 || S > 4096 || drop16 >= 65536u || threads < 1) return -2;
    const __m256i drop = _mm256_set1_epi16((short)drop16);
    const __m512 vscale = _mm512_set1_ps(scale);
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * S > 16384)
    for (int64_t r = 0; r < rows; r++) {
        float p[S + 16], g[S + 16];
        uint16_t bits[S + 16];
        row_softmax16(s, s_bf16, r * S, S, p);
        row_bits(seed, r * S, S, bits);
        __m512 dot = _mm512_setzero_ps();
        for (int64_t c = 0; c < S; c += 16) {
            __mmask16 keep = _mm256_cmpge_epu16_mask(_mm256_loadu_si256((const __m256i *)(bits + c)), drop);
            __m512 gv = _mm512_maskz_mul_ps(keep, mload16(gy, gy_bf16, r * S + c, tail16(S - c), 0.0f), vscale);
            _mm512_storeu_ps(g + c, gv);
            dot = _mm512_fmadd_ps(gv, _mm512_loadu_ps(p + c), dot);
        }
        const __m512 d = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
        for (int64_t c = 0; c < S; c += 16)
            mstore16(gs, s_bf16, r * S + c, tail16(S - c),
                     _mm512_mul_ps(_mm512_loadu_ps(p + c), _mm512_sub_ps(_mm512_loadu_ps(g + c), d)));
    }
    return 0;
}
#else
int softmax_dropout(const void *s, void *y, int64_t rows, int64_t S, uint64_t seed, uint32_t drop16, float scale,
                    int s_bf16, int y_bf16, int threads) {
    if (S < 1 || S > 4096 || drop16 >= 65536u || threads < 1) return -2;
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * S > 16384)
    for (int64_t r = 0; r < rows; r++) {
        float buf[S], p[S], m[S];
        row_softmax(row_f32(s, s_bf16, r, S, buf), S, p);
        row_mask(seed, r * S, S, drop16, scale, m);
        for (int64_t t = 0; t < S; t++) m[t] *= p[t];
        row_store(y, y_bf16, r * S, S, m);
    }
    return 0;
}

int softmax_dropout_backward(const void *s, const void *gy, void *gs, int64_t rows, int64_t S, uint64_t seed,
                             uint32_t drop16, float scale, int s_bf16, int gy_bf16, int threads) {
    /* gs has s's dtype */
    if (S < 1 || S > 4096 || drop16 >= 65536u || threads < 1) return -2;
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * S > 16384)
    for (int64_t r = 0; r < rows; r++) {
        float buf[S], gbuf[S], p[S], m[S];
        row_softmax(row_f32(s, s_bf16, r, S, buf), S, p);
        const float *g = row_f32(gy, gy_bf16, r, S, gbuf);
        row_mask(seed, r * S, S, drop16, scale, m);
        float dot = 0.0f;
        for (int64_t t = 0; t < S; t++) {
            m[t] *= g[t];
            dot += m[t] * p[t];
        }
        for (int64_t t = 0; t < S; t++) m[t] = p[t] * (m[t] - dot);
        row_store(gs, s_bf16, r * S, S, m);
    }
    return 0;
}
#endif
