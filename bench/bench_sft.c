/* bench_sft: packed SFT against plain-text training at the same shapes, in one run.
 *
 * The same model, hyper-parameters and rows of batch x seq_len token slots; the plain run
 * trains on random windows of a token stream, the SFT run on examples of skewed lengths
 * (most short, a few near a row: a chat dataset's shape), packed (sft.h). Printed: the
 * slots per second of each and their ratio (the block-diagonal mask must not cost more
 * than the padding it saves), and the share of slots that are padding when packed
 * against one example per row. Figures are printed, never asserted.
 *
 * usage: bench_sft [--batch B] [--seq-len T] [--steps N] DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel.h"
#include "train.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best seconds of one step over steps steps, after a warm-up step. */
static double best_step(trainer *t, int steps)
{
    double best = 1e30, loss, norm;
    char err[256];
    for (int s = 0; s <= steps; s++) {
        double t0 = now();
        if (trainer_step(t, &loss, &norm, err, sizeof err) < 0) {
            fprintf(stderr, "bench_sft: %s\n", err);
            exit(1);
        }
        if (s > 0 && now() - t0 < best)
            best = now() - t0;
    }
    return best;
}

int main(int argc, char **argv)
{
    int B = 4, T = 256, steps = 4;
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            B = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seq-len") && i + 1 < argc)
            T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else
            dir = argv[i];
    }
    llama_model m;
    char err[512];
    if (!dir || B < 1 || T < 8 || steps < 1 || llama_load(&m, dir, qt_spec_default(QT_NF4), err, sizeof err) < 0) {
        fprintf(stderr, "usage: bench_sft [--batch B] [--seq-len T] [--steps N] DIR%s%s\n", dir ? ": " : "",
                dir ? err : "");
        return 2;
    }
    T = T < m.cfg.seq_len ? T : m.cfg.seq_len;
    /* the examples: lengths skewed as chat data is (a geometric-like spread, 8 .. T + 1) */
    enum { N_EXAMPLES = 2000 };
    sft_data d = {0};
    size_t lens[N_EXAMPLES], total = 0;
    uint64_t rng = 42;
    for (int e = 0; e < N_EXAMPLES; e++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        double u = (double)(rng >> 11) / 9007199254740992.0;
        lens[e] = 8 + (size_t)((double)(T - 7) * u * u * u); /* most short, a few near a row */
        total += lens[e];
    }
    d.format = SFT_PROMPT_COMPLETION;
    d.ids = malloc(total * sizeof(int));
    d.loss = malloc(total);
    d.offset = malloc((N_EXAMPLES + 1) * sizeof(size_t));
    if (!d.ids || !d.loss || !d.offset)
        return 1;
    for (int e = 0, k = 0; e < N_EXAMPLES; e++) {
        d.offset[e] = (size_t)k;
        for (size_t i = 0; i < lens[e]; i++, k++) {
            d.ids[k] = 3 + (int)((size_t)k * 2654435761u % (size_t)(m.cfg.vocab_size - 3));
            d.loss[k] = i >= lens[e] / 2; /* the second half: the completion */
            d.loss_tokens += d.loss[k];
        }
    }
    d.n = N_EXAMPLES, d.n_tokens = total, d.offset[N_EXAMPLES] = total;

    train_hyper h;
    train_hyper_default(&h, &m.cfg);
    h.batch = B, h.seq_len = T, h.steps = 1000, h.eval_every = h.checkpoint_every = 0;
    trainer plain, packed;
    if (trainer_init(&plain, &m, NULL, d.ids, d.n_tokens, NULL, 0, &h, err, sizeof err) < 0 ||
        trainer_init_sft(&packed, &m, &d, NULL, &h, err, sizeof err) < 0) {
        fprintf(stderr, "bench_sft: %s\n", err);
        return 1;
    }
    double tp = best_step(&plain, steps), ts = best_step(&packed, steps);
    /* padding: slots of rows that no example fills, packed against one example a row */
    int *in = malloc((size_t)B * T * 3 * sizeof(int));
    uint64_t cursor = 0;
    size_t rows = 0;
    sft_order order;
    if (sft_order_init(&order, &d) < 0)
        return 1;
    while (in && cursor < N_EXAMPLES) { /* one epoch, in calls of B rows */
        sft_fill_rows(&d, 1, &cursor, UINT64_MAX, &order, B, T, in, in + (size_t)B * T, in + 2 * (size_t)B * T);
        rows += (size_t)B;
    }
    sft_order_free(&order);
    /* every example's tokens land in some row of T + 1 slots (the last call's spare rows too) */
    double pad_packed = 1.0 - (double)total / ((double)rows * (T + 1));
    double pad_one = 1.0 - (double)total / ((double)N_EXAMPLES * (T + 1));
    printf("bench_sft %s (nf4, LoRA r%d all-linear), batch %d x seq_len %d, %d threads, %d examples of 8..%d "
           "tokens (mean %.0f)\n", dir, h.rank, B, T, rt_threads(), N_EXAMPLES, T + 1, (double)total / N_EXAMPLES);
    printf("  plain text   %8.0f slots/s\n", (double)B * T / tp);
    printf("  packed SFT   %8.0f slots/s   %.3fx plain\n", (double)B * T / ts, tp / ts);
    printf("  padding      %.1f%% of slots packed, %.1f%% with one example a row (%.2fx the rows)\n",
           100 * pad_packed, 100 * pad_one, (double)N_EXAMPLES / rows);
    free(in);
    trainer_free(&plain);
    trainer_free(&packed);
    sft_free(&d);
    llama_free(&m);
    return 0;
}
