/* quant.h: quantized weight matrices and the fused kernels that multiply by them.
 *
 * A weight matrix W has N rows (output features) of K elements (input features),
 * row-major, as in a Llama linear layer (y = x W^T). Block-wise formats cut every row
 * into blocks of `block` elements; a row whose length is not a multiple of the block
 * ends with a shorter block that has its own statistics. Per-row formats (bitnet1,
 * ternary) keep one or two scalars per row. docs/quantization.md gives every formula.
 *
 * The kernels never expand W to fp32 as a whole: they decode small tiles (or single
 * registers, for matrix-vector products) on the fly. */
#ifndef QLORA_QUANT_H
#define QLORA_QUANT_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    QT_F32 = 0, /* no quantization: the reference */
    QT_NF4,     /* bitsandbytes NormalFloat4, absmax per block, optional double quant */
    QT_FP4,     /* bitsandbytes FP4 (e2m1 table), same blocking */
    QT_INT8,    /* symmetric absmax per block, round to nearest even */
    QT_INT4,    /* asymmetric affine per block: scale and zero point */
    QT_BITNET1, /* BitNet: sign of (W - mean W) times mean |W|, per row */
    QT_TERNARY, /* BitNet b1.58: absmean ternary {-1, 0, 1} per row */
    QT_NFORMATS
} qt_format;

#define QT_BLOCK_DEFAULT 64
#define QT_BLOCK_MIN 32
#define QT_BLOCK_MAX 4096
#define QT_DQ_GROUP 256 /* absmax values per group in double quantization */
#define QT_PANEL 16     /* rows interleaved in the codes of nf4, fp4, bitnet1, ternary */

/* How to quantize: format, block size, double quantization (nf4/fp4 only). */
typedef struct {
    qt_format format;
    int block;
    int double_quant;
} qt_spec;

typedef struct {
    qt_spec spec;
    int rows, cols;         /* N x K */
    int blocks_per_row;     /* ceil(K / block) for block-wise formats, else 1 */
    size_t row_bytes;       /* packed bytes per row in `data` */
    uint8_t *data;          /* codes (or fp32 values for f32), row after row; nf4, fp4,
                               bitnet1 and ternary interleave 16 rows word by word
                               (kernels.h) */
    float *scale;           /* per block: absmax (nf4/fp4 without dq), int8 scale, int4 S;
                               per row: bitnet1 beta, ternary 1/s; nf4/fp4 keep theirs in
                               16-row panels too (qt_block_slot) */
    int32_t *zero;          /* int4: zero point per block */
    uint8_t *qabsmax;       /* nf4/fp4 with dq: 8-bit code of (absmax - offset) per block,
                               in 16-row panels (qt_block_slot) */
    float *absmax2;         /* nf4/fp4 with dq: one fp32 absmax per group of 256 blocks */
    float offset;           /* nf4/fp4 with dq: mean of the block absmax values */
} qt_matrix;

/* ---- formats ---- */
const char *qt_format_name(qt_format f);
/* Parses a format name; returns -1 (and leaves *f alone) when unknown. */
int qt_format_parse(const char *name, qt_format *f);
/* The default spec of a format: block 64, double quant on for nf4/fp4. */
qt_spec qt_spec_default(qt_format f);
/* Checks a spec; on error writes a one-line message naming the field and returns -1. */
int qt_spec_check(qt_spec spec, char *err, size_t errlen);
/* The 16 values of the nf4 or fp4 code table, in code order. */
const float *qt_code_table(qt_format f);
/* bitsandbytes' signed dynamic 8-bit map (256 values, ascending), as its CPU backend
 * uses it for double quantization (first entry -1.0). A table, not a call, so that
 * decoding loops stay free of calls. */
extern const float qt_dynamic_map_table[256];
static inline const float *qt_dynamic_map(void) { return qt_dynamic_map_table; }

/* ---- quantization (load time; scalar, exact) ---- */
/* Quantizes rows x cols fp32 values. Returns 0, or -1 with a message in err
 * (bad spec, bad shape, non-finite input, out of memory). */
int qt_quantize(qt_matrix *m, const float *w, int rows, int cols, qt_spec spec,
                char *err, size_t errlen);
void qt_free(qt_matrix *m);
/* Decodes rows [r0, r1) into out[(r1-r0) x cols] (vectorized; bit-identical on every
 * instruction set). */
void qt_dequantize_rows(const qt_matrix *m, int r0, int r1, float *out);
/* Bytes held by the quantized matrix, and bits per parameter including scales. */
size_t qt_bytes(const qt_matrix *m);
double qt_bits_per_param(const qt_matrix *m);
/* Double quantization's decode of one absmax: its 8-bit code, its group's absmax2 and
 * the matrix offset. */
static inline float qt_dq_absmax(uint8_t q, float absmax2, float offset)
{
    return qt_dynamic_map_table[q] * absmax2 + offset;
}

/* Where block b (row-major block index, which also orders double quantization's groups)
 * of an nf4/fp4 matrix keeps its absmax or its code: the 16 rows of a panel side by side,
 * block after block, as the kernels load them (slot ((r / 16) * blocks_per_row + j) * 16
 * + r % 16 for block j of row r). */
static inline size_t qt_block_slot(const qt_matrix *m, size_t b)
{
    size_t r = b / (size_t)m->blocks_per_row, j = b % (size_t)m->blocks_per_row;
    return ((r / QT_PANEL) * (size_t)m->blocks_per_row + j) * QT_PANEL + r % QT_PANEL;
}

/* The decoded absmax of block b (row-major block index) of an nf4/fp4 matrix. */
static inline float qt_block_absmax(const qt_matrix *m, size_t b)
{
    size_t slot = qt_block_slot(m, b);
    if (!m->spec.double_quant)
        return m->scale[slot];
    return qt_dq_absmax(m->qabsmax[slot], m->absmax2[b / QT_DQ_GROUP], m->offset);
}

/* ---- kernels ---- */
/* Y[M x N] = X[M x K] * W^T, or Y += X W^T when accumulate is nonzero.
 * Both return 0, or -1 when scratch memory cannot be had (Y is then undefined). */
int qt_matmul(const qt_matrix *w, const float *x, int M, float *y, int accumulate);
/* dX[M x K] = dY[M x N] * W, or dX += dY W when accumulate is nonzero
 * (the input gradient of a linear layer). */
int qt_matmul_t(const qt_matrix *w, const float *dy, int M, float *dx, int accumulate);

/* ---- instruction sets ---- */
typedef enum { QT_ISA_SCALAR = 0, QT_ISA_AVX2, QT_ISA_AVX512 } qt_isa;
const char *qt_isa_name(qt_isa isa);
int qt_isa_parse(const char *name, qt_isa *isa);
/* The best the CPU supports (cpuid). */
qt_isa qt_isa_best(void);
/* The one in use: QLORA_ISA=scalar|avx2|avx512 in the environment, else the best. */
qt_isa qt_isa_active(void);
/* Selects an instruction set; returns -1 when the CPU lacks it. */
int qt_isa_set(qt_isa isa);

#endif
