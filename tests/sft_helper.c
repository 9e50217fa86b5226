/* sft_helper: the SFT examples qlorad would train on, for tests/test_sft_chat.py. Loads
 * the tokenizer and chat template of DIR (a model directory, or a tokenizer's: tokenizer.json
 * and tokenizer_config.json) for a vocabulary of VOCAB ids, parses the JSONL file, and
 * prints one line per example: its ids, a tab, and for each id 1 if it carries loss.
 * With --prompt, FILE holds one JSON array of messages: prints the ids chat would generate
 * after (sft_chat_prompt), then "eot ID" (sft_chat_end_of_turn) or "eot none".
 * usage: sft_helper [--prompt] DIR VOCAB FILE */
#include <stdio.h>
#include <stdlib.h>

#include <string.h>

#include "mapfile.h"
#include "sft.h"

/* --prompt: the conversation's prompt ids and the end-of-turn id. */
static int prompt(const sft_chat *chat, const tok_tokenizer *tok, const char *text, size_t len)
{
    char err[1024];
    json_value *m = json_parse(text, len, err, sizeof err);
    int *ids = NULL, eot;
    size_t n = 0;
    if (!m || sft_chat_prompt(chat, tok, m, &ids, &n, err, sizeof err) < 0) {
        fprintf(stderr, "sft_helper: %s\n", err);
        json_free(m);
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        printf("%s%d", i ? " " : "", ids[i]);
    printf("\n");
    if (sft_chat_end_of_turn(chat, tok, &eot))
        printf("eot %d\n", eot);
    else
        printf("eot none\n");
    free(ids);
    json_free(m);
    return 0;
}

int main(int argc, char **argv)
{
    int as_prompt = argc > 1 && !strcmp(argv[1], "--prompt");
    argv += as_prompt, argc -= as_prompt;
    if (argc != 4) {
        fprintf(stderr, "usage: sft_helper [--prompt] DIR VOCAB FILE\n");
        return 2;
    }
    char err[1024];
    tok_tokenizer *tok;
    sft_chat chat;
    const void *text;
    size_t len;
    if (tok_load_dir(&tok, argv[1], atoi(argv[2]), err, sizeof err) < 0 ||
        sft_chat_load(&chat, argv[1], NULL, err, sizeof err) < 0 || map_file(argv[3], &text, &len, err, sizeof err) < 0) {
        fprintf(stderr, "sft_helper: %s\n", err);
        return 1;
    }
    if (as_prompt) {
        int rc = prompt(&chat, tok, text, len);
        unmap_file(text, len);
        sft_chat_free(&chat);
        tok_free(tok);
        return rc;
    }
    sft_options opt = {0, chat.chat, chat.bos, chat.eos};
    sft_data d;
    int rc = sft_parse(&d, argv[3], text, len, tok, &opt, err, sizeof err);
    unmap_file(text, len);
    if (rc < 0) {
        fprintf(stderr, "sft_helper: %s\n", err);
    } else {
        for (size_t e = 0; e < d.n; e++) {
            for (size_t i = d.offset[e]; i < d.offset[e + 1]; i++)
                printf("%s%d", i > d.offset[e] ? " " : "", d.ids[i]);
            printf("\t");
            for (size_t i = d.offset[e]; i < d.offset[e + 1]; i++)
                printf("%s%d", i > d.offset[e] ? " " : "", d.loss[i]);
            printf("\n");
        }
        sft_free(&d);
    }
    sft_chat_free(&chat);
    tok_free(tok);
    return rc < 0 ? 1 : 0;
}
