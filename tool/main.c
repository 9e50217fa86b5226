/* qlora-tool: offline commands over the libraries (no daemon). One row per command. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"

static const struct {
    const char *name;
    tool_cmd_fn fn;
    const char *usage;
} commands[] = {
    {"roundtrip", cmd_roundtrip,
     "roundtrip --format F [--block B] [--no-double-quant] --rows R --cols C  "
     "(float32 in on stdin, dequantize(quantize(x)) out on stdout)"},
    {"eval", cmd_eval,
     "eval --model DIR [--quant F] [--block B] [--no-double-quant] [--adapter FILE] "
     "(--tokens FILE.json | --text FILE) [--json]"},
    {"train", cmd_train,
     "train --model DIR [--quant F] --data FILE [--eval-data FILE] [--method lora|recovery] "
     "[--rank R --alpha A --targets LIST --lr LR --steps N --batch B --seq-len T --grad-accum G "
     "--warmup W --schedule cosine|constant --seed S --init default|loftq --dropout P "
     "--weight-decay WD --max-grad-norm N --rslora --eval-every N --checkpoint-every N --recompute "
     "--train-on-prompt --chat-template NAME] --out ADAPTER.safetensors  (--data: text, or JSONL examples: "
     "prompt/completion, text or messages)"},
    {"generate", cmd_generate,
     "generate --model DIR [--quant F] [--adapter FILE] --prompt TEXT [-n N] [--temperature T] "
     "[--top-p P] [--seed S]"},
    {"inspect", cmd_inspect, "inspect --model DIR [--quant F] [--block B]  (config, sizes, "
                             "quantization error per layer and format, memory)"},
    {"make-model", cmd_make_model,
     "make-model --dim D --hidden H --layers L --heads N --kv-heads N --vocab V [--seq-len S] "
     "[--seed S] [--arch llama|mistral|qwen2|qwen3] [--head-dim N] [--bias] [--untied] "
     "[--rope-theta N] [--rope-scaling linear|llama3 [--rope-factor F]] [--init-std S] --out DIR  "
     "(random weights, Hugging Face layout)"},
    {"export", cmd_export,
     "export --db DIR NAME[@VERSION] OUTDIR  (a stored adapter as a PEFT directory: "
     "adapter_config.json + adapter_model.safetensors)"},
    {"import", cmd_import,
     "import --db DIR --model DIR [--quant F] [--block B] [--no-double-quant] NAME INDIR  "
     "(a PEFT directory as the next version of NAME; F32, F16 or BF16)"},
    {"codes", cmd_codes, "codes nf4|fp4  (the 16 code values)"},
    {"dynamic-map", cmd_dynamic_map, "dynamic-map  (the 256 values of the double-quant map)"},
};

int tool_fail(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "qlora-tool %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_USAGE;
}

int tool_parse_int(const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

int tool_read_all(void *stream, unsigned char **buf, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    unsigned char *b = malloc(cap);
    if (!b)
        return -1;
    for (;;) {
        if (n == cap) {
            unsigned char *nb = realloc(b, cap *= 2);
            if (!nb) {
                free(b);
                return -1;
            }
            b = nb;
        }
        size_t got = fread(b + n, 1, cap - n, stream);
        n += got;
        if (got == 0) {
            if (ferror(stream)) {
                free(b);
                return -1;
            }
            break;
        }
    }
    *buf = b;
    *len = n;
    return 0;
}

/* Options of every command that takes --model. */
static const char model_note[] =
    "  (every command with --model also takes --cache-dir DIR or --no-cache: the quantized model's\n"
    "   cache file, by default in $XDG_CACHE_HOME/qlorad, else ~/.cache/qlorad)\n";

static void usage(FILE *f)
{
    fprintf(f, "usage: qlora-tool COMMAND [ARGS]\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  qlora-tool %s\n", commands[i].usage);
    fputs(model_note, f);
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name))
            continue;
        if (argc > 2 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
            printf("usage: qlora-tool %s\n", commands[i].usage);
            if (strstr(commands[i].usage, "--model"))
                fputs(model_note, stdout);
            return 0;
        }
        return commands[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "qlora-tool: unknown command '%s' (try --help)\n", argv[1]);
    return EXIT_USAGE;
}
