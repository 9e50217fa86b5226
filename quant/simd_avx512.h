/* simd_avx512.h: the vector primitives of kernels_body.h for AVX-512 (16 floats). */
#include <immintrin.h>
#include <stdint.h>

#define VLEN 16
#define ISA_SUFFIX avx512
#define NR_FWD 12 /* forward micro-tile: 2 vectors of X^T x 12 broadcast weight rows */
#define MR_BWD 12 /* backward micro-tile: 12 broadcast dY rows x 2 vectors of W */

typedef __m512 vf;
typedef __m512 lut16; /* 16 table values: one register, looked up with vpermps */
typedef __m512i vi;

static inline vi vload_i(const uint32_t *p) { return _mm512_loadu_si512(p); }
/* VLEN bytes, zero-extended to 32-bit lanes */
static inline vi vload_u8(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }
static inline vi vset1_i(int32_t a) { return _mm512_set1_epi32(a); }
static inline vi vadd_i(vi a, vi b) { return _mm512_add_epi32(a, b); }
static inline vi vsrli(vi a, int n) { return _mm512_srli_epi32(a, (unsigned)n); }
static inline lut16 lut_load(const float *table) { return _mm512_loadu_ps(table); }
/* lut[idx & 15] in every lane (vpermps reads only the low 4 bits of an index) */
static inline vf vlookup16(vi idx, lut16 lut) { return _mm512_permutexvar_ps(idx, lut); }
/* table[idx] for idx in 0..255: a vpermi2ps per 32 entries, merged under masks, costs less
 * here than a gather */
static inline vf vlookup256(vi idx, const float *table)
{
    __m512i hi = _mm512_srli_epi32(idx, 5);
    __m512 r = _mm512_permutex2var_ps(_mm512_loadu_ps(table), idx, _mm512_loadu_ps(table + 16));
    for (int i = 1; i < 8; i++) {
        __mmask16 k = _mm512_cmpeq_epi32_mask(hi, _mm512_set1_epi32(i));
        r = _mm512_mask_mov_ps(r, k, _mm512_permutex2var_ps(_mm512_loadu_ps(table + 32 * i), idx,
                                                             _mm512_loadu_ps(table + 32 * i + 16)));
    }
    return r;
}
static inline vi vand_i(vi a, vi b) { return _mm512_and_si512(a, b); }
static inline vi vor_i(vi a, vi b) { return _mm512_or_si512(a, b); }
static inline vi vsub_i(vi a, vi b) { return _mm512_sub_epi32(a, b); }
static inline vi vslli(vi a, int n) { return _mm512_slli_epi32(a, (unsigned)n); }
static inline vf vcvt_i(vi a) { return _mm512_cvtepi32_ps(a); }
/* lane i: bit first + i of w */
static inline vi vbits_at(uint32_t w, int first)
{
    __m512i at = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                  _mm512_set1_epi32(first));
    return _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int)w), at), _mm512_set1_epi32(1));
}
/* VLEN fp16 or bf16 values at p (unaligned) as floats; the fp16 conversion is exact */
static inline vf vload_f16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline vf vload_bf16(const uint8_t *p)
{
    __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}
static inline vf vgather(const float *base, vi idx) { return _mm512_i32gather_ps(idx, base, 4); }

static inline vf vzero(void) { return _mm512_setzero_ps(); }
static inline vf vset1(float x) { return _mm512_set1_ps(x); }
static inline vf vload(const float *p) { return _mm512_loadu_ps(p); }
static inline void vstore(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline float vhsum(vf v) { return _mm512_reduce_add_ps(v); }

static inline lut16 lut_scaled(const float *table, float a)
{
    return _mm512_mul_ps(_mm512_loadu_ps(table), _mm512_set1_ps(a));
}

/* S * (q - Z) for q = 0..15, as the scalar decode computes it. */
static inline lut16 lut_affine(float s, int32_t z)
{
    __m512i q = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm512_mul_ps(_mm512_set1_ps(s), _mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(z))));
}

/* 16 bytes of packed nibbles -> 32 table values, the first element of each byte in its
 * high nibble (hi_first) or in its low one. */
static inline void decode_nibbles32(__m128i bytes, int hi_first, lut16 lut, vf *out)
{
    __m256i w = _mm256_cvtepu8_epi16(bytes);
    __m256i hi = _mm256_srli_epi16(w, 4);
    __m256i lo = _mm256_and_si256(w, _mm256_set1_epi16(15));
    __m256i seq = hi_first ? _mm256_or_si256(hi, _mm256_slli_epi16(lo, 8)) /* hi0 lo0 hi1 .. */
                           : _mm256_or_si256(lo, _mm256_slli_epi16(hi, 8));
    out[0] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(seq)), lut);
    out[1] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(seq, 1)), lut);
}

/* The same 32 codes in "split" order: out[0] = elements 0, 2, .., 30 (high nibbles),
 * out[1] = elements 1, 3, .., 31. Cheaper (vpermps reads only the low 4 bits of an index,
 * so the low nibble needs no mask); matrix-vector products permute x to match. */
static inline void decode_nibbles32_split(const uint8_t *p, lut16 lut, vf *out)
{
    __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    out[0] = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), lut);
    out[1] = _mm512_permutexvar_ps(b, lut);
}

static inline void decode_int8_32(const int8_t *p, float s, vf *out)
{
    __m512 vs = _mm512_set1_ps(s);
    for (int i = 0; i < 2; i++) {
        __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * i)));
        out[i] = _mm512_mul_ps(_mm512_cvtepi32_ps(q), vs);
    }
}

/* Lane i is +d where bit i of plus is set, -d where bit i of minus is, else 0. */
static inline void decode_bits32(uint32_t plus, uint32_t minus, float d, vf *out)
{
    __m512 vp = _mm512_set1_ps(d), vm = _mm512_set1_ps(-d);
    for (int i = 0; i < 2; i++) {
        __m512 v = _mm512_maskz_mov_ps((__mmask16)(minus >> (16 * i)), vm);
        out[i] = _mm512_mask_mov_ps(v, (__mmask16)(plus >> (16 * i)), vp);
    }
}
