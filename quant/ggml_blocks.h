/* ggml_blocks.h: the definition of ggml's block types (internal to quant/), shared by the
 * scalar decode (quantize.c) and the vector decoders (kernels_decode.h), so that both
 * compute every weight with the same operations in the same order as ggml's
 * dequantize_row_* (ggml-quants.c) and so give its values bit for bit.
 *
 * A block is decoded in two steps. ggml_block_consts turns its header (fp16 scale and
 * min, the K-quants' 6-bit or 8-bit sub-block scales) into one scale s and one bias b per
 * group of values (16 for q6_k, 32 for the others), once per block; ggml_code gives the
 * integer code of one value. A weight is then q * s, q * s + b (q4_1, q5_1) or q * s - b
 * (q4_k, q5_k): each a product and at most one addition, rounded separately, as ggml
 * writes them (x0*d + m; d1 * q - m1; d * sc * q = (d * sc) * q). The subtraction stays a
 * subtraction so that even a NaN's sign bit follows ggml's.
 *
 * The layouts (ggml-common.h), little-endian, fp16 fields unaligned:
 *   q8_0  34 B / 32: d, int8 qs[32]                          w = qs[e] d
 *   q4_0  18 B / 32: d, qs[16]: e < 16 low nibble of qs[e],  w = (q - 8) d
 *                    e >= 16 high nibble of qs[e - 16]
 *   q4_1  20 B / 32: d, m, qs[16] as q4_0                    w = q d + m
 *   q5_0  22 B / 32: d, qh (32 bits: bit e is q's bit 4), qs[16] as q4_0; w = (q - 16) d
 *   q5_1  24 B / 32: d, m, qh, qs[16]                        w = q d + m
 *   q4_k 144 B / 256: d, dmin, scales[12] (8 pairs of 6-bit scale and min), qs[128]: value
 *                    64 i + l (l < 32) low nibble of qs[32 i + l], 64 i + 32 + l its high
 *                    nibble; sub-block j = e / 32:         w = q (d sc_j) - dmin m_j
 *   q5_k 176 B / 256: d, dmin, scales[12], qh[32] (bit j of qh[l] is bit 4 of value
 *                    32 j + l), qs[128] as q4_k               w = q (d sc_j) - dmin m_j
 *   q6_k 210 B / 256: ql[128], qh[64], int8 scales[16], d: value 128 h + 32 s + l (l < 32)
 *                    has low bits (ql[64 h + 32 (s & 1) + l] >> 4 (s >> 1)) & 15 and high
 *                    bits (qh[32 h + l] >> 2 s) & 3; group g = e / 16: w = (q - 32) (d sc_g)
 */
#ifndef QLORA_GGML_BLOCKS_H
#define QLORA_GGML_BLOCKS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "formats.h"

/* ---- fp16 and bf16 ---- */

static inline float qt_bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t qt_f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* IEEE binary16 to binary32, exact; a NaN keeps its sign and payload and comes out quiet,
 * as from F16C's vcvtph2ps and ggml's ggml_compute_fp16_to_fp32. */
static inline float qt_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = h >> 10 & 31u, m = h & 0x3ffu;
    if (e == 0) /* zero or subnormal: m 2^-24, exact in binary32 */
        return qt_bits_to_f32(sign | qt_f32_to_bits((float)m * 0x1p-24f));
    if (e == 31)
        return qt_bits_to_f32(sign | 0x7f800000u | m << 13 | (m ? 0x400000u : 0));
    return qt_bits_to_f32(sign | (e + 112) << 23 | m << 13);
}

/* binary32 to binary16, rounding to nearest even (ggml's GGML_FP32_TO_FP16 on finite
 * values; NaN becomes ggml's 0x7e00 with the sign). */
static inline uint16_t qt_f32_to_f16(float f)
{
    uint32_t x = qt_f32_to_bits(f), sign = x >> 16 & 0x8000u;
    x &= 0x7fffffffu;
    if (x > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (x >= 0x477ff000u) /* 65520 and up round to infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (x < 0x38800000u) /* below 2^-14: a subnormal, |f| 2^24 rounded to an integer (exact
                            scaling; rintf rounds to even), 0x400 being the smallest normal */
        return (uint16_t)(sign | (uint32_t)rintf(qt_bits_to_f32(x) * 0x1p24f));
    uint32_t h = ((x >> 23) - 112) << 10 | (x & 0x7fffffu) >> 13, rest = x & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1)))
        h++; /* a carry into the exponent is the right result */
    return (uint16_t)(sign | h);
}

static inline float qt_bf16_to_f32(uint16_t h)
{
    return qt_bits_to_f32((uint32_t)h << 16);
}

/* binary32 to bfloat16, nearest even; a NaN is made quiet (ggml_compute_fp32_to_bf16). */
static inline uint16_t qt_f32_to_bf16(float f)
{
    uint32_t u = qt_f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(u >> 16 | 64);
    return (uint16_t)((u + (0x7fffu + (u >> 16 & 1))) >> 16);
}

static inline uint16_t qt_load_u16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint32_t qt_load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float qt_load_f16(const uint8_t *p) { return qt_f16_to_f32(qt_load_u16(p)); }

/* ---- blocks ---- */

#define QT_GGML_MAX_GROUPS 16 /* groups of a block: q6_k's 16 of 16 values */

/* Values per group of one scale and bias. */
static inline int ggml_group(int fmt)
{
    return fmt == QT_Q6_K ? 16 : 32;
}

/* +1: w = q s + b; -1: w = q s - b; 0: w = q s. */
static inline int ggml_bias_sign(int fmt)
{
    return fmt == QT_Q4_1 || fmt == QT_Q5_1 ? 1 : fmt == QT_Q4_K || fmt == QT_Q5_K ? -1 : 0;
}

/* The K-quants' j-th 6-bit scale and min (ggml's get_scale_min_k4): j < 4 in the low 6
 * bits of bytes j and j + 4, j >= 4 in the nibbles of byte j + 4 and the top 2 bits of
 * bytes j - 4 and j. */
static inline void ggml_scale_min_k4(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | (q[j - 4] >> 6) << 4;
        *m = (q[j + 4] >> 4) | (q[j] >> 6) << 4;
    }
}

/* Scale s[g] and bias b[g] of every group g of the block at blk. */
static inline void ggml_block_consts(int fmt, const uint8_t *blk, float *s, float *b)
{
    switch (fmt) {
    case QT_Q8_0: case QT_Q4_0: case QT_Q5_0:
        s[0] = qt_load_f16(blk);
        b[0] = 0;
        break;
    case QT_Q4_1: case QT_Q5_1:
        s[0] = qt_load_f16(blk);
        b[0] = qt_load_f16(blk + 2);
        break;
    case QT_Q4_K: case QT_Q5_K: {
        const float d = qt_load_f16(blk), dmin = qt_load_f16(blk + 2);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            ggml_scale_min_k4(j, blk + 4, &sc, &m);
            s[j] = d * (float)sc;
            b[j] = dmin * (float)m;
        }
        break;
    }
    case QT_Q6_K: {
        const float d = qt_load_f16(blk + 208);
        for (int g = 0; g < 16; g++) {
            s[g] = d * (float)(int8_t)blk[192 + g];
            b[g] = 0;
        }
        break;
    }
    default:
        break;
    }
}

/* The integer code of value e of the block, offset as the formula above has it (q - 8 for
 * q4_0 and so on), so that w = q s [+- b]. */
static inline int ggml_code(int fmt, const uint8_t *blk, int e)
{
    switch (fmt) {
    case QT_Q8_0:
        return (int8_t)blk[2 + e];
    case QT_Q4_0: case QT_Q4_1: {
        const uint8_t *qs = blk + (fmt == QT_Q4_0 ? 2 : 4);
        int q = e < 16 ? qs[e] & 15 : qs[e - 16] >> 4;
        return fmt == QT_Q4_0 ? q - 8 : q;
    }
    case QT_Q5_0: case QT_Q5_1: {
        const uint8_t *qh = blk + (fmt == QT_Q5_0 ? 2 : 4), *qs = qh + 4;
        int q = (e < 16 ? qs[e] & 15 : qs[e - 16] >> 4) | (int)(qt_load_u32(qh) >> e & 1) << 4;
        return fmt == QT_Q5_0 ? q - 16 : q;
    }
    case QT_Q4_K:
        return blk[16 + e / 64 * 32 + e % 32] >> (e / 32 % 2 * 4) & 15;
    case QT_Q5_K:
        return (blk[48 + e / 64 * 32 + e % 32] >> (e / 32 % 2 * 4) & 15) |
               (blk[16 + e % 32] >> (e / 32) & 1) << 4;
    case QT_Q6_K: {
        int h = e / 128, sub = e / 32 % 4, l = e % 32;
        int lo = blk[64 * h + 32 * (sub & 1) + l] >> (4 * (sub >> 1)) & 15;
        int hi = blk[128 + 32 * h + l] >> (2 * sub) & 3;
        return (lo | hi << 4) - 32;
    }
    default:
        return 0;
    }
}

/* One weight from its code and its group's constants. */
static inline float ggml_weight(int fmt, int q, float s, float b)
{
    float w = (float)q * s;
    int sign = ggml_bias_sign(fmt);
    return sign > 0 ? w + b : sign < 0 ? w - b : w;
}

/* Quantizes a row of cols values (a multiple of the block) into ggml's blocks, bit for bit
 * as ggml's quantize_row_*_ref (ggml_quantize_chunk without an importance matrix). */
void qt_ggml_quantize_row(int fmt, const float *x, int cols, uint8_t *out);

#endif
