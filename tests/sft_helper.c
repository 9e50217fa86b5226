/* sft_helper: the SFT examples qlorad would train on, for tests/test_sft_chat.py. Loads
 * the tokenizer and chat template of DIR (a model directory, or a tokenizer's: tokenizer.json
 * and tokenizer_config.json) for a vocabulary of VOCAB ids, parses the JSONL file, and
 * prints one line per example: its ids, a tab, and for each id 1 if it carries loss.
 * usage: sft_helper DIR VOCAB FILE.jsonl */
#include <stdio.h>
#include <stdlib.h>

#include "mapfile.h"
#include "sft.h"

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: sft_helper DIR VOCAB FILE.jsonl\n");
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
