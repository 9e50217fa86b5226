/* dispatch.c: picks the kernel variant for this CPU (or QLORA_ISA) and routes calls. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "parallel.h"
#include "workspace.h"

static const char *const isa_names[] = {"scalar", "avx2", "avx512"};
static const qt_kernel_set *const isa_kernels[] = {&qt_kernels_scalar, &qt_kernels_avx2,
                                                    &qt_kernels_avx512};

static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static _Atomic qt_isa active_isa;

const char *qt_isa_name(qt_isa isa)
{
    return (unsigned)isa <= QT_ISA_AVX512 ? isa_names[isa] : "?";
}

int qt_isa_parse(const char *name, qt_isa *isa)
{
    for (int i = 0; i <= QT_ISA_AVX512; i++)
        if (strcmp(name, isa_names[i]) == 0) {
            *isa = (qt_isa)i;
            return 0;
        }
    return -1;
}

qt_isa qt_isa_best(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        return QT_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return QT_ISA_AVX2;
    return QT_ISA_SCALAR;
}

static void init_isa(void)
{
    qt_isa best = qt_isa_best(), want = best;
    const char *env = getenv("QLORA_ISA");
    if (env && *env) {
        if (qt_isa_parse(env, &want) < 0 || want > best) {
            fprintf(stderr, "qlora: QLORA_ISA=%s is not one of scalar, avx2, avx512 this CPU "
                            "supports; using %s\n", env, isa_names[best]);
            want = best;
        }
    }
    atomic_store(&active_isa, want);
}

qt_isa qt_isa_active(void)
{
    pthread_once(&isa_once, init_isa);
    return atomic_load(&active_isa);
}

int qt_isa_set(qt_isa isa)
{
    pthread_once(&isa_once, init_isa);
    if ((unsigned)isa > QT_ISA_AVX512 || isa > qt_isa_best())
        return -1;
    atomic_store(&active_isa, isa);
    return 0;
}

int qt_matmul(const qt_matrix *w, const float *x, int M, float *y, int accumulate)
{
    return isa_kernels[qt_isa_active()]->matmul(w, x, M, y, accumulate);
}

int qt_matmul_t(const qt_matrix *w, const float *dy, int M, float *dx, int accumulate)
{
    return isa_kernels[qt_isa_active()]->matmul_t(w, dy, M, dx, accumulate);
}

void qt_dequantize_rows(const qt_matrix *m, int r0, int r1, float *out)
{
    isa_kernels[qt_isa_active()]->dequantize(m, r0, r1, out);
}

float *qt_scratch(size_t per_thread)
{
    return rt_workspace(RT_WS_DECODE, (size_t)rt_threads() * per_thread * sizeof(float));
}
