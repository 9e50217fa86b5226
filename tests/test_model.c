/* test_model.c: the model against the known outputs of ../shared/models/README.md:
 * greedy text, equal logits from both layouts, perplexities per format; and bad input.
 * argv[1] is the shared directory. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generate.h"
#include "model.h"
#include "tap.h"
#include "tokenizer.h"

static char shared[4096];

static int load(llama_model *m, const char *name, qt_format f)
{
    char dir[4300], err[1024];
    snprintf(dir, sizeof dir, "%s/models/%s", shared, name);
    if (llama_load(m, dir, qt_spec_default(f), err, sizeof err) < 0) {
        printf("# %s\n", err);
        return -1;
    }
    return 0;
}

static tok_tokenizer *tokenizer(void)
{
    char dir[4300], err[1024];
    tok_tokenizer *t;
    snprintf(dir, sizeof dir, "%s/models/stories260K", shared);
    if (tok_load_dir(&t, dir, 512, err, sizeof err) < 0) {
        printf("# %s\n", err);
        return NULL;
    }
    return t;
}

static const char *const greedy_text[2] = {
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nL",
    "once upon a time, there was a little girl named lily. she loved to play with her toys and eat "
    "candy. one day, she went to the park with her mommy. they saw a big tree with lots",
};
static const char *const model_names[2] = {"stories260K", "tinystories6M"};

static void test_greedy(tok_tokenizer *tok)
{
    for (int i = 0; i < 2; i++)
        for (int hf = 0; hf < 2; hf++) {
            char name[64];
            snprintf(name, sizeof name, "%s%s", model_names[i], hf ? "-hf" : "");
            llama_model m;
            int ok = load(&m, name, QT_F32) == 0;
            CHECK(ok, "load %s", name);
            if (ok) {
                int bos = tok_bos_id(tok), out[63], n = 0;
                llama_sampling s = {0, 0, 0, NULL, 0};
                s.stop = tok_stop_ids(tok, &s.n_stop);
                char err[256];
                CHECK(llama_generate(&m, NULL, &bos, 1, 63, &s, NULL, NULL, out, &n, err, sizeof err) == 0,
                      "%s", err);
                char *text = tok_decode_all(tok, bos, out, (size_t)n);
                CHECK(n == 63, "%d tokens", n);
                CHECK(text && strcmp(text, greedy_text[i]) == 0, "%s greedy text:\n# %s", name,
                      text ? text : "(null)");
                free(text);
                llama_free(&m);
            }
            test_case("greedy 63 tokens of %s (f32) equal the reference text", name);
        }
}

static void test_layouts_agree(void)
{
    const int tokens[12] = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315};
    const qt_format formats[3] = {QT_F32, QT_NF4, QT_TERNARY};
    for (int i = 0; i < 2; i++)
        for (int f = 0; f < 3; f++) {
            llama_model a, b;
            char hf[64];
            snprintf(hf, sizeof hf, "%s-hf", model_names[i]);
            int ok = load(&a, model_names[i], formats[f]) == 0;
            ok = (load(&b, hf, formats[f]) == 0) && ok;
            CHECK(ok, "load both layouts");
            if (ok) {
                llama_acts x, y;
                llama_cache cx, cy;
                CHECK(llama_cache_alloc(&cx, &a.cfg, 1, 12) == 0 && llama_cache_alloc(&cy, &b.cfg, 1, 12) == 0 &&
                          llama_acts_alloc(&x, &a.cfg, 1, 12, 12, 0, 0) == 0 && llama_acts_alloc(&y, &b.cfg, 1, 12, 12, 0, 0) == 0,
                      "alloc");
                llama_forward(&a, NULL, &x, &cx, tokens, 1, 12, 0, LLAMA_INFER);
                llama_forward(&b, NULL, &y, &cy, tokens, 1, 12, 0, LLAMA_INFER);
                CHECK(memcmp(x.logits, y.logits, 12 * 512 * sizeof(float)) == 0,
                      "logits differ between layouts");
                CHECK(a.fingerprint == b.fingerprint, "fingerprints differ");
                llama_acts_free(&x), llama_acts_free(&y), llama_cache_free(&cx), llama_cache_free(&cy);
            }
            if (ok) {
                llama_free(&a);
                llama_free(&b);
            }
            test_case("%s: llama2.c and Hugging Face layouts give identical %s logits", model_names[i],
                      qt_format_name(formats[f]));
        }
}

/* The README's token set: the first 16 paragraphs of tinystories_valid.txt longer than 300
 * characters, stripped, encoded with BOS, cut to 128 tokens. */
static int readme_token_set(tok_tokenizer *tok, int *seqs[16], size_t lens[16])
{
    char path[4300];
    snprintf(path, sizeof path, "%s/data/tinystories_valid.txt", shared);
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    static char text[400000];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    int found = 0;
    char *p = text;
    while (found < 16 && *p) {
        char *end = strstr(p, "\n\n");
        char *stop = end ? end : p + strlen(p);
        char *a = p, *b = stop;
        while (a < b && strchr(" \t\n\r", *a))
            a++;
        while (b > a && strchr(" \t\n\r", b[-1]))
            b--;
        if (b - a > 300) {
            int *ids;
            size_t m;
            if (tok_encode(tok, a, (size_t)(b - a), TOK_ADD_SPECIAL, &ids, &m) < 0)
                return -1;
            seqs[found] = ids;
            lens[found++] = m < 128 ? m : 128;
        }
        p = end ? end + 2 : stop;
    }
    return found == 16 ? 0 : -1;
}

static void test_perplexity(tok_tokenizer *tok)
{
    int *seqs[16] = {0};
    size_t lens[16];
    int ok = readme_token_set(tok, seqs, lens) == 0;
    CHECK(ok, "token set");
    size_t total = 0;
    for (int i = 0; ok && i < 16; i++)
        total += lens[i] - 1;
    const int first[24] = {1, 272, 420, 287, 351, 328, 353, 432, 259, 288, 343, 278,
                           411, 295, 416, 266, 351, 262, 287, 316, 369, 419, 364, 300};
    CHECK(ok && total == 2032 && memcmp(seqs[0], first, sizeof first) == 0,
          "token set: %zu predicted positions", total);
    test_case("the README's evaluation token set (2032 predicted positions)");
    if (!ok)
        return;
    static const struct {
        int model;
        qt_format f;
        double nll;
    } known[] = {
        {0, QT_F32, 5042.3457}, {0, QT_NF4, 5384.8466}, {0, QT_INT8, 5045.9298},
        {0, QT_TERNARY, 13143.8516}, {1, QT_F32, 3274.8376}, {1, QT_NF4, 3299.1407},
        {1, QT_INT8, 3274.6085}, {1, QT_TERNARY, 7348.6372},
    };
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) {
        llama_model m;
        double nll = 0;
        size_t np = 0;
        char err[256];
        if (load(&m, model_names[known[k].model], known[k].f) == 0) {
            CHECK(llama_eval(&m, NULL, (const int *const *)seqs, lens, 16, &nll, &np, err, sizeof err) == 0,
                  "%s", err);
            llama_free(&m);
        }
        /* the reference ran PyTorch in float32: sums in another order, so 2e-6 relative */
        CHECK(np == 2032 && fabs(nll - known[k].nll) < 2e-6 * known[k].nll,
              "nll_sum %.4f, expected %.4f", nll, known[k].nll);
        test_case("%s %s: nll_sum %.4f (reference %.4f), ppl %.5f", model_names[known[k].model],
                  qt_format_name(known[k].f), nll, known[k].nll, exp(nll / 2032));
    }
    /* Every format on both models: the ordering must be plausible (int8 within 0.5% of
     * f32; the 4-bit formats above f32; every 4-bit format below the 1- and 2-bit ones). */
    for (int mi = 0; mi < 2; mi++) {
        double ppl[QT_NFORMATS] = {0};
        for (int f = 0; f < QT_NFORMATS; f++) {
            llama_model m;
            double nll = 0;
            size_t np = 0;
            char err[256];
            if (load(&m, model_names[mi], f) == 0) {
                CHECK(llama_eval(&m, NULL, (const int *const *)seqs, lens, 16, &nll, &np, err, sizeof err) == 0,
                      "%s", err);
                llama_free(&m);
            }
            ppl[f] = exp(nll / 2032);
            printf("# %s %-8s ppl %.5f\n", model_names[mi], qt_format_name(f), ppl[f]);
        }
        CHECK(fabs(ppl[QT_INT8] / ppl[QT_F32] - 1) < 0.005, "int8 %g vs f32 %g", ppl[QT_INT8], ppl[QT_F32]);
        const qt_format four[3] = {QT_NF4, QT_FP4, QT_INT4}, low[2] = {QT_BITNET1, QT_TERNARY};
        for (int a = 0; a < 3; a++) {
            CHECK(ppl[four[a]] > ppl[QT_F32], "%s below f32", qt_format_name(four[a]));
            for (int b = 0; b < 2; b++)
                CHECK(ppl[four[a]] < ppl[low[b]], "%s above %s", qt_format_name(four[a]),
                      qt_format_name(low[b]));
        }
        test_case("%s: perplexity of every format in a plausible order (table above)", model_names[mi]);
    }
    for (int i = 0; i < 16; i++)
        free(seqs[i]);
}

static void test_bad_input(void)
{
    llama_model m;
    if (load(&m, "stories260K", QT_F32) < 0) {
        CHECK(0, "load");
        test_case("bad token input");
        return;
    }
    char err[256] = "";
    double nll = 0;
    size_t np = 0;
    int big[2] = {1, 512}, neg[2] = {1, -3}, one[1] = {1};
    const int *s1[1] = {big}, *s2[1] = {neg}, *s3[1] = {one};
    size_t two = 2, len1 = 1;
    CHECK(llama_eval(&m, NULL, s1, &two, 1, &nll, &np, err, sizeof err) < 0 && strstr(err, "512"), "%s", err);
    CHECK(llama_eval(&m, NULL, s2, &two, 1, &nll, &np, err, sizeof err) < 0 && strstr(err, "-3"), "%s", err);
    CHECK(llama_eval(&m, NULL, s3, &len1, 1, &nll, &np, err, sizeof err) < 0 && strstr(err, "at least 2"), "%s", err);
    int *longseq = calloc(600, sizeof(int));
    const int *s4[1] = {longseq};
    size_t len600 = 600;
    CHECK(llama_eval(&m, NULL, s4, &len600, 1, &nll, &np, err, sizeof err) < 0 && strstr(err, "seq_len"), "%s", err);
    int out[4], n;
    llama_sampling s = {0, 0, 0, NULL, 0};
    CHECK(llama_generate(&m, NULL, one, 0, 4, &s, NULL, NULL, out, &n, err, sizeof err) < 0 && strstr(err, "empty"),
          "%s", err);
    free(longseq);
    llama_free(&m);
    test_case("token ids out of range, sequences too short or longer than seq_len, empty prompt: "
              "clear errors");
}

int main(int argc, char **argv)
{
    snprintf(shared, sizeof shared, "%s", argc > 1 ? argv[1] : "../shared");
    tok_tokenizer *tok = tokenizer();
    CHECK(tok != NULL, "tokenizer");
    test_case("load the tokenizer");
    if (tok) {
        test_greedy(tok);
        test_perplexity(tok);
        tok_free(tok);
    }
    test_layouts_agree();
    test_bad_input();
    return tap_done();
}
