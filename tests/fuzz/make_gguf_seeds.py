#!/usr/bin/python3
"""Writes the GGUF fuzzer's seed corpus (tests/fuzz/seeds-gguf/) with llama.cpp's gguf-py
(PYTHONPATH=.deps/llama/src/gguf-py): tiny files that load all the way, so that the fuzzer
starts from inputs that reach the model loader and both tokenizer kinds: a llama of dim 4
with a sentencepiece vocabulary (f32, and f16), a qwen3 with a byte-level one and q/k norms
(f32, and of dim 32 in Q8_0 with an f16 embedding),
a vocabulary alone (stories260K's tokenizer.bin), and metadata of every value type with
nested arrays. Each is a few KiB (the fuzzer's -max_len is 32768).

usage: make_gguf_seeds.py SHARED_DIR [DIR]"""
import os
import struct
import sys

import numpy as np

import gguf

shared = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), 'seeds-gguf')
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(19)


def hparams(w, arch, dim, hidden, heads, kv, layers, ctx=32):
    w.add_context_length(ctx)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(hidden)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)


def tensors(w, vocab, dim, hidden, heads, kv, qk_norm=False, dtype=np.float32):
    hs = dim // heads

    def m(r, c):
        a = (rng.standard_normal((r, c)) * 0.3).astype(np.float32)
        if dtype == 'q8_0':  # gguf-py's reference quantizer; raw blocks, shape as values
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            return q
        return a.astype(dtype)
    add = (lambda name, a: w.add_tensor(name, a, raw_dtype=gguf.GGMLQuantizationType.Q8_0)) if dtype == 'q8_0' \
        else w.add_tensor
    w.add_tensor('token_embd.weight', m(vocab, dim).astype(np.float32) if dtype != 'q8_0' else
                 (rng.standard_normal((vocab, dim)) * 0.3).astype(np.float16))
    w.add_tensor('blk.0.attn_norm.weight', np.ones(dim, np.float32))
    add('blk.0.attn_q.weight', m(dim, dim))
    add('blk.0.attn_k.weight', m(kv * hs, dim))
    add('blk.0.attn_v.weight', m(kv * hs, dim))
    add('blk.0.attn_output.weight', m(dim, dim))
    if qk_norm:
        w.add_tensor('blk.0.attn_q_norm.weight', np.ones(hs, np.float32))
        w.add_tensor('blk.0.attn_k_norm.weight', np.ones(hs, np.float32))
    w.add_tensor('blk.0.ffn_norm.weight', np.ones(dim, np.float32))
    add('blk.0.ffn_gate.weight', m(hidden, dim))
    add('blk.0.ffn_up.weight', m(hidden, dim))
    add('blk.0.ffn_down.weight', m(dim, hidden))
    w.add_tensor('output_norm.weight', np.ones(dim, np.float32))


def spm_vocab(w):
    tokens = ['<unk>', '<s>', '</s>'] + ['<0x%02X>' % b for b in range(256)] + ['\u2581', '\u2581h', 'he']
    types = [2, 3, 3] + [6] * 256 + [1, 1, 1]
    w.add_tokenizer_model('llama')
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-1.0, -2.0, -3.0])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return len(tokens)


def bpe_vocab(w):
    alphabet = list(gguf.vocab.bytes_to_unicode().values()) if hasattr(gguf.vocab, 'bytes_to_unicode') else None
    tokens = alphabet + ['he', 'll', '<|endoftext|>']
    w.add_tokenizer_model('gpt2')
    w.add_tokenizer_pre('qwen2')
    w.add_token_list(tokens)
    w.add_token_types([1] * 258 + [3])
    w.add_token_merges(['h e', 'l l'])
    w.add_eos_token_id(258)
    return len(tokens)


def write(name, arch, vocab_fn, dtype=np.float32, qk_norm=False, model=True, dim=4, hidden=8):
    w = gguf.GGUFWriter(os.path.join(out, name), arch)
    n = vocab_fn(w)
    if model:
        hparams(w, arch, dim, hidden, 2, 1, 1)
        tensors(w, n, dim, hidden, 2, 1, qk_norm, dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


write('llama_spm.gguf', 'llama', spm_vocab)
write('llama_spm_f16.gguf', 'llama', spm_vocab, dtype=np.float16)
write('qwen3_bpe.gguf', 'qwen3', bpe_vocab, qk_norm=True)
write('qwen3_q8_0.gguf', 'qwen3', bpe_vocab, qk_norm=True, dtype='q8_0', dim=32, hidden=32)  # f16 embedding


def stories_vocab(w):
    path = os.path.join(shared, 'models', 'stories260K', 'tokenizer.bin')
    tokens, scores = [], []
    with open(path, 'rb') as f:
        f.read(4)
        for _ in range(512):
            score, n = struct.unpack('<fi', f.read(8))
            tokens.append(f.read(n).replace(b' ', '\u2581'.encode()))
            scores.append(score)
    w.add_tokenizer_model('llama')
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * 253)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    return 512


write('stories_vocab.gguf', 'llama', stories_vocab, model=False)

w = gguf.GGUFWriter(os.path.join(out, 'typed.gguf'), 'llama')
for t, v in ((gguf.GGUFValueType.UINT8, 1), (gguf.GGUFValueType.INT8, -1), (gguf.GGUFValueType.UINT16, 2),
             (gguf.GGUFValueType.INT16, -2), (gguf.GGUFValueType.UINT32, 3), (gguf.GGUFValueType.INT32, -3),
             (gguf.GGUFValueType.FLOAT32, 0.5), (gguf.GGUFValueType.BOOL, True), (gguf.GGUFValueType.STRING, 'x'),
             (gguf.GGUFValueType.UINT64, 4), (gguf.GGUFValueType.INT64, -4), (gguf.GGUFValueType.FLOAT64, 0.25)):
    w.add_key_value('general.t%d' % int(t), v, t)
w.add_array('general.nested', [[1, 2], ['a', 'bc'], [[1.5]]])
w.write_header_to_file()
w.write_kv_data_to_file()
w.close()
