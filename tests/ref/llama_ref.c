/* llama_ref.c: llama.cpp itself (the prebuilt libllama of .deps/llama, make setup) as the
 * reference for GGUF files, one subcommand a question:
 *   tokenize MODEL.gguf TEXTFILE... [--no-special] for each file, the ids of
 *                                                  llama_tokenize(add_special, parse_special)
 *                                                  as a JSON array on a line (vocab only)
 *   nll MODEL.gguf THREADS TOKENS.json             for each sequence of TOKENS.json (an array
 *                                                  of arrays of ids), -log p(next token) at
 *                                                  every position: JSON [[...], ...]
 *   quantize IN.gguf OUT.gguf TYPE                 llama_model_quantize (TYPE: Q8_0, Q4_0,
 *                                                  Q4_1, Q5_0, Q5_1, Q4_K_M, Q5_K_M, Q6_K, Q2_K, F16)
 * Log-probabilities are computed in double from llama.cpp's float logits, one context per
 * sequence, logits for every position (llama_batch logits all set), the KV cache f32 and
 * flash attention off (llama.cpp's defaults would round keys and values to f16). llama.cpp's log goes
 * to stderr only on failure (it is kept quiet otherwise). Exit status 0, or 1 with a
 * message on stderr. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "llama.h"

static int verbose;

static void quiet_log(enum ggml_log_level level, const char *text, void *user)
{
    (void)user;
    if (verbose || level == GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            char *b = realloc(buf, 2 * cap + 1);
            if (!b) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = b, cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[n] = 0;
    *len = n;
    return buf;
}

static struct llama_model *load(const char *path, int vocab_only)
{
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.vocab_only = vocab_only;
    struct llama_model *m = llama_model_load_from_file(path, mp);
    if (!m)
        fprintf(stderr, "llama_ref: llama.cpp cannot load %s\n", path);
    return m;
}

static int cmd_tokenize(const char *model_path, char **texts, int n_texts, int parse_special)
{
    struct llama_model *m = load(model_path, 1);
    if (!m)
        return 1;
    const struct llama_vocab *v = llama_model_get_vocab(m);
    int rc = 0;
    for (int k = 0; k < n_texts && rc == 0; k++) {
        size_t len;
        char *text = read_file(texts[k], &len);
        if (!text) {
            fprintf(stderr, "llama_ref: cannot read %s\n", texts[k]);
            rc = 1;
            break;
        }
        int cap = (int)len + 16;
        llama_token *ids = malloc((size_t)cap * sizeof *ids);
        int n = ids ? llama_tokenize(v, text, (int32_t)len, ids, cap, true, parse_special) : -1;
        if (n < 0) {
            fprintf(stderr, "llama_ref: llama_tokenize failed (%d) on %s\n", n, texts[k]);
            rc = 1;
        } else {
            putchar('[');
            for (int i = 0; i < n; i++)
                printf(i ? ",%d" : "%d", ids[i]);
            puts("]");
        }
        free(ids);
        free(text);
    }
    llama_model_free(m);
    return rc;
}

/* The sequences of a JSON array of arrays of non-negative integers (nothing else in it). */
static int parse_tokens(const char *s, int ***seqs, int **lens, int *nseq)
{
    *seqs = NULL, *lens = NULL, *nseq = 0;
    int depth = 0, cur = -1;
    for (const char *p = s; *p; p++) {
        if (*p == '[') {
            if (++depth == 2) {
                int **ns = realloc(*seqs, (size_t)(*nseq + 1) * sizeof *ns);
                int *nl = realloc(*lens, (size_t)(*nseq + 1) * sizeof *nl);
                if (ns)
                    *seqs = ns;
                if (nl)
                    *lens = nl;
                if (!ns || !nl)
                    return -1;
                cur = (*nseq)++;
                (*seqs)[cur] = NULL, (*lens)[cur] = 0;
            }
        } else if (*p == ']') {
            depth--;
        } else if (*p >= '0' && *p <= '9' && depth == 2) {
            char *end;
            long v = strtol(p, &end, 10);
            int *ns = realloc((*seqs)[cur], (size_t)((*lens)[cur] + 1) * sizeof *ns);
            if (!ns)
                return -1;
            (*seqs)[cur] = ns;
            ns[(*lens)[cur]++] = (int)v;
            p = end - 1;
        }
    }
    return depth == 0 ? 0 : -1;
}

static int cmd_nll(const char *model_path, int threads, const char *tokens_path)
{
    size_t len;
    char *text = read_file(tokens_path, &len);
    int **seqs, *lens, nseq, rc = 1;
    if (!text || parse_tokens(text, &seqs, &lens, &nseq) < 0) {
        fprintf(stderr, "llama_ref: cannot read token arrays from %s\n", tokens_path);
        free(text);
        return 1;
    }
    free(text);
    struct llama_model *m = load(model_path, 0);
    if (!m)
        goto done;
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(m));
    putchar('[');
    for (int s = 0; s < nseq; s++) {
        int n = lens[s];
        struct llama_context_params cp = llama_context_default_params();
        cp.n_ctx = (uint32_t)(n < 16 ? 16 : n);
        cp.n_batch = cp.n_ubatch = (uint32_t)(n < 16 ? 16 : n);
        cp.n_threads = cp.n_threads_batch = threads;
        cp.no_perf = true;
        /* fp32 throughout where llama.cpp lets it be chosen: its default KV cache is f16 */
        cp.type_k = cp.type_v = GGML_TYPE_F32;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
        struct llama_context *ctx = llama_init_from_model(m, cp);
        struct llama_batch b = llama_batch_init(n, 0, 1);
        if (!ctx) {
            fprintf(stderr, "llama_ref: llama_init_from_model failed\n");
            llama_batch_free(b);
            goto done_model;
        }
        for (int i = 0; i < n; i++) {
            b.token[i] = seqs[s][i];
            b.pos[i] = i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = 0;
            b.logits[i] = 1;
        }
        b.n_tokens = n;
        if (llama_decode(ctx, b) != 0) {
            fprintf(stderr, "llama_ref: llama_decode failed on sequence %d\n", s);
            llama_batch_free(b);
            llama_free(ctx);
            goto done_model;
        }
        printf(s ? ",[" : "[");
        for (int i = 0; i + 1 < n; i++) {
            const float *lg = llama_get_logits_ith(ctx, i);
            double mx = -INFINITY, sum = 0;
            for (int k = 0; k < n_vocab; k++)
                mx = lg[k] > mx ? lg[k] : mx;
            for (int k = 0; k < n_vocab; k++)
                sum += exp((double)lg[k] - mx);
            printf(i ? ",%.9g" : "%.9g", -((double)lg[seqs[s][i + 1]] - mx - log(sum)));
        }
        putchar(']');
        llama_batch_free(b);
        llama_free(ctx);
    }
    puts("]");
    rc = 0;
done_model:
    llama_model_free(m);
done:
    for (int s = 0; s < nseq; s++)
        free(seqs[s]);
    free(seqs);
    free(lens);
    return rc;
}

static int cmd_quantize(const char *in, const char *out, const char *type)
{
    static const struct {
        const char *name;
        enum llama_ftype ftype;
    } types[] = {
        {"F16", LLAMA_FTYPE_MOSTLY_F16},       {"Q8_0", LLAMA_FTYPE_MOSTLY_Q8_0},
        {"Q4_0", LLAMA_FTYPE_MOSTLY_Q4_0},     {"Q4_1", LLAMA_FTYPE_MOSTLY_Q4_1},
        {"Q5_0", LLAMA_FTYPE_MOSTLY_Q5_0},     {"Q5_1", LLAMA_FTYPE_MOSTLY_Q5_1},
        {"Q4_K_M", LLAMA_FTYPE_MOSTLY_Q4_K_M}, {"Q5_K_M", LLAMA_FTYPE_MOSTLY_Q5_K_M},
        {"Q6_K", LLAMA_FTYPE_MOSTLY_Q6_K},     {"Q2_K", LLAMA_FTYPE_MOSTLY_Q2_K},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(type, types[i].name)) {
            struct llama_model_quantize_params qp = llama_model_quantize_default_params();
            qp.ftype = types[i].ftype;
            qp.nthread = 1;
            if (llama_model_quantize(in, out, &qp) != 0) {
                fprintf(stderr, "llama_ref: llama_model_quantize %s -> %s (%s) failed\n", in, out, type);
                return 1;
            }
            return 0;
        }
    fprintf(stderr, "llama_ref: unknown quantization type %s\n", type);
    return 1;
}

int main(int argc, char **argv)
{
    verbose = getenv("LLAMA_REF_VERBOSE") != NULL;
    llama_log_set(quiet_log, NULL);
    ggml_backend_load_all_from_path(LLAMA_LIB_DIR);
    llama_backend_init();
    int rc = 2;
    if (argc >= 4 && !strcmp(argv[1], "tokenize")) {
        int plain = !strcmp(argv[argc - 1], "--no-special");
        rc = cmd_tokenize(argv[2], argv + 3, argc - 3 - plain, !plain);
    }
    else if (argc == 5 && !strcmp(argv[1], "nll"))
        rc = cmd_nll(argv[2], atoi(argv[3]), argv[4]);
    else if (argc == 5 && !strcmp(argv[1], "quantize"))
        rc = cmd_quantize(argv[2], argv[3], argv[4]);
    else
        fprintf(stderr, "usage: llama_ref tokenize MODEL.gguf TEXTFILE... [--no-special] | nll MODEL.gguf THREADS "
                        "TOKENS.json | quantize IN.gguf OUT.gguf TYPE\n");
    llama_backend_free();
    return rc;
}
