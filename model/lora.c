/* lora.c: adapter layout and dropout masks (see lora.h). */
#include "lora.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int llama_lora_alloc(llama_lora *ad, const llama_config *c, int rank, float alpha, int rslora,
                     unsigned targets, float dropout)
{
    memset(ad, 0, sizeof *ad);
    ad->rank = rank;
    ad->alpha = alpha;
    ad->rslora = rslora;
    ad->scale = rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
    ad->targets = targets;
    ad->dropout = dropout;
    ad->n_layers = c->n_layers;
    ad->offset = malloc((size_t)c->n_layers * LIN_COUNT * sizeof(size_t));
    if (!ad->offset)
        return -1;
    size_t n = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < LIN_COUNT; k++) {
            int out, in;
            llama_linear_shape(c, (llama_linear)k, &out, &in);
            if (targets >> k & 1) {
                ad->offset[l * LIN_COUNT + k] = n;
                n += (size_t)rank * (in + out);
            } else {
                ad->offset[l * LIN_COUNT + k] = LORA_NONE;
            }
        }
    ad->n_params = n;
    ad->params = calloc(n ? n : 1, sizeof(float));
    if (!ad->params) {
        llama_lora_free(ad);
        return -1;
    }
    return 0;
}

void llama_lora_free(llama_lora *ad)
{
    free(ad->offset);
    free(ad->params);
    memset(ad, 0, sizeof *ad);
}

float *llama_lora_b(const llama_lora *ad, const llama_config *c, float *buf, int layer, llama_linear k)
{
    int out, in;
    llama_linear_shape(c, k, &out, &in);
    return buf + ad->offset[layer * LIN_COUNT + k] + (size_t)ad->rank * in;
}

/* splitmix64 finaliser: a well-mixed hash of the element's coordinates */
static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float llama_lora_keep(const llama_lora *ad, int layer, llama_linear k, size_t row, size_t col)
{
    uint64_t h = mix(ad->dropout_seed ^ mix(((uint64_t)layer * LIN_COUNT + k) << 40 ^ row << 20 ^ col));
    double u = (h >> 11) * (1.0 / 9007199254740992.0);
    return u < ad->dropout ? 0.0f : 1.0f / (1.0f - ad->dropout);
}
