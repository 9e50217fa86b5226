/* kernels_avx512.c: kernels_body.h over AVX-512 (built with -mavx512f -mavx512bw ...). */
#include "simd_avx512.h"
#include "kernels_body.h"
