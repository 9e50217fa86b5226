#!/usr/bin/python3
"""tokbin_to_json.py: a llama2.c tokenizer.bin as a Hugging Face tokenizer.json of the Llama
flavour, built the way transformers' LlamaConverter builds one from a sentencepiece BPE model:

- vocab: each piece by id, " " spelled "\u2581"; ids 0, 1, 2 named <unk>, <s>, </s> (llama2.c
  exports BOS and EOS as "\\n<s>\\n" and "\\n</s>\\n"); byte tokens <0xXX> as they are;
- merges: for every piece, each split into two pieces that are both in the vocab (at
  character boundaries); a piece's splits ordered by the ids of their halves, then all
  merges by the merged piece's score, descending, and among equal scores the longer left
  half first (a stable sort: transformers' generate_merges);
- Llama's normalizer, decoder, added tokens and post-processor.

usage: tokbin_to_json.py TOKENIZER_BIN VOCAB_SIZE OUT_JSON"""

import json
import struct
import sys

SPACE = '\u2581'
SPECIAL = ['<unk>', '<s>', '</s>']


def read_bin(path, vocab_size):
    """[(piece bytes, score)] of a tokenizer.bin."""
    with open(path, 'rb') as f:
        data = f.read()
    pos, pieces = 4, []
    for _ in range(vocab_size):
        score, n = struct.unpack_from('<fi', data, pos)
        pieces.append((data[pos + 8:pos + 8 + n], score))
        pos += 8 + n
    assert pos == len(data), 'trailing bytes in %s' % path
    return pieces


def convert(pieces):
    """The tokenizer.json (a dict) of tokenizer.bin's (piece, score) list."""
    vocab, scores = {}, {}
    for i, (raw, score) in enumerate(pieces):
        piece = SPECIAL[i] if i < len(SPECIAL) else raw.decode('utf-8').replace(' ', SPACE)
        assert piece not in vocab, 'piece %r twice' % piece
        vocab[piece] = i
        scores[piece] = score
    merges = []
    for piece in vocab:  # in id order
        local = [(piece[:k], piece[k:], scores[piece]) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    added = [{'id': i, 'content': s, 'single_word': False, 'lstrip': False, 'rstrip': False,
              'normalized': False, 'special': True} for i, s in enumerate(SPECIAL)]
    return {
        'version': '1.0',
        'truncation': None,
        'padding': None,
        'added_tokens': added,
        'normalizer': {'type': 'Sequence', 'normalizers': [
            {'type': 'Prepend', 'prepend': SPACE},
            {'type': 'Replace', 'pattern': {'String': ' '}, 'content': SPACE}]},
        'pre_tokenizer': None,
        'post_processor': {
            'type': 'TemplateProcessing',
            'single': [{'SpecialToken': {'id': '<s>', 'type_id': 0}},
                       {'Sequence': {'id': 'A', 'type_id': 0}}],
            'pair': [{'SpecialToken': {'id': '<s>', 'type_id': 0}},
                     {'Sequence': {'id': 'A', 'type_id': 0}},
                     {'SpecialToken': {'id': '<s>', 'type_id': 1}},
                     {'Sequence': {'id': 'B', 'type_id': 1}}],
            'special_tokens': {'<s>': {'id': '<s>', 'ids': [1], 'tokens': ['<s>']}}},
        'decoder': {'type': 'Sequence', 'decoders': [
            {'type': 'Replace', 'pattern': {'String': SPACE}, 'content': ' '},
            {'type': 'ByteFallback'},
            {'type': 'Fuse'},
            {'type': 'Strip', 'content': ' ', 'start': 1, 'stop': 0}]},
        'model': {
            'type': 'BPE',
            'dropout': None,
            'unk_token': '<unk>',
            'continuing_subword_prefix': None,
            'end_of_word_suffix': None,
            'fuse_unk': True,
            'byte_fallback': True,
            'ignore_merges': False,
            'vocab': vocab,
            'merges': ['%s %s' % (a, b) for a, b, _ in merges]}}


def write(tok, path):
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)


if __name__ == '__main__':
    if len(sys.argv) != 4:
        sys.exit(__doc__.rsplit('\n', 1)[-1])
    write(convert(read_bin(sys.argv[1], int(sys.argv[2]))), sys.argv[3])
