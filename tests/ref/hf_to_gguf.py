#!/usr/bin/python3
"""hf_to_gguf.py: a Hugging Face checkpoint directory into a GGUF file, for the tests.

llama.cpp's own convert_hf_to_gguf.py (in .deps/llama/src) cannot run here: it imports
transformers (AutoTokenizer, for every tokenizer) and sentencepiece, which Debian does not
package. This script writes the same file with llama.cpp's gguf-py (GGUFWriter, pure
python + numpy; PYTHONPATH=.deps/llama/src/gguf-py), following convert_hf_to_gguf.py's
mapping line by line for the architectures qlorad runs:
- conversion/base.py TextModel.set_gguf_parameters: context_length, embedding_length,
  feed_forward_length, head_count, head_count_kv, rope.freq_base, layer_norm_rms_epsilon,
  key_length/value_length when config.json has head_dim; rope_scaling "linear" as
  rope.scaling.type + factor; file_type.
- conversion/llama.py LlamaModel (LlamaForCausalLM and MistralForCausalLM, arch "llama"):
  vocab_size, rope.dimension_count; q_proj and k_proj weights and biases permuted by
  LlamaModel.permute (HF's rotate-half halves back into interleaved pairs); Llama 3's
  rope_scaling written as the tensor rope_freqs.
- conversion/qwen.py Qwen2Model / Qwen3Model (arch "qwen2", "qwen3"): nothing permuted
  (llama.cpp runs them with NEOX RoPE, on HF's order).
- tensor names as gguf-py's TensorNameMap: token_embd, blk.N.attn_norm, attn_q/k/v,
  attn_output (+ .bias), attn_q_norm/attn_k_norm, ffn_norm, ffn_gate/up/down, output_norm,
  output (absent when tied); 1-D tensors f32, the rest --outtype.
- the vocabulary as base.py's _set_vocab_gpt2 (byte-level tokenizer.json: model "gpt2",
  tokens in id order padded with [PADn] UNUSED, types CONTROL for special added tokens,
  USER_DEFINED for others, merges "a b", tokenizer.ggml.pre named by --pre, since
  get_vocab_base_pre identifies it by hashing transformers' output), or as a sentencepiece
  vocabulary (model "llama"): from llama2.c's tokenizer.bin (spaces spelled U+2581, its
  scores; <unk> UNKNOWN, BOS and EOS CONTROL, <0xXX> BYTE) as llama.cpp's
  convert-llama2c-to-ggml writes it, or from a sentencepiece-kind tokenizer.json, where
  sentencepiece's scores are not kept: each piece gets minus the rank of the first merge
  that makes it (sentencepiece's BPE scores are ordered as its merges), 0 for pieces no
  merge makes. SpecialVocab's bos/eos/unk/pad ids, add_bos_token/add_eos_token and
  chat_template from tokenizer_config.json.

usage: hf_to_gguf.py MODEL_DIR OUT.gguf [--tokenizer DIR] [--pre NAME] [--outtype f32|f16]
       [--vocab-only]"""

import argparse
import json
import os
import struct
import sys

import numpy as np

import gguf  # noqa: E402  (PYTHONPATH=.deps/llama/src/gguf-py)

ARCHS = {'LlamaForCausalLM': 'llama', 'MistralForCausalLM': 'llama', 'Qwen2ForCausalLM': 'qwen2',
         'Qwen3ForCausalLM': 'qwen3'}
LINEARS = {'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k', 'self_attn.v_proj': 'attn_v',
           'self_attn.o_proj': 'attn_output', 'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up',
           'mlp.down_proj': 'ffn_down'}
OTHERS = {'input_layernorm.weight': 'attn_norm.weight', 'post_attention_layernorm.weight': 'ffn_norm.weight',
          'self_attn.q_norm.weight': 'attn_q_norm.weight', 'self_attn.k_norm.weight': 'attn_k_norm.weight'}


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == '__metadata__':
                continue
            b, e = info['data_offsets']
            f.seek(base + b)
            raw = f.read(e - b)
            if info['dtype'] == 'F32':
                a = np.frombuffer(raw, dtype='<f4')
            elif info['dtype'] == 'F16':
                a = np.frombuffer(raw, dtype='<f2').astype(np.float32)
            elif info['dtype'] == 'BF16':
                a = (np.frombuffer(raw, dtype='<u2').astype(np.uint32) << 16).view(np.float32)
            else:
                raise SystemExit('%s: dtype %s' % (name, info['dtype']))
            out[name] = a.reshape(info['shape']).copy()
        return out


def read_weights(d):
    index = os.path.join(d, 'model.safetensors.index.json')
    if os.path.exists(index):
        w = {}
        for shard in sorted(set(json.load(open(index))['weight_map'].values())):
            w.update(read_safetensors(os.path.join(d, shard)))
        return w
    return read_safetensors(os.path.join(d, 'model.safetensors'))


def permute(w, n_head, n_head_kv):
    """conversion/llama.py LlamaModel.permute, in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_factors(cfg, rope):
    """conversion/llama.py LlamaModel.generate_extra_tensors, in float32 as torch there."""
    import math
    base = cfg.get('rope_theta', 10000.0)
    dim = cfg.get('head_dim') or cfg['hidden_size'] // cfg['num_attention_heads']
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rope.get('factor', 8.0)
    lo, hi = rope.get('low_freq_factor', 1.0), rope.get('high_freq_factor', 4.0)
    old = rope.get('original_max_position_embeddings', 8192)
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1)
        elif wl > lo_wl:
            out.append(factor)
        else:
            s = (old / wl - lo) / (hi - lo)
            out.append(1 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


def write_model(w, cfg, arch, hf_arch, weights, outtype):
    n_head, n_kv = cfg['num_attention_heads'], cfg.get('num_key_value_heads', cfg['num_attention_heads'])
    w.add_context_length(cfg['max_position_embeddings'])
    w.add_embedding_length(cfg['hidden_size'])
    w.add_block_count(cfg['num_hidden_layers'])
    w.add_feed_forward_length(cfg['intermediate_size'])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    rope = cfg.get('rope_scaling') or {}
    if rope.get('rope_type', rope.get('type')) == 'linear':
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope['factor'])
    if 'rope_theta' in cfg:
        w.add_rope_freq_base(cfg['rope_theta'])
    w.add_layer_norm_rms_eps(cfg.get('rms_norm_eps', 1e-6))
    if cfg.get('head_dim') is not None:
        w.add_key_length(cfg['head_dim'])
        w.add_value_length(cfg['head_dim'])
    w.add_file_type(0 if outtype == 'f32' else 1)
    if arch == 'llama':
        w.add_vocab_size(cfg['vocab_size'])
        w.add_rope_dimension_count(cfg.get('head_dim') or cfg['hidden_size'] // n_head)
    if weights is None:
        return
    if arch == 'llama' and rope.get('rope_type', rope.get('type')) == 'llama3':
        w.add_tensor('rope_freqs.weight', llama3_factors(cfg, rope))
    for name, t in weights.items():
        if name == 'model.embed_tokens.weight':
            new = 'token_embd.weight'
        elif name == 'model.norm.weight':
            new = 'output_norm.weight'
        elif name == 'lm_head.weight':
            if cfg.get('tie_word_embeddings'):
                continue
            new = 'output.weight'
        else:
            parts = name.split('.')
            assert parts[0] == 'model' and parts[1] == 'layers', name
            bid, rest = parts[2], '.'.join(parts[3:])
            if rest in OTHERS:
                new = 'blk.%s.%s' % (bid, OTHERS[rest])
            else:
                mod, kind = rest.rsplit('.', 1)
                new = 'blk.%s.%s.%s' % (bid, LINEARS[mod], kind)
                if arch == 'llama' and mod == 'self_attn.q_proj':
                    t = permute(t, n_head, n_head)
                if arch == 'llama' and mod == 'self_attn.k_proj':
                    t = permute(t, n_head, n_kv)
        t = np.ascontiguousarray(t, dtype=np.float32)
        if t.ndim > 1 and outtype == 'f16':
            t = t.astype(np.float16)
        w.add_tensor(new, t)


def spm_from_bin(path, vocab_size):
    tokens, scores, types = [], [], []
    with open(path, 'rb') as f:
        f.read(4)
        for i in range(vocab_size):
            score, n = struct.unpack('<fi', f.read(8))
            piece = f.read(n)
            tokens.append(piece.replace(b' ', '\u2581'.encode()))
            scores.append(score)
            types.append(gguf.TokenType.UNKNOWN if i == 0 else gguf.TokenType.CONTROL if i in (1, 2)
                         else gguf.TokenType.BYTE if 3 <= i < 259 else gguf.TokenType.NORMAL)
    return tokens, scores, types, {'bos': 1, 'eos': 2, 'unk': 0}, True, False, None


def tokenizer_config(d):
    p = os.path.join(d, 'tokenizer_config.json')
    return json.load(open(p)) if os.path.exists(p) else {}


def token_content(v):
    return v.get('content') if isinstance(v, dict) else v


def from_json(d, vocab_size):
    tj = json.load(open(os.path.join(d, 'tokenizer.json')))
    tc = tokenizer_config(d)
    model = tj['model']
    byte_level = (tj.get('decoder') or {}).get('type') == 'ByteLevel'
    by_id = {}
    for piece, i in model['vocab'].items():
        by_id[i] = piece
    added = {t['id']: t for t in tj.get('added_tokens', [])}
    for i, t in added.items():
        by_id[i] = t['content']
    n = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    merges = [m if isinstance(m, str) else ' '.join(m) for m in model.get('merges', [])]
    made = {}
    for rank, m in enumerate(merges):
        a, b = m.split(' ')
        made.setdefault(a + b, rank)
    scores = []
    for i in range(n):
        if i not in by_id:
            tokens.append('[PAD%d]' % i)
            types.append(gguf.TokenType.UNUSED)
            scores.append(0.0)
            continue
        piece = by_id[i]
        tokens.append(piece)
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i]['special'] else gguf.TokenType.USER_DEFINED)
        elif not byte_level and len(piece) == 6 and piece.startswith('<0x') and piece.endswith('>'):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
        scores.append(-float(made[piece]) - 1 if piece in made else 0.0)
    ids = {}
    for key in ('bos', 'eos', 'unk', 'pad'):
        c = token_content(tc.get(key + '_token'))
        if c is not None:
            ids[key] = next(i for i, p in by_id.items() if p == c)
    if 'unk' in ids and not byte_level:
        types[ids['unk']] = gguf.TokenType.UNKNOWN
    post = tj.get('post_processor') or {}
    single = post.get('single', []) if post.get('type') == 'TemplateProcessing' else []
    add_bos = tc.get('add_bos_token', bool(single) and 'SpecialToken' in single[0])
    add_eos = tc.get('add_eos_token', bool(single) and 'SpecialToken' in single[-1])
    return tokens, None if byte_level else scores, types, ids, add_bos, add_eos, merges if byte_level else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('model')
    ap.add_argument('out')
    ap.add_argument('--tokenizer', help='directory of the tokenizer files (default: the model directory)')
    ap.add_argument('--pre', default=None, help='tokenizer.ggml.pre of a byte-level tokenizer')
    ap.add_argument('--outtype', default='f32', choices=['f32', 'f16'])
    ap.add_argument('--vocab-only', action='store_true')
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.model, 'config.json')))
    hf_arch = cfg['architectures'][0]
    arch = ARCHS[hf_arch]
    w = gguf.GGUFWriter(a.out, arch)
    w.add_name(os.path.basename(os.path.normpath(a.model)))
    write_model(w, cfg, arch, hf_arch, None if a.vocab_only else read_weights(a.model), a.outtype)
    td = a.tokenizer or a.model
    if os.path.exists(os.path.join(td, 'tokenizer.json')):
        tokens, scores, types, ids, add_bos, add_eos, merges = from_json(td, cfg['vocab_size'])
    else:
        tokens, scores, types, ids, add_bos, add_eos, merges = spm_from_bin(os.path.join(td, 'tokenizer.bin'),
                                                                            cfg['vocab_size'])
    if merges is not None:
        w.add_tokenizer_model('gpt2')
        w.add_tokenizer_pre(a.pre or 'default')
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
    else:
        w.add_tokenizer_model('llama')
        w.add_tokenizer_pre('default')
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
    for key, add in (('bos', w.add_bos_token_id), ('eos', w.add_eos_token_id), ('unk', w.add_unk_token_id),
                     ('pad', w.add_pad_token_id)):
        if key in ids:
            add(ids[key])
    w.add_add_bos_token(bool(add_bos))
    w.add_add_eos_token(bool(add_eos))
    tmpl = tokenizer_config(td).get('chat_template')
    if isinstance(tmpl, str):
        w.add_chat_template(tmpl)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == '__main__':
    sys.exit(main())
