/* fuzz_gguf.c: libFuzzer over everything a GGUF file reaches: the parser (gguf_parse, on
 * the input in memory), every typed read of every key, and then, through a memfd standing
 * for a file, the model loader (llama_load in f32 and native: metadata, tensor checks,
 * reads, the q/k permutation, ggml's blocks borrowed) with a two-token eval of the native
 * model, the tokenizer (tok_load: sentencepiece and byte-level vocabularies, the
 * tokenizer.json written out of them) with an encode and decode, and the chat template.
 * Whatever the input, each must return 0 or -1 with a message, never crash or leak.
 *
 * Seeds: tests/fuzz/seeds-gguf (make_gguf_seeds.py). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "chat_template.h"
#include "generate.h"
#include "gguf.h"
#include "model.h"
#include "tokenizer.h"

/* Every value of every key through the typed readers, as a consumer would. */
static void read_all(const gguf_file *f)
{
    for (size_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        int64_t v;
        double d;
        int b;
        gguf_str s;
        (void)gguf_kv_int(kv, INT64_MIN, INT64_MAX, &v);
        (void)gguf_kv_float(kv, &d);
        (void)gguf_kv_bool(kv, &b);
        (void)gguf_kv_str(kv, &s);
        if (kv->type == GGUF_ARRAY && kv->elem == GGUF_STRING && kv->count < (1u << 20)) {
            gguf_str *all = malloc((size_t)kv->count * sizeof *all + 1);
            if (all && gguf_arr_strs(kv, all) == 0 && kv->count)
                (void)all[kv->count - 1].s[all[kv->count - 1].n ? all[kv->count - 1].n - 1 : 0];
            free(all);
        }
        for (uint64_t k = 0; k < kv->count && k < 64; k++)
            (void)gguf_arr_num(kv, k, &d);
        if (gguf_find_kv(f, kv->key) != kv)
            abort(); /* a key is found where it is */
    }
    for (size_t i = 0; i < f->n_tensors; i++)
        if (gguf_find_tensor(f, f->tensors[i].name) != &f->tensors[i])
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024];
    gguf_file f;
    if (gguf_parse(&f, "fuzz.gguf", data, size, err, sizeof err) < 0)
        return 0;
    read_all(&f);
    const gguf_kv *tokens = gguf_find_kv(&f, "tokenizer.ggml.tokens");
    int vocab = tokens && tokens->count < (1u << 20) ? (int)tokens->count : 512;
    gguf_close(&f);

    int fd = memfd_create("fuzz.gguf", 0);
    if (fd < 0 || write(fd, data, size) != (ssize_t)size) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    llama_model m;
    if (llama_load(&m, path, qt_spec_default(QT_F32), err, sizeof err) == 0) {
        vocab = m.cfg.vocab_size;
        llama_free(&m);
        /* and as --quant native: ggml's blocks borrowed from the mapping, two tokens run */
        if (llama_load(&m, path, llama_quant_spec(LLAMA_QUANT_NATIVE), err, sizeof err) == 0) {
            const int toks[2] = {0, 0};
            double nll = 0;
            size_t n_pred = 0;
            const int *seq[1] = {toks};
            size_t len[1] = {2};
            (void)llama_eval(&m, NULL, seq, len, 1, &nll, &n_pred, err, sizeof err);
            llama_free(&m);
        }
    }
    tok_tokenizer *t;
    if (vocab >= 259 && tok_load(&t, path, vocab, err, sizeof err) == 0) {
        static const char text[] = "Hello world <s> caf\xc3\xa9 \xff\xfe 123";
        int *ids;
        size_t n;
        if (tok_encode(t, text, sizeof text - 1, TOK_ADD_SPECIAL, &ids, &n) == TOK_OK) {
            free(tok_decode_all(t, -1, ids, n));
            free(ids);
        }
        tok_free(t);
    }
    char *src, *bos, *eos;
    const char *name;
    if (chat_template_load_dir(path, &src, &bos, &eos, &name, err, sizeof err) == 0) {
        free(src);
        free(bos);
        free(eos);
    }
    close(fd);
    return 0;
}
