/* simd_avx2.h: the vector primitives of kernels_body.h for AVX2 + FMA (8 floats). */
#include <immintrin.h>
#include <stdint.h>

#define VLEN 8
#define ISA_SUFFIX avx2
#define NR_FWD 6 /* 16 ymm registers: 2 x 6 accumulators, 2 loads, 1 broadcast */
#define MR_BWD 6

typedef __m256 vf;
typedef struct {
    __m256 lo, hi;
} lut16;

static inline vf vzero(void) { return _mm256_setzero_ps(); }
static inline vf vset1(float x) { return _mm256_set1_ps(x); }
static inline vf vload(const float *p) { return _mm256_loadu_ps(p); }
static inline void vstore(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline float vhsum(vf v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline lut16 lut_scaled(const float *table, float a)
{
    __m256 va = _mm256_set1_ps(a);
    lut16 l = {_mm256_mul_ps(_mm256_loadu_ps(table), va), _mm256_mul_ps(_mm256_loadu_ps(table + 8), va)};
    return l;
}

static inline lut16 lut_affine(float s, int32_t z)
{
    __m256i q = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), vz = _mm256_set1_epi32(z);
    __m256 vs = _mm256_set1_ps(s);
    lut16 l = {_mm256_mul_ps(vs, _mm256_cvtepi32_ps(_mm256_sub_epi32(q, vz))),
               _mm256_mul_ps(vs, _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_add_epi32(q, _mm256_set1_epi32(8)), vz)))};
    return l;
}

static inline vf lookup16(__m256i idx, lut16 lut)
{
    __m256 lo = _mm256_permutevar8x32_ps(lut.lo, idx), hi = _mm256_permutevar8x32_ps(lut.hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

typedef __m256i vi;

static inline vi vload_i(const uint32_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline vi vload_u8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
static inline vi vset1_i(int32_t a) { return _mm256_set1_epi32(a); }
static inline vi vadd_i(vi a, vi b) { return _mm256_add_epi32(a, b); }
static inline vi vsrli(vi a, int n) { return _mm256_srli_epi32(a, n); }
static inline lut16 lut_load(const float *table)
{
    lut16 l = {_mm256_loadu_ps(table), _mm256_loadu_ps(table + 8)};
    return l;
}
static inline vf vlookup16(vi idx, lut16 lut) { return lookup16(idx, lut); }
static inline vi vand_i(vi a, vi b) { return _mm256_and_si256(a, b); }
static inline vi vor_i(vi a, vi b) { return _mm256_or_si256(a, b); }
static inline vi vsub_i(vi a, vi b) { return _mm256_sub_epi32(a, b); }
static inline vi vslli(vi a, int n) { return _mm256_slli_epi32(a, n); }
static inline vf vcvt_i(vi a) { return _mm256_cvtepi32_ps(a); }
/* lane i: bit first + i of w */
static inline vi vbits_at(uint32_t w, int first)
{
    __m256i at = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(first));
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w), at), _mm256_set1_epi32(1));
}
/* VLEN fp16 or bf16 values at p (unaligned) as floats; F16C's conversion is exact */
static inline vf vload_f16(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline vf vload_bf16(const uint8_t *p)
{
    __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}
static inline vf vgather(const float *base, vi idx) { return _mm256_i32gather_ps(base, idx, 4); }
static inline vf vlookup256(vi idx, const float *table) { return vgather(table, idx); }

static inline void decode_nibbles32(__m128i bytes, int hi_first, lut16 lut, vf *out)
{
    __m256i w = _mm256_cvtepu8_epi16(bytes);
    __m256i hi = _mm256_srli_epi16(w, 4);
    __m256i lo = _mm256_and_si256(w, _mm256_set1_epi16(15));
    __m256i seq = hi_first ? _mm256_or_si256(hi, _mm256_slli_epi16(lo, 8))
                           : _mm256_or_si256(lo, _mm256_slli_epi16(hi, 8));
    __m128i a = _mm256_castsi256_si128(seq), b = _mm256_extracti128_si256(seq, 1);
    out[0] = lookup16(_mm256_cvtepu8_epi32(a), lut);
    out[1] = lookup16(_mm256_cvtepu8_epi32(_mm_srli_si128(a, 8)), lut);
    out[2] = lookup16(_mm256_cvtepu8_epi32(b), lut);
    out[3] = lookup16(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)), lut);
}

/* Split order (see simd_avx512.h): for each 8 bytes g, out[2g] = their high nibbles,
 * out[2g+1] = their low nibbles; lookup16 reads only bits 0-3 of an index. */
static inline void decode_nibbles32_split(const uint8_t *p, lut16 lut, vf *out)
{
    for (int g = 0; g < 2; g++) {
        __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * g)));
        out[2 * g] = lookup16(_mm256_srli_epi32(b, 4), lut);
        out[2 * g + 1] = lookup16(b, lut);
    }
}

static inline void decode_int8_32(const int8_t *p, float s, vf *out)
{
    __m256 vs = _mm256_set1_ps(s);
    for (int i = 0; i < 4; i++) {
        __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8 * i)));
        out[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(q), vs);
    }
}

/* 8 bits -> 8 lane masks: broadcast the byte, test one bit per lane. */
static inline __m256 bits8_mask(uint32_t bits)
{
    __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256i b = _mm256_and_si256(_mm256_set1_epi32((int)bits), sel);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, sel));
}

static inline void decode_bits32(uint32_t plus, uint32_t minus, float d, vf *out)
{
    __m256 vp = _mm256_set1_ps(d), vm = _mm256_set1_ps(-d);
    for (int i = 0; i < 4; i++) {
        __m256 v = _mm256_and_ps(bits8_mask(minus >> (8 * i) & 255), vm);
        out[i] = _mm256_blendv_ps(v, vp, bits8_mask(plus >> (8 * i) & 255));
    }
}
