/* generate.c: see generate.h. */
#include "generate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float random_unit(uint64_t *state) /* xorshift64*, as llama2.c's sampler */
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (float)((*state * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

typedef struct {
    float p;
    int id;
} prob_id;

static int by_prob_desc(const void *a, const void *b)
{
    const prob_id *x = a, *y = b;
    return x->p < y->p ? 1 : x->p > y->p ? -1 : x->id - y->id;
}

int llama_sample(float *logits, int V, const llama_sampling *s, uint64_t *rng)
{
    if (s->temperature <= 0)
        return argmax(logits, V);
    float max = logits[argmax(logits, V)], sum = 0;
    for (int i = 0; i < V; i++) {
        logits[i] = expf((logits[i] - max) / s->temperature);
        sum += logits[i];
    }
    for (int i = 0; i < V; i++)
        logits[i] /= sum;
    float coin = random_unit(rng);
    if (s->top_p > 0 && s->top_p < 1) {
        prob_id *order = malloc((size_t)V * sizeof *order);
        if (order) {
            for (int i = 0; i < V; i++)
                order[i] = (prob_id){logits[i], i};
            qsort(order, (size_t)V, sizeof *order, by_prob_desc);
            float mass = 0;
            int last = V - 1;
            for (int i = 0; i < V; i++) {
                mass += order[i].p;
                if (mass > s->top_p) {
                    last = i;
                    break;
                }
            }
            float r = coin * mass, cdf = 0;
            int pick = order[last].id;
            for (int i = 0; i <= last; i++) {
                cdf += order[i].p;
                if (r < cdf) {
                    pick = order[i].id;
                    break;
                }
            }
            free(order);
            return pick;
        }
        /* out of memory: fall through to the full distribution */
    }
    float cdf = 0;
    for (int i = 0; i < V; i++) {
        cdf += logits[i];
        if (coin < cdf)
            return i;
    }
    return V - 1;
}

int llama_generate(const llama_model *m, const llama_lora *ad, const int *prompt, int n_prompt, int max_new,
                   const llama_sampling *s, llama_token_fn fn, void *ctx, int *out, int *n_out,
                   char *err, size_t errlen)
{
    const llama_config *c = &m->cfg;
    *n_out = 0;
    if (llama_check_tokens(c, prompt, (size_t)n_prompt, err, errlen) < 0)
        return -1;
    if (max_new < 0) {
        snprintf(err, errlen, "max_tokens: %d is negative", max_new);
        return -1;
    }
    llama_cache cache;
    llama_acts prefill, step;
    /* the cache and the attention rows hold what this request can reach, not the model's
     * whole context (Llama 3.2's 131072 positions would be 8 GiB of cache per request) */
    long reach = (long)n_prompt + max_new;
    int S = reach < c->seq_len ? (int)reach : c->seq_len;
    memset(&prefill, 0, sizeof prefill);
    memset(&step, 0, sizeof step);
    if (llama_cache_alloc(&cache, c, 1, S) < 0) {
        snprintf(err, errlen, "out of memory for the KV cache");
        return -1;
    }
    int rc = -1;
    uint64_t rng = s->seed ? s->seed : 0x9E3779B97F4A7C15ull;
    int rank = ad ? ad->rank : 0;
    if (llama_acts_alloc(&prefill, c, 1, n_prompt, S, rank, 0) < 0 ||
        llama_acts_alloc(&step, c, 1, 1, S, rank, 0) < 0) {
        snprintf(err, errlen, "out of memory for activations");
        goto done;
    }
    if (llama_forward(m, ad, &prefill, &cache, prompt, 1, n_prompt, 0, LLAMA_INFER) < 0) {
        snprintf(err, errlen, "out of memory in the forward pass");
        goto done;
    }
    float *logits = prefill.logits + (size_t)(n_prompt - 1) * c->vocab_size;
    int pos = n_prompt;
    while (*n_out < max_new) {
        int next = llama_sample(logits, c->vocab_size, s, &rng);
        size_t k = 0;
        while (k < s->n_stop && s->stop[k] != next)
            k++;
        if (k < s->n_stop)
            break;
        out[(*n_out)++] = next;
        if ((fn && fn(ctx, next)) || pos >= S)
            break;
        if (llama_forward(m, ad, &step, &cache, &next, 1, 1, pos++, LLAMA_INFER) < 0) {
            snprintf(err, errlen, "out of memory in the forward pass");
            goto done;
        }
        logits = step.logits;
    }
    rc = 0;
done:
    llama_acts_free(&prefill);
    llama_acts_free(&step);
    llama_cache_free(&cache);
    return rc;
}

int llama_eval(const llama_model *m, const llama_lora *ad, const int *const *seqs, const size_t *lens, size_t n_seqs,
               double *nll_sum, size_t *n_predicted, char *err, size_t errlen)
{
    const llama_config *c = &m->cfg;
    size_t longest = 0;
    for (size_t i = 0; i < n_seqs; i++) {
        char why[200];
        if (lens[i] < 2) {
            snprintf(err, errlen, "tokens[%zu]: a sequence needs at least 2 tokens, got %zu", i, lens[i]);
            return -1;
        }
        if (llama_check_tokens(c, seqs[i], lens[i], why, sizeof why) < 0) {
            snprintf(err, errlen, "tokens[%zu]: %s", i, why + strlen("tokens: "));
            return -1;
        }
        if (lens[i] > longest)
            longest = lens[i];
    }
    llama_acts a;
    llama_cache cache;
    memset(&a, 0, sizeof a);
    if (llama_cache_alloc(&cache, c, 1, (int)longest) < 0 ||
        llama_acts_alloc(&a, c, 1, (int)longest, (int)longest, ad ? ad->rank : 0, 0) < 0) {
        llama_cache_free(&cache);
        snprintf(err, errlen, "out of memory for activations of %zu tokens", longest);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < n_seqs && rc == 0; i++) {
        int T = (int)lens[i];
        /* a shorter sequence still attends over a cache of `longest` positions; the
         * positions past its own length are never read */
        if (llama_forward(m, ad, &a, &cache, seqs[i], 1, T, 0, LLAMA_INFER) < 0) {
            snprintf(err, errlen, "out of memory in the forward pass");
            rc = -1;
            break;
        }
        for (int t = 0; t + 1 < T; t++) {
            const float *lg = a.logits + (size_t)t * c->vocab_size;
            double max = lg[0], sum = 0;
            for (int v = 1; v < c->vocab_size; v++)
                max = lg[v] > max ? lg[v] : max;
            for (int v = 0; v < c->vocab_size; v++)
                sum += exp(lg[v] - max);
            *nll_sum += -(lg[seqs[i][t + 1]] - max - log(sum));
        }
        *n_predicted += (size_t)T - 1;
    }
    llama_acts_free(&a);
    llama_cache_free(&cache);
    return rc;
}

int llama_eval_window(const llama_config *c)
{
    return c->seq_len < 2048 ? c->seq_len : 2048;
}

int llama_eval_stream(const llama_model *m, const llama_lora *ad, const int *ids, size_t n, int seq_len,
                      double *nll_sum, size_t *n_predicted, char *err, size_t errlen)
{
    size_t room = n / (size_t)seq_len + 1, used = 0;
    const int **seqs = malloc(room * sizeof *seqs);
    size_t *lens = malloc(room * sizeof *lens);
    *nll_sum = 0, *n_predicted = 0;
    if (!seqs || !lens) {
        free(seqs), free(lens);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i + 1 < n; i += (size_t)seq_len) {
        seqs[used] = ids + i;
        lens[used++] = n - i < (size_t)seq_len ? n - i : (size_t)seq_len;
    }
    int rc = llama_eval(m, ad, seqs, lens, used, nll_sum, n_predicted, err, errlen);
    free(seqs);
    free(lens);
    return rc < 0 ? -1 : (int)used;
}
