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

/* The formats, one row each; their numbers (the order of the rows) are stable.
 *   f32      no quantization: the reference
 *   nf4      bitsandbytes NormalFloat4, absmax per block, optional double quant
 *   fp4      bitsandbytes FP4 (e2m1 table), same blocking
 *   int8     symmetric absmax per block, round to nearest even
 *   int4     asymmetric affine per block: scale and zero point
 *   bitnet1  BitNet: sign of (W - mean W) times mean |W|, per row
 *   ternary  BitNet b1.58: absmean ternary {-1, 0, 1} per row
 *   q8_0 .. q6_k, f16, bf16: ggml's tensor types, each in ggml's own block layout (a row is
 *            its ggml blocks one after another, as in a GGUF file), so that a GGUF tensor
 *            is used in place (qt_from_ggml); QT_GGML_TYPES below says which is which
 * The columns, read by quant/formats.h (qt_traits[], checked there at compile time):
 *   bits     bits of one weight's code in one plane (32, 16, 8, 4 or 1; ggml's quantized
 *            types: the bits of a code, 4 to 8, however ggml packs them)
 *   planes   bit planes per code: ternary keeps a "+1" and a "-1" plane
 *   layout   ROWS: codes row after row; PANEL: 16 rows interleaved word by word (data)
 *   block    1: each block of `block` columns of a row has its own scale; 0: per row, or none
 *   scale    what qt_matrix.scale holds: NONE, ABSMAX (nf4, fp4), STEP (int8), AFFINE (S,
 *            with Z in `zero`), ROW (one value per row), GGML (nothing: ggml's blocks hold
 *            their own fp16 scales, and spec.block is ggml's block, 32 or 256)
 *   dq       1: the block absmax values may be double-quantized, and are by default
 *   table    the 16 values a 4-bit code indexes, or NULL
 *   codec    names the format's scalar definition in quantize.c: quantize_<codec>_row and
 *            decode_<codec>
 * docs/quantization.md ("Adding a format") says what a new row needs beside itself. */
#define QT_FORMATS(X)                                                                     \
    /* id         name     bits planes layout block scale   dq table         codec */      \
    X(QT_F32,     f32,     32,  1,     ROWS,  0,    NONE,   0, NULL,         f32)          \
    X(QT_NF4,     nf4,     4,   1,     PANEL, 1,    ABSMAX, 1, qt_nf4_table, bnb4)         \
    X(QT_FP4,     fp4,     4,   1,     PANEL, 1,    ABSMAX, 1, qt_fp4_table, bnb4)         \
    X(QT_INT8,    int8,    8,   1,     ROWS,  1,    STEP,   0, NULL,         int8)         \
    X(QT_INT4,    int4,    4,   1,     ROWS,  1,    AFFINE, 0, NULL,         int4)         \
    X(QT_BITNET1, bitnet1, 1,   1,     PANEL, 0,    ROW,    0, NULL,         bitnet1)      \
    X(QT_TERNARY, ternary, 1,   2,     PANEL, 0,    ROW,    0, NULL,         ternary)      \
    X(QT_Q8_0,    q8_0,    8,   1,     ROWS,  1,    GGML,   0, NULL,         ggml)         \
    X(QT_Q4_0,    q4_0,    4,   1,     ROWS,  1,    GGML,   0, NULL,         ggml)         \
    X(QT_Q4_1,    q4_1,    4,   1,     ROWS,  1,    GGML,   0, NULL,         ggml)         \
    X(QT_Q5_0,    q5_0,    5,   1,     ROWS,  1,    GGML,   0, NULL,         ggml)         \
    X(QT_Q5_1,    q5_1,    5,   1,     ROWS,  1,    GGML,   0, NULL,         ggml)         \
    X(QT_Q4_K,    q4_k,    4,   1,     ROWS,  1,    GGML,   0, NULL,         ggml)         \
    X(QT_Q5_K,    q5_k,    5,   1,     ROWS,  1,    GGML,   0, NULL,         ggml)         \
    X(QT_Q6_K,    q6_k,    6,   1,     ROWS,  1,    GGML,   0, NULL,         ggml)         \
    X(QT_F16,     f16,     16,  1,     ROWS,  0,    NONE,   0, NULL,         f16)          \
    X(QT_BF16,    bf16,    16,  1,     ROWS,  0,    NONE,   0, NULL,         bf16)

#define QT_FORMAT_ENUM_(id, ...) id,
typedef enum { QT_FORMATS(QT_FORMAT_ENUM_) QT_NFORMATS } qt_format;
#undef QT_FORMAT_ENUM_

/* ggml's tensor types that qlorad runs, one row each: the format that holds the type,
 * ggml's name and number (enum ggml_type in ggml.h), and its block: values and bytes.
 * The formats keep ggml's bytes unchanged; docs/quantization.md (ggml's types) gives each
 * block's layout and formula. */
#define QT_GGML_TYPES(X)                                                                  \
    /* format   name  id  values bytes */                                                  \
    X(QT_F32,   F32,  0,  1,     4)                                                          \
    X(QT_F16,   F16,  1,  1,     2)                                                          \
    X(QT_Q4_0,  Q4_0, 2,  32,    18)                                                         \
    X(QT_Q4_1,  Q4_1, 3,  32,    20)                                                         \
    X(QT_Q5_0,  Q5_0, 6,  32,    22)                                                         \
    X(QT_Q5_1,  Q5_1, 7,  32,    24)                                                         \
    X(QT_Q8_0,  Q8_0, 8,  32,    34)                                                         \
    X(QT_Q4_K,  Q4_K, 12, 256,   144)                                                        \
    X(QT_Q5_K,  Q5_K, 13, 256,   176)                                                        \
    X(QT_Q6_K,  Q6_K, 14, 256,   210)                                                        \
    X(QT_BF16,  BF16, 30, 1,     2)

/* ggml's type ids, as in ggml.h's enum ggml_type (numeric values must match). */
#define QT_GGML_ENUM_(format, name, id, ...) QT_GGML_##name = id,
typedef enum { QT_GGML_TYPES(QT_GGML_ENUM_) } qt_ggml_type;
#undef QT_GGML_ENUM_

#define QT_BLOCK_DEFAULT 64
#define QT_BLOCK_MIN 32
#define QT_BLOCK_MAX 4096
#define QT_DQ_GROUP 256 /* absmax values per group in double quantization */
#define QT_PANEL 16     /* rows interleaved in the codes of the PANEL formats */

/* How to quantize: format, block size, double quantization (formats with dq only). The
 * ggml formats have ggml's block (32 or 256) and no other. */
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
    uint8_t *data;          /* codes (or fp32 values for f32): row after row for the ROWS
                               formats; the PANEL formats interleave 16 rows word by word
                               (docs/quantization.md, Panel layout) */
    float *scale;           /* what the format's `scale` column says: per block (ABSMAX
                               without dq: absmax; STEP: int8's step; AFFINE: int4's S), or
                               per row (ROW: bitnet1's beta, ternary's 1/s); block-wise
                               PANEL formats keep the 16 rows of a panel side by side
                               (quant/formats.h, qt_block_slot); NULL for f32 and with dq */
    int32_t *zero;          /* AFFINE: zero point per block */
    uint8_t *qabsmax;       /* with dq: 8-bit code of (absmax - offset) per block, where
                               scale would have it */
    float *absmax2;         /* with dq: one fp32 absmax per group of 256 blocks */
    float offset;           /* with dq: mean of the block absmax values */
    int borrowed;           /* 1: every array belongs to someone else (a mapped GGUF file,
                               by qt_from_ggml; a model cache file, by qt_view) and
                               outlives the matrix; qt_free leaves them */
} qt_matrix;

/* The arrays of a matrix, in the order code that stores matrices keeps them (the model
 * cache, model/model_cache.c). */
#define QT_ARRAYS(X) X(DATA, data) X(SCALE, scale) X(ZERO, zero) X(QABSMAX, qabsmax) X(ABSMAX2, absmax2)
#define QT_ARRAY_ENUM_(e, field) QT_ARRAY_##e,
typedef enum { QT_ARRAYS(QT_ARRAY_ENUM_) QT_NARRAYS } qt_array;
#undef QT_ARRAY_ENUM_

/* The version of the bytes qt_quantize writes for the same input: bumped whenever a
 * format's layout (arrays, order, padding) or its quantization changes, so that stored
 * matrices (the model cache) of another version are not read as this one's. */
#define QT_LAYOUT_VERSION 1

/* ---- formats ---- */
const char *qt_format_name(qt_format f);
/* Every format's name, in order, separated by spaces ("f32 nf4 ... bf16"), for messages. */
const char *qt_format_list(void);
/* Parses a format name; returns -1 (and leaves *f alone) when unknown. */
int qt_format_parse(const char *name, qt_format *f);
/* The default spec of a format: block 64 (ggml's formats: their own block), double quant
 * on where the format has it. */
qt_spec qt_spec_default(qt_format f);
/* Checks a spec; on error writes a one-line message naming the field and returns -1. */
int qt_spec_check(qt_spec spec, char *err, size_t errlen);
/* The 16 values of a 4-bit code table (nf4, fp4), in code order; NULL for other formats. */
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
/* The bytes of each array (QT_ARRAYS order; 0: the format has none) that qt_quantize makes
 * for a rows x cols matrix of spec, and its own padding of data: -1 with a message for a
 * bad spec or shape. */
int qt_array_sizes(qt_spec spec, int rows, int cols, size_t bytes[QT_NARRAYS], char *err, size_t errlen);
/* Array a of m (NULL when it has none). */
const void *qt_array_of(const qt_matrix *m, qt_array a);
/* A borrowed matrix over arrays someone else keeps (a mapped file), each of the bytes
 * qt_array_sizes gives and 64-byte aligned; offset is double quantization's. -1 with a message
 * when the spec, shape or an array does not fit. */
int qt_view(qt_matrix *m, qt_spec spec, int rows, int cols, float offset, const void *const arrays[QT_NARRAYS],
            const size_t bytes[QT_NARRAYS], char *err, size_t errlen);
/* Frees what the matrix owns (nothing when borrowed) and zeroes it. */
void qt_free(qt_matrix *m);
/* Decodes rows [r0, r1) into out[(r1-r0) x cols] (vectorized; bit-identical on every
 * instruction set). */
void qt_dequantize_rows(const qt_matrix *m, int r0, int r1, float *out);
/* Bytes held by the quantized matrix, and bits per parameter including scales. */
size_t qt_bytes(const qt_matrix *m);
double qt_bits_per_param(const qt_matrix *m);

/* ---- ggml's tensors (GGUF) ---- */
/* ggml's name of a type ("Q4_K", ...); NULL if it is not one we run. */
const char *qt_ggml_type_name(int type);
/* Bytes of one row of cols values of type; 0 when the type is not supported or cols is
 * not a multiple of its block. */
size_t qt_ggml_row_bytes(int type, int cols);
/* The format that holds a ggml type (F32: QT_F32); -1 when none does. */
int qt_ggml_format(int type);
/* The ggml type a format's bytes are (for writing GGUF); -1 for qlorad's own formats. */
int qt_format_ggml_type(qt_format f);
/* A rows x cols matrix over len bytes of ggml blocks at data (row-major, as in a GGUF file).
 * borrow != 0: m points into data (which must outlive m); else copies. -1 with a message
 * naming the type/shape at fault. */
int qt_from_ggml(qt_matrix *m, int type, int rows, int cols, const void *data, size_t len,
                 int borrow, char *err, size_t errlen);

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
