/* kernels_avx2.c: kernels_body.h over AVX2 + FMA (built with -mavx2 -mfma). */
#include "simd_avx2.h"
#include "kernels_body.h"
