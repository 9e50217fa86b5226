#!/usr/bin/python3
"""hf_arch.py: an independent numpy reference for the decoder-only architectures of issue 17,
read line by line from transformers' modeling code, and a writer of tiny random checkpoints
whose config.json carries the key set of a real published model of each family.

    hf_arch.py write ARCH OUTDIR [--seed S] [--dtype F32|BF16|F16] [--shards N] [shape options]
    hf_arch.py eval DIR TOKENS.json [--logits N] [--no-window] [--adapter PEFT_DIR]
    hf_arch.py write-adapter DIR OUTDIR [--rank R] [--alpha A] [--targets q_proj,...|all-linear]
                             [--seed S] [--rslora] [--dtype F32|BF16|F16]
    hf_arch.py archs            (the ARCH names, one a line, with the model each follows)

`eval` prints JSON: nll_sum, n_predicted and ppl over the whole file exactly as
`qlora-tool eval --tokens FILE.json --json` computes them (tool/cmd_model.c, llama_eval in
model/generate.c: every sequence predicts its tokens 1..T-1 from the positions before; the
NLL of each is -log_softmax(logits[t])[ids[t+1]]; nll_sum sums over all sequences and
ppl = exp(nll_sum / n_predicted)), and per sequence its mean NLL, perplexity and the first N
logits of every position. With --adapter, the PEFT LoRA adapter of that directory
(adapter_config.json + adapter_model.safetensors, as peft's save_pretrained writes them) is
applied as peft runs it on the Hugging Face model: every targeted nn.Linear computes
x W^T + b + scaling * (x A^T) B^T in the checkpoint's own (rotate-half) row order, scaling
lora_alpha / r (lora_alpha / sqrt(r) with use_rslora). A LoraConfig key that would change
that (use_dora, alpha_pattern, modules_to_save, fan_in_fan_out, layers_to_transform...),
an unknown target module, a missing or extra tensor are refused. `write-adapter` writes a
random one (B nonzero) in that same order.

What it follows (transformers, the current main-branch files):
  models/llama/modeling_llama.py   LlamaRMSNorm, LlamaRotaryEmbedding.forward, rotate_half,
                                   apply_rotary_pos_emb, LlamaMLP, repeat_kv,
                                   eager_attention_forward, LlamaAttention, LlamaDecoderLayer,
                                   LlamaModel, LlamaForCausalLM
  models/mistral/modular_mistral.py MistralAttention (no biases, head_dim key,
                                   sliding_window passed to the attention), MistralModel
                                   (create_sliding_window_causal_mask when sliding_window is set)
  models/qwen2/modular_qwen2.py    Qwen2Attention (q, k, v biases; o without), layer_types
  models/qwen3/modeling_qwen3.py   Qwen3Attention (q_norm / k_norm over head_dim after the
                                   projection and before RoPE; attention_bias on all four)
  masking_utils.py                 causal_mask_function (kv <= q), sliding_window_overlay
                                   (kv > q - sliding_window)
  modeling_rope_utils.py           _compute_default_rope_parameters,
                                   _compute_linear_scaling_rope_parameters,
                                   _compute_llama3_parameters
  configuration_{llama,mistral,qwen2,qwen3}.py  the defaults of keys a config.json omits

Everything is float32, as transformers computes a float32 model on CPU; the places where
float64 would give other numbers are marked "f32:". Only the final log-softmax is float64,
as qlora-tool's eval computes it (transformers' CrossEntropyLoss would do it in float32:
a difference of ~1e-7 relative, far below any tolerance the tests use).

It is a strict reference: a config key or a tensor it does not model is refused with the
file and the key named (exit status 1), never ignored. numpy only."""

import argparse
import hashlib
import json
import math
import os
import struct
import sys

import numpy as np

F32 = np.float32


class Refused(Exception):
    """A checkpoint this reference does not model; the message names the file and key."""


# ---------------------------------------------------------------------------------------------
# safetensors: F32, F16 and BF16, read and written without any library

_DTYPES = {'F32': 4, 'F16': 2, 'BF16': 2}


def st_read(path):
    """{name: float32 array} of one safetensors file (BF16 and F16 widened exactly)."""
    with open(path, 'rb') as f:
        data = f.read()
    if len(data) < 8:
        raise Refused('%s: too short for a safetensors header' % path)
    n = struct.unpack('<Q', data[:8])[0]
    if n > len(data) - 8:
        raise Refused('%s: header length %d beyond the file' % (path, n))
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        raise Refused('%s: header is not JSON: %s' % (path, e))
    body = memoryview(data)[8 + n:]
    out = {}
    for name, t in header.items():
        if name == '__metadata__':
            continue
        dtype, shape, (b0, b1) = t.get('dtype'), t.get('shape'), t.get('data_offsets', (0, -1))
        if dtype not in _DTYPES:
            raise Refused("%s: tensor '%s': dtype %r (F32, F16 and BF16 only)" % (path, name, dtype))
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (0 <= b0 <= b1 <= len(body)) or b1 - b0 != count * _DTYPES[dtype]:
            raise Refused("%s: tensor '%s': data_offsets %r do not fit shape %r %s" %
                          (path, name, [b0, b1], shape, dtype))
        raw = body[b0:b1]
        if dtype == 'F32':
            a = np.frombuffer(raw, dtype='<f4').astype(F32)
        elif dtype == 'F16':
            a = np.frombuffer(raw, dtype='<f2').astype(F32)  # exact: every f16 is a float32
        else:  # BF16: the top 16 bits of a float32
            a = (np.frombuffer(raw, dtype='<u2').astype(np.uint32) << 16).view(F32)
        out[name] = a.reshape(shape)
    return out


def to_bf16_bits(a):
    """float32 -> bfloat16 bits, rounding to nearest even as torch's .to(torch.bfloat16)."""
    u = np.ascontiguousarray(a, dtype=F32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def st_write(path, tensors, dtype, metadata=None):
    """Writes {name: float32 array} in one dtype; tensors in the order given; metadata (a
    {str: str}) as __metadata__ when given."""
    header, parts, off = ({'__metadata__': metadata} if metadata is not None else {}), [], 0
    for name, a in tensors.items():
        if dtype == 'F32':
            raw = np.ascontiguousarray(a, dtype='<f4').tobytes()
        elif dtype == 'F16':
            raw = np.ascontiguousarray(a).astype('<f2').tobytes()
        else:
            raw = to_bf16_bits(a).astype('<u2').tobytes()
        header[name] = {'dtype': dtype, 'shape': list(a.shape), 'data_offsets': [off, off + len(raw)]}
        parts.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b' ' * (-len(h) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(parts))


def read_checkpoint(d):
    """{name: (float32 array, file path)} from model.safetensors or the sharded index."""
    single = os.path.join(d, 'model.safetensors')
    if os.path.isfile(single):
        files = [single]
    else:
        index = os.path.join(d, 'model.safetensors.index.json')
        if not os.path.isfile(index):
            raise Refused('%s: neither model.safetensors nor model.safetensors.index.json' % d)
        with open(index) as f:
            wm = json.load(f).get('weight_map')
        if not isinstance(wm, dict):
            raise Refused('%s: no weight_map object' % index)
        files = []
        for fn in wm.values():
            if not isinstance(fn, str) or '/' in fn:
                raise Refused('%s: weight_map entry %r is not a file name' % (index, fn))
            p = os.path.join(d, fn)
            if p not in files:
                files.append(p)
    out = {}
    for p in files:
        for name, a in st_read(p).items():
            if name in out:
                raise Refused("%s: tensor '%s' also in %s" % (p, name, out[name][1]))
            out[name] = (a, p)
    return out


# ---------------------------------------------------------------------------------------------
# config.json: what each family accepts, with transformers' defaults for omitted keys

# Keys that change nothing in the forward pass: metadata, token ids (the tokenizer decides),
# caching and initialisation switches. pretraining_tp > 1 only splits the products into
# slices that sum to the same (modeling_llama.py of 4.3x; gone in later versions).
INERT = {'_name_or_path', 'transformers_version', 'torch_dtype', 'initializer_range', 'use_cache',
         'bos_token_id', 'eos_token_id', 'pad_token_id', 'pretraining_tp'}
SHAPE = ('hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'vocab_size')

FAMILIES = {
    # architecture: model_type, the keys it reads (besides INERT and SHAPE), defaults of
    # configuration_*.py for keys a config.json may omit
    'LlamaForCausalLM': ('llama', {
        'num_key_value_heads', 'max_position_embeddings', 'rms_norm_eps', 'rope_theta', 'rope_scaling',
        'attention_bias', 'mlp_bias', 'head_dim', 'hidden_act', 'tie_word_embeddings', 'attention_dropout',
        # SmolLM2's nanotron export writes these; LlamaConfig keeps them as unread attributes
        'is_llama_config', 'rope_interleaved'},
        {'rms_norm_eps': 1e-6, 'rope_theta': 10000.0, 'max_position_embeddings': 2048}),
    'MistralForCausalLM': ('mistral', {
        'num_key_value_heads', 'max_position_embeddings', 'rms_norm_eps', 'rope_theta', 'head_dim',
        'sliding_window', 'hidden_act', 'tie_word_embeddings', 'attention_dropout', 'rope_scaling'},
        # MistralConfig: sliding_window=4096 when the key is absent (null in the file = none)
        {'rms_norm_eps': 1e-6, 'rope_theta': 10000.0, 'max_position_embeddings': 4096 * 32,
         'sliding_window': 4096}),
    'Qwen2ForCausalLM': ('qwen2', {
        'num_key_value_heads', 'max_position_embeddings', 'rms_norm_eps', 'rope_theta', 'head_dim',
        'use_sliding_window', 'sliding_window', 'max_window_layers', 'hidden_act', 'tie_word_embeddings',
        'attention_dropout', 'rope_scaling', 'use_mrope'},
        {'rms_norm_eps': 1e-6, 'rope_theta': 10000.0, 'max_position_embeddings': 32768}),
    'Qwen3ForCausalLM': ('qwen3', {
        'num_key_value_heads', 'max_position_embeddings', 'rms_norm_eps', 'rope_theta', 'head_dim',
        'attention_bias', 'use_sliding_window', 'sliding_window', 'max_window_layers', 'hidden_act',
        'tie_word_embeddings', 'attention_dropout', 'rope_scaling'},
        # Qwen3Config: head_dim=128 when absent, whatever hidden_size / heads is
        {'rms_norm_eps': 1e-6, 'rope_theta': 10000.0, 'max_position_embeddings': 32768, 'head_dim': 128}),
}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_object(path):
    """A JSON file holding an object, and a maker of Refused naming the file and a key."""
    with open(path) as f:
        try:
            j = json.load(f)
        except ValueError as e:
            raise Refused('%s: not JSON: %s' % (path, e))
    if not isinstance(j, dict):
        raise Refused('%s: not a JSON object' % path)
    return j, lambda key, why: Refused("%s: '%s': %s" % (path, key, why))


def parse_config(path):
    """The model's parameters from config.json, or Refused naming the file and key."""
    j, bad = read_object(path)

    arch = j.get('architectures')
    if not (isinstance(arch, list) and len(arch) == 1 and arch[0] in FAMILIES):
        raise bad('architectures', 'one of %s expected, got %r' % (sorted(FAMILIES), arch))
    arch = arch[0]
    model_type, keys, defaults = FAMILIES[arch]
    if j.get('model_type') != model_type:
        raise bad('model_type', '"%s" expected for %s, got %r' % (model_type, arch, j.get('model_type')))
    for k in j:
        if k not in INERT and k not in SHAPE and k not in keys and k not in ('architectures', 'model_type'):
            raise bad(k, 'not a key of %s this reference models' % arch)
    c = {'arch': arch, 'model_type': model_type, 'path': path}
    for k in SHAPE:
        if not (_is_int(j.get(k)) and j[k] > 0):
            raise bad(k, 'missing or not a positive integer')
        c[k] = j[k]
    c['max_position_embeddings'] = j.get('max_position_embeddings', defaults['max_position_embeddings'])
    # configuration_*: num_key_value_heads defaults to num_attention_heads
    c['num_key_value_heads'] = j.get('num_key_value_heads') or c['num_attention_heads']
    for k in ('num_key_value_heads', 'max_position_embeddings'):
        if not (_is_int(c[k]) and c[k] > 0):
            raise bad(k, 'not a positive integer')
    if c['num_attention_heads'] % c['num_key_value_heads']:
        raise bad('num_key_value_heads', 'does not divide num_attention_heads')
    c['rms_norm_eps'] = j.get('rms_norm_eps', defaults['rms_norm_eps'])
    c['rope_theta'] = j.get('rope_theta', defaults['rope_theta'])
    for k in ('rms_norm_eps', 'rope_theta'):
        if not (_is_num(c[k]) and c[k] > 0):
            raise bad(k, 'not a positive number')
    if j.get('hidden_act', 'silu') != 'silu':
        raise bad('hidden_act', '"silu" only (ACT2FN["silu"] = SiLU)')
    if j.get('attention_dropout', 0.0) not in (0, 0.0):
        raise bad('attention_dropout', 'inference runs without dropout; 0 only')
    tie = j.get('tie_word_embeddings', False)  # every one of the four configs: False by default
    if not isinstance(tie, bool):
        raise bad('tie_word_embeddings', 'not a boolean')
    c['tied'] = tie
    # head_dim: LlamaAttention getattr(config, "head_dim", hidden // heads); Mistral's
    # `getattr(...) or hidden // heads` (a null head_dim falls back too); Qwen3Config 128
    hd = j.get('head_dim', defaults.get('head_dim'))
    if hd is None:
        hd = c['hidden_size'] // c['num_attention_heads']
    if not (_is_int(hd) and hd > 0 and hd % 2 == 0):
        raise bad('head_dim', 'not a positive even integer')
    c['head_dim'] = hd
    if 'head_dim' not in j and 'head_dim' not in defaults and c['hidden_size'] % c['num_attention_heads']:
        raise bad('num_attention_heads', 'does not divide hidden_size and there is no head_dim')

    for k in ('attention_bias', 'mlp_bias'):
        if k in j and not isinstance(j[k], bool):
            raise bad(k, 'not a boolean')
    # which linears have a bias
    if arch == 'LlamaForCausalLM':
        ab, mb = j.get('attention_bias', False), j.get('mlp_bias', False)
        c['bias'] = {'q': ab, 'k': ab, 'v': ab, 'o': ab, 'gate': mb, 'up': mb, 'down': mb}
        if j.get('rope_interleaved', False) is not False:
            raise bad('rope_interleaved', 'transformers ignores it and rotates halves; false only')
        if j.get('is_llama_config', True) is not True:
            raise bad('is_llama_config', 'true only')
    elif arch == 'MistralForCausalLM':
        c['bias'] = dict.fromkeys(('q', 'k', 'v', 'o', 'gate', 'up', 'down'), False)
    elif arch == 'Qwen2ForCausalLM':
        c['bias'] = {'q': True, 'k': True, 'v': True, 'o': False, 'gate': False, 'up': False, 'down': False}
        if j.get('use_mrope', False) is not False:
            raise bad('use_mrope', 'multimodal RoPE is not modelled; false only')
    else:
        ab = j.get('attention_bias', False)
        c['bias'] = {'q': ab, 'k': ab, 'v': ab, 'o': ab, 'gate': False, 'up': False, 'down': False}
    c['qk_norm'] = arch == 'Qwen3ForCausalLM'

    # attention window
    c['sliding_window'] = None
    if arch == 'MistralForCausalLM':
        w = j.get('sliding_window', defaults['sliding_window'])
        if w is not None and not (_is_int(w) and w > 0):
            raise bad('sliding_window', 'a positive integer or null')
        c['sliding_window'] = w
    elif arch in ('Qwen2ForCausalLM', 'Qwen3ForCausalLM'):
        # Qwen2Config / Qwen3Config: sliding_window = sliding_window if use_sliding_window else None;
        # then max_window_layers only chooses which layers slide, and none does
        if j.get('use_sliding_window', False) is not False:
            raise bad('use_sliding_window', 'per-layer sliding windows are not modelled; false only')
        for k in ('sliding_window', 'max_window_layers'):
            if j.get(k) is not None and not _is_int(j[k]):
                raise bad(k, 'an integer or null')

    # RoPE: rope_scaling as LlamaRotaryEmbedding reads it (BC: "type" was the old "rope_type")
    rs = j.get('rope_scaling')
    c['rope'] = {'rope_type': 'default'}
    if rs is not None:
        if not isinstance(rs, dict):
            raise bad('rope_scaling', 'an object or null')
        rtype = rs.get('rope_type', rs.get('type'))
        allowed = {'llama': ('default', 'linear', 'llama3')}.get(model_type, ('default',))
        if rtype not in allowed:
            raise bad('rope_scaling', 'rope_type %r is not modelled for %s (%s only)' %
                      (rtype, arch, ', '.join(allowed)))
        need = {'default': set(), 'linear': {'factor'},
                'llama3': {'factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'}}[rtype]
        got = set(rs) - {'rope_type', 'type'}
        if got != need:
            raise bad('rope_scaling', 'rope_type %r takes exactly %s, got %s' % (rtype, sorted(need), sorted(got)))
        for k in need:
            if not (_is_num(rs[k]) and rs[k] > 0):
                raise bad('rope_scaling', '%s must be a positive number' % k)
        if rtype == 'llama3' and not rs['high_freq_factor'] > rs['low_freq_factor']:
            raise bad('rope_scaling', 'high_freq_factor must exceed low_freq_factor')
        c['rope'] = dict(rs, rope_type=rtype)
    return c


# ---------------------------------------------------------------------------------------------
# tensors: exactly the ones the model consumes

LINEARS = (('q', 'self_attn.q_proj'), ('k', 'self_attn.k_proj'), ('v', 'self_attn.v_proj'),
           ('o', 'self_attn.o_proj'), ('gate', 'mlp.gate_proj'), ('up', 'mlp.up_proj'),
           ('down', 'mlp.down_proj'))


def expected_tensors(c):
    """{name: shape} the model of config c reads: nn.Linear(in, out) stores weight [out, in]."""
    H, I, V = c['hidden_size'], c['intermediate_size'], c['vocab_size']
    nh, nkv, hd = c['num_attention_heads'], c['num_key_value_heads'], c['head_dim']
    rows = {'q': (nh * hd, H), 'k': (nkv * hd, H), 'v': (nkv * hd, H), 'o': (H, nh * hd),
            'gate': (I, H), 'up': (I, H), 'down': (H, I)}
    t = {'model.embed_tokens.weight': (V, H), 'model.norm.weight': (H,)}
    if not c['tied']:
        t['lm_head.weight'] = (V, H)
    for layer in range(c['num_hidden_layers']):
        p = 'model.layers.%d.' % layer
        t[p + 'input_layernorm.weight'] = (H,)
        t[p + 'post_attention_layernorm.weight'] = (H,)
        for short, mod in LINEARS:
            t[p + mod + '.weight'] = rows[short]
            if c['bias'][short]:
                t[p + mod + '.bias'] = (rows[short][0],)
        if c['qk_norm']:
            t[p + 'self_attn.q_norm.weight'] = (hd,)
            t[p + 'self_attn.k_norm.weight'] = (hd,)
    return t


def load(d):
    """(config, {name: float32 array}) of checkpoint directory d, strictly checked."""
    cpath = os.path.join(d, 'config.json')
    if not os.path.isfile(cpath):
        raise Refused('%s: no config.json' % d)
    c = parse_config(cpath)
    have = read_checkpoint(d)
    want = expected_tensors(c)
    for name, (a, path) in have.items():
        # a buffer of old checkpoints that transformers ignores on loading and recomputes
        if name.endswith('.self_attn.rotary_emb.inv_freq'):
            continue
        if name not in want:
            why = ' (tie_word_embeddings is true)' if name == 'lm_head.weight' else ''
            raise Refused("%s: tensor '%s' is not part of a %s of this config%s" % (path, name, c['arch'], why))
        if tuple(a.shape) != want[name]:
            raise Refused("%s: tensor '%s' has shape %s, expected %s" % (path, name, list(a.shape), list(want[name])))
    for name in want:
        if name not in have:
            raise Refused("%s: tensor '%s' is missing" % (d, name))
    return c, {n: have[n][0] for n in want}


# ---------------------------------------------------------------------------------------------
# the forward pass


def rope_inv_freq(c):
    """inv_freq [head_dim/2], float32, as modeling_rope_utils computes it."""
    dim = c['head_dim']  # partial_rotary_factor is 1.0 for all four families
    # _compute_default_rope_parameters:
    #   inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))
    # f32: the int64 arange becomes float32 and / dim is a float32 division; base ** tensor
    # gives a float32 tensor whose values are the correctly rounded pow (torch evaluates
    # Python-scalar ** float32-tensor as pow(double, double) rounded to float32: checked with
    # torch 1.13 on CPU, bit for bit; numpy's own float32 np.power is off by one ulp for e.g.
    # 100000 ** 0.125, glibc's powf is correctly rounded and agrees); 1.0 / is float32. All in
    # float64 instead, inv_freq differs in the 8th digit (up to 1.2e-7 relative).
    exps = np.arange(0, dim, 2, dtype=np.int64).astype(F32) / F32(dim)
    inv_freq = F32(1.0) / np.power(np.float64(c['rope_theta']), exps.astype(np.float64)).astype(F32)
    r = c['rope']
    if r['rope_type'] == 'linear':
        # _compute_linear_scaling_rope_parameters: inv_freq /= factor (float32 by a Python float)
        inv_freq = inv_freq / F32(r['factor'])
    elif r['rope_type'] == 'llama3':
        # _compute_llama3_parameters, operation by operation (all float32 tensors; the Python
        # floats meet them as float32 scalars)
        factor = F32(r['factor'])
        low_freq_factor, high_freq_factor = F32(r['low_freq_factor']), F32(r['high_freq_factor'])
        old_context_len = F32(r['original_max_position_embeddings'])
        low_freq_wavelen = F32(r['original_max_position_embeddings'] / r['low_freq_factor'])
        high_freq_wavelen = F32(r['original_max_position_embeddings'] / r['high_freq_factor'])
        wavelen = F32(2 * math.pi) / inv_freq
        inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed_inv_freq = (F32(1) - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
        is_medium_freq = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        inv_freq = np.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama).astype(F32)
    return inv_freq.astype(F32)


def rope_cos_sin(inv_freq, T):
    """LlamaRotaryEmbedding.forward: freqs = inv_freq @ position_ids in float32 (autocast off),
    emb = cat(freqs, freqs), cos/sin of it; attention_scaling is 1.0 for default, linear, llama3."""
    pos = np.arange(T, dtype=np.int64).astype(F32)
    freqs = pos[:, None] * inv_freq[None, :]  # a matmul over an inner dimension of 1: one product
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(F32), np.sin(emb).astype(F32)


def rotate_half(x):
    """modeling_llama.rotate_half: cat(-x2, x1) over the last dimension."""
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rms_norm(x, weight, eps):
    """LlamaRMSNorm (= Qwen3RMSNorm): variance = x.pow(2).mean(-1) in float32,
    x * rsqrt(variance + eps), then weight * x. f32: torch.rsqrt is one rounding, 1/sqrt two
    here: a difference in the last bit, at most."""
    x = x.astype(F32)
    variance = np.mean(x * x, axis=-1, keepdims=True, dtype=F32)
    x = x * (F32(1) / np.sqrt(variance + F32(eps)))
    return (weight * x).astype(F32)


def linear(x, w, b=None):
    """nn.Linear: x @ w.T (+ b), float32 (BLAS sgemm, float32 accumulation as torch's)."""
    y = x @ w.T
    return (y + b if b is not None else y).astype(F32)


def silu(x):
    """ACT2FN["silu"] = nn.SiLU: x * sigmoid(x), float32."""
    return (x / (F32(1) + np.exp(-x))).astype(F32)


def attention_mask(T, window):
    """masking_utils: causal_mask_function (kv_idx <= q_idx), and with a window
    sliding_window_overlay (kv_idx > q_idx - sliding_window): True where attended."""
    q = np.arange(T)[:, None]
    kv = np.arange(T)[None, :]
    allowed = kv <= q
    if window is not None:
        allowed &= kv > q - window
    return allowed


def forward(c, w, ids, window=True, adapter=None):
    """Logits [T, vocab] (float32) of one sequence: LlamaForCausalLM.forward with the
    attention of the family. window=False ignores a sliding window (for tests that show it
    matters). adapter (load_adapter's) adds its LoRA to the linears it targets, as a
    PeftModelForCausalLM over this model runs them."""
    T = len(ids)
    nh, nkv, hd, eps = c['num_attention_heads'], c['num_key_value_heads'], c['head_dim'], c['rms_norm_eps']
    n_rep = nh // nkv
    cos, sin = rope_cos_sin(rope_inv_freq(c), T)
    scaling = F32(hd ** -0.5)  # LlamaAttention: self.scaling = self.head_dim**-0.5
    mask = attention_mask(T, c['sliding_window'] if window else None)
    x = w['model.embed_tokens.weight'][np.asarray(ids)]  # LlamaModel: inputs_embeds
    for layer in range(c['num_hidden_layers']):
        p = 'model.layers.%d.' % layer

        def lin(short, mod, h):
            y = linear(h, w[p + mod + '.weight'], w.get(p + mod + '.bias'))
            if adapter is not None and (layer, mod) in adapter['lora']:
                # peft tuners/lora/layer.py Linear.forward: result = self.base_layer(x) (bias
                # included), then result + lora_B(lora_A(dropout(x))) * scaling; dropout is
                # the identity in eval mode; scaling a Python float meeting a float32 tensor
                a, b = adapter['lora'][(layer, mod)]
                y = (y + linear(linear(h, a), b) * F32(adapter['scaling'])).astype(F32)
            return y

        # LlamaDecoderLayer: residual + self_attn(input_layernorm(x))
        h = rms_norm(x, w[p + 'input_layernorm.weight'], eps)
        q = lin('q', 'self_attn.q_proj', h).reshape(T, nh, hd)
        k = lin('k', 'self_attn.k_proj', h).reshape(T, nkv, hd)
        v = lin('v', 'self_attn.v_proj', h).reshape(T, nkv, hd)
        if c['qk_norm']:
            # Qwen3Attention: q_norm(q_proj(h).view(..., head_dim)) before the transpose and RoPE
            q = rms_norm(q, w[p + 'self_attn.q_norm.weight'], eps)
            k = rms_norm(k, w[p + 'self_attn.k_norm.weight'], eps)
        q, k, v = q.transpose(1, 0, 2), k.transpose(1, 0, 2), v.transpose(1, 0, 2)  # [heads, T, hd]
        # apply_rotary_pos_emb: q * cos + rotate_half(q) * sin
        q = (q * cos[None]) + (rotate_half(q) * sin[None])
        k = (k * cos[None]) + (rotate_half(k) * sin[None])
        # eager_attention_forward: repeat_kv (kv head j serves query heads j*n_rep .. j*n_rep+n_rep-1)
        k = np.repeat(k, n_rep, axis=0)
        v = np.repeat(v, n_rep, axis=0)
        scores = (q @ k.transpose(0, 2, 1)) * scaling
        # + the mask (dtype min where masked), softmax(dim=-1, dtype=float32)
        scores = np.where(mask[None], scores, F32(-np.inf))
        scores = scores - scores.max(axis=-1, keepdims=True)
        e = np.exp(scores)
        probs = (e / e.sum(axis=-1, keepdims=True, dtype=F32)).astype(F32)
        attn = (probs @ v).transpose(1, 0, 2).reshape(T, nh * hd)
        x = (x + lin('o', 'self_attn.o_proj', attn)).astype(F32)
        # residual + mlp(post_attention_layernorm(x)); LlamaMLP: down(act(gate(x)) * up(x))
        h = rms_norm(x, w[p + 'post_attention_layernorm.weight'], eps)
        m = silu(lin('gate', 'mlp.gate_proj', h)) * lin('up', 'mlp.up_proj', h)
        x = (x + lin('down', 'mlp.down_proj', m)).astype(F32)
    x = rms_norm(x, w['model.norm.weight'], eps)
    head = w['model.embed_tokens.weight'] if c['tied'] else w['lm_head.weight']  # _tied_weights_keys
    return linear(x, head)


def evaluate(c, w, seqs, n_logits=8, window=True, adapter=None):
    """What `qlora-tool eval --tokens --json` reports (with --adapter: adapter, from
    load_adapter), plus per-sequence detail."""
    out, nll_sum, npred = [], 0.0, 0
    for i, ids in enumerate(seqs):
        if len(ids) < 2:
            raise ValueError('tokens[%d]: a sequence needs at least 2 tokens' % i)
        if max(ids) >= c['vocab_size'] or min(ids) < 0:
            raise ValueError('tokens[%d]: an id outside 0..%d' % (i, c['vocab_size'] - 1))
        logits = forward(c, w, ids, window, adapter)
        lg = logits[:-1].astype(np.float64)
        mx = lg.max(axis=-1, keepdims=True)
        logp = lg - mx - np.log(np.exp(lg - mx).sum(axis=-1, keepdims=True))
        nll = -logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]
        s = float(nll.sum())
        nll_sum += s
        npred += len(ids) - 1
        out.append({'n_predicted': len(ids) - 1, 'mean_nll': s / (len(ids) - 1),
                    'ppl': math.exp(s / (len(ids) - 1)),
                    'logits_sha256': hashlib.sha256(logits.astype('<f4').tobytes()).hexdigest(),
                    'logits': [[float(v) for v in row[:n_logits]] for row in logits]})
    return {'nll_sum': nll_sum, 'n_predicted': npred, 'ppl': math.exp(nll_sum / npred),
            'arch': c['arch'], 'sequences': out}


# ---------------------------------------------------------------------------------------------
# PEFT LoRA adapters, as peft loads them onto this model and runs them
# (peft, main branch: tuners/lora/config.py LoraConfig, config.py PeftConfig,
# tuners/lora/layer.py LoraLayer.update_layer and Linear.forward,
# tuners/tuners_utils.py check_target_module_exists, utils/save_and_load.py)

# adapter_config.json. Keys read here: peft_type, task_type, r, lora_alpha, lora_dropout
# (the identity in eval mode), use_rslora, target_modules, bias.
ADAPTER_INERT = {
    # PeftConfig bookkeeping: where the base came from, train/inference switch, versions
    'base_model_name_or_path', 'revision', 'inference_mode', 'auto_mapping', 'peft_version',
    # megatron_core only names a module for megatron_config (null here); qalora_group_size
    # only matters with use_qalora (false here); runtime_config is ephemeral_gpu_offload
    'megatron_core', 'qalora_group_size', 'runtime_config'}
# Keys that change what peft builds or computes: accepted at their defaults only (the
# values LoraConfig's own defaults, and save_pretrained, write), refused otherwise.
ADAPTER_DEFAULT_ONLY = {
    'fan_in_fan_out': (False,),                # nn.Linear would reset it, with a warning
    'modules_to_save': (None, []),             # full copies of other modules
    'layers_to_transform': (None, []),         # only some layers
    'layers_pattern': (None, [], ''),
    'exclude_modules': (None, []),
    'rank_pattern': ({}, None),                # per-module r
    'alpha_pattern': ({}, None),               # per-module lora_alpha: another scaling
    'init_lora_weights': (True, False, 'gaussian'),  # the others (pissa, olora, loftq, corda, eva...)
                                               # change the base weights at load
    'use_dora': (False,), 'lora_bias': (False,), 'use_qalora': (False,), 'layer_replication': (None,),
    'trainable_token_indices': (None,), 'target_parameters': (None, []), 'alora_invocation_tokens': (None,),
    'megatron_config': (None,), 'loftq_config': ({}, None), 'eva_config': (None,), 'corda_config': (None,),
    'lora_ga_config': (None,), 'velora_config': (None,), 'monteclora_config': (None,), 'arrow_config': (None,),
    'kasa_config': (None,), 'use_bdlora': (None,), 'ensure_weight_tying': (False,),
}
ADAPTER_READ = {'peft_type', 'task_type', 'r', 'lora_alpha', 'lora_dropout', 'use_rslora', 'target_modules', 'bias'}
# target_modules: names matched as peft does for a list (the module's full name, or its
# last dotted components: key.endswith('.' + name)); a string is a regular expression
# (re.fullmatch of the full name), of which only "all-linear" (every linear but the
# output layer) is modelled.
PEFT_TARGETS = {mod.split('.')[-1]: mod for _, mod in LINEARS}  # q_proj -> self_attn.q_proj
PEFT_PREFIX = 'base_model.model.'  # PeftModelForCausalLM.base_model (LoraModel) .model (the CausalLM)


def _same(v, allowed):
    """v is one of allowed, bool and int told apart (True == 1 in Python)."""
    return any(type(v) is type(a) and v == a for a in allowed)


def adapter_tensors(c, r, modules):
    """{name: shape} of the PEFT state dict (get_peft_model_state_dict: the adapter name
    removed) for rank r on the modules given (self_attn.q_proj ...): nn.Linear(in, r) and
    nn.Linear(r, out), weights [r x in] and [out x r]."""
    want = expected_tensors(c)
    t = {}
    for layer in range(c['num_hidden_layers']):
        for mod in (m for _, m in LINEARS if m in modules):
            out_f, in_f = want['model.layers.%d.%s.weight' % (layer, mod)]
            key = '%smodel.layers.%d.%s' % (PEFT_PREFIX, layer, mod)
            t[key + '.lora_A.weight'] = (r, in_f)
            t[key + '.lora_B.weight'] = (out_f, r)
    return t


def parse_adapter_config(path):
    """(r, scaling, modules) of adapter_config.json, or Refused naming the file and key."""
    j, bad = read_object(path)

    for k, v in j.items():
        if k in ADAPTER_DEFAULT_ONLY:
            if not _same(v, ADAPTER_DEFAULT_ONLY[k]):
                raise bad(k, '%r is not modelled (%s only)' % (v, ' or '.join(
                    json.dumps(a) for a in ADAPTER_DEFAULT_ONLY[k])))
        elif k not in ADAPTER_INERT and k not in ADAPTER_READ:
            raise bad(k, 'not a LoraConfig key this reference models')
    if j.get('peft_type') != 'LORA':  # PeftConfig.from_pretrained dispatches on it
        raise bad('peft_type', '"LORA" expected, got %r' % j.get('peft_type'))
    if j.get('task_type') not in ('CAUSAL_LM', None):
        raise bad('task_type', '"CAUSAL_LM" or null only (PeftModelForCausalLM)')
    r, alpha = j.get('r'), j.get('lora_alpha')
    if not (_is_int(r) and r > 0):
        raise bad('r', 'missing or not a positive integer')
    if not (_is_num(alpha) and alpha > 0):
        raise bad('lora_alpha', 'missing or not a positive number')
    drop = j.get('lora_dropout', 0.0)
    if not (_is_num(drop) and 0 <= drop < 1):
        raise bad('lora_dropout', 'not a number in [0, 1)')
    rs = j.get('use_rslora', False)
    if not isinstance(rs, bool):
        raise bad('use_rslora', 'not a boolean')
    if j.get('bias', 'none') != 'none':
        raise bad('bias', '"none" only (trained biases are not modelled)')
    tm = j.get('target_modules')
    if tm == 'all-linear':
        modules = set(PEFT_TARGETS.values())
    elif isinstance(tm, list) and tm and all(isinstance(n, str) for n in tm):
        unknown = [n for n in tm if n not in PEFT_TARGETS]
        if unknown:
            raise bad('target_modules', '%r: not among %s' % (unknown, sorted(PEFT_TARGETS)))
        modules = {PEFT_TARGETS[n] for n in tm}
    else:
        raise bad('target_modules', 'a non-empty list of module names or "all-linear" (a regular '
                  'expression is not modelled), got %r' % (tm,))
    # LoraLayer.update_layer: scaling = lora_alpha / math.sqrt(r) with use_rslora, else / r
    scaling = alpha / math.sqrt(r) if rs else alpha / r
    return r, scaling, modules


def load_adapter(c, d):
    """The PEFT adapter in directory d for the model of config c: {'r', 'scaling',
    'modules', 'lora': {(layer, module): (A [r x in], B [out x r])}}, every tensor of the
    state dict checked by name and shape, none missing or extra (peft itself only warns),
    rows in the Hugging Face order of the base's weights."""
    r, scaling, modules = parse_adapter_config(os.path.join(d, 'adapter_config.json'))
    path = os.path.join(d, 'adapter_model.safetensors')
    if not os.path.isfile(path):
        raise Refused('%s: no adapter_model.safetensors' % d)
    have = st_read(path)
    want = adapter_tensors(c, r, modules)
    for name, a in have.items():
        if name not in want:
            raise Refused("%s: tensor '%s' is not a LoRA tensor of r/target_modules for this %s" %
                          (path, name, c['arch']))
        if tuple(a.shape) != want[name]:
            raise Refused("%s: tensor '%s' has shape %s, expected %s" % (path, name, list(a.shape), list(want[name])))
        if not np.isfinite(a).all():
            raise Refused("%s: tensor '%s' holds a non-finite value" % (path, name))
    for name in want:
        if name not in have:
            raise Refused("%s: tensor '%s' is missing" % (path, name))
    lora = {}
    for layer in range(c['num_hidden_layers']):
        for mod in modules:
            key = '%smodel.layers.%d.%s' % (PEFT_PREFIX, layer, mod)
            lora[(layer, mod)] = (have[key + '.lora_A.weight'], have[key + '.lora_B.weight'])
    return {'r': r, 'scaling': scaling, 'modules': modules, 'lora': lora}


# LoraConfig's keys at their defaults, as save_pretrained writes them (every one of them,
# so that a reader is met by the whole set; those added by later versions of peft are
# ADAPTER_DEFAULT_ONLY too)
PEFT_CONFIG_DEFAULTS = {
    'alpha_pattern': {}, 'auto_mapping': None, 'base_model_name_or_path': None, 'bias': 'none',
    'corda_config': None, 'eva_config': None, 'exclude_modules': None, 'fan_in_fan_out': False,
    'inference_mode': True, 'init_lora_weights': True, 'layer_replication': None, 'layers_pattern': None,
    'layers_to_transform': None, 'loftq_config': {}, 'lora_bias': False, 'lora_dropout': 0.05,
    'megatron_config': None, 'megatron_core': 'megatron.core', 'modules_to_save': None, 'peft_type': 'LORA',
    'rank_pattern': {}, 'revision': None, 'task_type': 'CAUSAL_LM', 'trainable_token_indices': None,
    'use_dora': False, 'use_rslora': False}


def write_adapter(model_dir, outdir, r=4, alpha=8.0, targets=None, seed=1, rslora=False, dtype='F32', b_std=0.1):
    """A random PEFT adapter for the checkpoint in model_dir, in Hugging Face's own row order
    (nothing here knows of any other): adapter_config.json with LoraConfig's whole key set,
    adapter_model.safetensors with metadata {"format": "pt"} as save_pretrained writes it.
    A ~ N(0, 1/in), B ~ N(0, b_std^2): unlike peft's initialisation (B = 0), a B that shows."""
    c = parse_config(os.path.join(model_dir, 'config.json'))
    names = targets or sorted(PEFT_TARGETS)
    cfg = dict(PEFT_CONFIG_DEFAULTS, r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=names)
    modules = set(PEFT_TARGETS.values()) if names == 'all-linear' else {PEFT_TARGETS[n] for n in names}
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in adapter_tensors(c, r, modules).items():
        sd = 1 / math.sqrt(shape[1]) if '.lora_A.' in name else b_std
        tensors[name] = rng.normal(0, sd, shape).astype(F32)
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, 'adapter_config.json'), 'w') as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write('\n')
    st_write(os.path.join(outdir, 'adapter_model.safetensors'), tensors, dtype, {'format': 'pt'})
    return cfg


# ---------------------------------------------------------------------------------------------
# tiny checkpoints with the key sets of published models

def _published(name):
    """Config keys and values of a published model, shape keys excepted (filled by write)."""
    tinyllama = {  # TinyLlama/TinyLlama-1.1B-Chat-v1.0
        'architectures': ['LlamaForCausalLM'], 'attention_bias': False, 'bos_token_id': 1, 'eos_token_id': 2,
        'hidden_act': 'silu', 'initializer_range': 0.02, 'model_type': 'llama', 'pretraining_tp': 1,
        'rms_norm_eps': 1e-05, 'rope_scaling': None, 'rope_theta': 10000.0, 'tie_word_embeddings': False,
        'torch_dtype': 'bfloat16', 'transformers_version': '4.35.0', 'use_cache': True}
    llama32 = {  # meta-llama/Llama-3.2-1B
        'architectures': ['LlamaForCausalLM'], 'attention_bias': False, 'attention_dropout': 0.0,
        'bos_token_id': 128000, 'eos_token_id': 128001, 'hidden_act': 'silu', 'initializer_range': 0.02,
        'mlp_bias': False, 'model_type': 'llama', 'pretraining_tp': 1, 'rms_norm_eps': 1e-05,
        'rope_scaling': {'factor': 32.0, 'high_freq_factor': 4.0, 'low_freq_factor': 1.0,
                         'original_max_position_embeddings': 8192, 'rope_type': 'llama3'},
        'rope_theta': 500000.0, 'tie_word_embeddings': True, 'torch_dtype': 'bfloat16',
        'transformers_version': '4.45.0.dev0', 'use_cache': True}
    qwen3 = {  # Qwen/Qwen3-0.6B
        'architectures': ['Qwen3ForCausalLM'], 'attention_bias': False, 'attention_dropout': 0.0,
        'bos_token_id': 151643, 'eos_token_id': 151645, 'hidden_act': 'silu', 'initializer_range': 0.02,
        'max_window_layers': 28, 'model_type': 'qwen3', 'rms_norm_eps': 1e-06, 'rope_scaling': None,
        'rope_theta': 1000000, 'sliding_window': None, 'tie_word_embeddings': True, 'torch_dtype': 'bfloat16',
        'transformers_version': '4.51.0', 'use_cache': True, 'use_sliding_window': False}
    mistral01 = {  # mistralai/Mistral-7B-v0.1
        'architectures': ['MistralForCausalLM'], 'bos_token_id': 1, 'eos_token_id': 2, 'hidden_act': 'silu',
        'initializer_range': 0.02, 'model_type': 'mistral', 'rms_norm_eps': 1e-05, 'rope_theta': 10000.0,
        'sliding_window': 4096, 'tie_word_embeddings': False, 'torch_dtype': 'bfloat16',
        'transformers_version': '4.34.0.dev0', 'use_cache': True}
    return {
        'tinyllama': tinyllama,
        'smollm2': {  # HuggingFaceTB/SmolLM2-135M
            'architectures': ['LlamaForCausalLM'], 'attention_bias': False, 'attention_dropout': 0.0,
            'bos_token_id': 0, 'eos_token_id': 0, 'hidden_act': 'silu', 'initializer_range': 0.041666666666666664,
            'is_llama_config': True, 'mlp_bias': False, 'model_type': 'llama', 'pretraining_tp': 1,
            'rms_norm_eps': 1e-05, 'rope_interleaved': False, 'rope_scaling': None, 'rope_theta': 100000,
            'tie_word_embeddings': True, 'torch_dtype': 'bfloat16', 'transformers_version': '4.40.1',
            'use_cache': True},
        'llama32': llama32,
        # Llama-2-era linear interpolation (lmsys/vicuna-7b-v1.5-16k: {"type": "linear", "factor":
        # 4.0}, the old "type" spelling, no rope_theta key so the default 10000 applies, MHA)
        'llama-linear': {k: v for k, v in dict(tinyllama, rope_scaling={'factor': 4.0, 'type': 'linear'},
                                                 pad_token_id=0, torch_dtype='float16',
                                                 transformers_version='4.31.0').items()
                         if k not in ('rope_theta', 'attention_bias')},
        # no family member publishes both; Llama 3.2's key set with both biases on, untied
        'llama-bias': dict(llama32, attention_bias=True, mlp_bias=True, rope_scaling=None,
                           tie_word_embeddings=False),
        'mistral-v01': mistral01,
        'mistral-v03': dict(mistral01, attention_dropout=0.0, rope_theta=1000000.0, sliding_window=None,
                            transformers_version='4.42.0.dev0'),  # mistralai/Mistral-7B-v0.3
        'qwen25': {  # Qwen/Qwen2.5-0.5B
            'architectures': ['Qwen2ForCausalLM'], 'attention_dropout': 0.0, 'bos_token_id': 151643,
            'eos_token_id': 151643, 'hidden_act': 'silu', 'initializer_range': 0.02, 'max_window_layers': 24,
            'model_type': 'qwen2', 'rms_norm_eps': 1e-06, 'rope_theta': 1000000.0, 'sliding_window': 32768,
            'tie_word_embeddings': True, 'torch_dtype': 'bfloat16', 'transformers_version': '4.40.1',
            'use_cache': True, 'use_mrope': False, 'use_sliding_window': False},
        'qwen3': qwen3,
        # Qwen3 with attention_bias true (all four projections) and a separate head
        'qwen3-bias': dict(qwen3, attention_bias=True, tie_word_embeddings=False),
    }[name]


# Tiny shapes, per ARCH: (hidden, intermediate, layers, heads, kv heads, vocab, max positions,
# head_dim key or None). Every one keeps what makes its family differ: GQA, a head_dim unlike
# hidden/heads for Qwen3, an explicit head_dim key for Llama 3.2, MHA for the linear one.
SHAPES = {
    'tinyllama':    (64, 176, 2, 4, 2, 320, 2048, None),   # 2048/5632 = 64/176, 32:4 heads -> 4:2
    'smollm2':      (48, 128, 3, 3, 1, 288, 8192, None),   # 9 heads of 64 / 3 kv -> 3 heads of 16 / 1 kv
    'llama32':      (64, 256, 2, 4, 2, 320, 1024, 16),     # head_dim key; rope scaled below
    'llama-linear': (64, 172, 2, 4, 4, 320, 4096, None),   # MHA
    'llama-bias':   (64, 160, 2, 4, 2, 300, 1024, 16),
    'mistral-v01':  (64, 224, 2, 4, 1, 320, 512, None),    # 32:8 heads -> 4:1
    'mistral-v03':  (64, 224, 2, 4, 1, 328, 512, None),
    'qwen25':       (56, 304, 2, 7, 1, 330, 512, None),    # 896/14 heads of 64, 2 kv -> 56/7 heads of 8, 1 kv
    'qwen3':        (64, 192, 2, 4, 2, 320, 640, 32),      # head_dim 32 != 64/4
    'qwen3-bias':   (64, 192, 3, 4, 2, 300, 640, 32),
}

ARCHS = {name: _published(name) for name in SHAPES}


def make_config(arch, hidden, inter, layers, heads, kv, vocab, max_pos, head_dim, window):
    cfg = dict(_published(arch))
    cfg.update({'hidden_size': hidden, 'intermediate_size': inter, 'num_hidden_layers': layers,
                'num_attention_heads': heads, 'vocab_size': vocab, 'max_position_embeddings': max_pos})
    if arch != 'llama-linear':  # vicuna's config has num_key_value_heads too, = heads
        cfg['num_key_value_heads'] = kv
    else:
        cfg['num_key_value_heads'] = heads
    if head_dim is not None:
        cfg['head_dim'] = head_dim
    if arch == 'llama32':
        # scaled with the model: an original context of 64 positions (8192 in the real one) so
        # that positions 0..31 meet all three regimes of _compute_llama3_parameters (head_dim 16,
        # theta 5e5: wavelengths 6.3 (kept), 32 (smoothed), 167 and above (divided by 32))
        cfg['rope_scaling'] = dict(cfg['rope_scaling'], original_max_position_embeddings=64)
    if arch == 'mistral-v01':
        cfg['sliding_window'] = window  # 4096 of 32768 positions, scaled down
    if arch == 'qwen25':
        cfg['sliding_window'] = max_pos  # = max_position_embeddings, as published
        cfg['max_window_layers'] = layers
    if arch.startswith('qwen3'):
        cfg['max_window_layers'] = layers
    return dict(sorted(cfg.items()))


def random_weights(c, seed):
    """Weights that make every part show: unit-gain linears (sd 1/sqrt(fan_in)), biases of sd
    0.5, norm weights uniform in 0.5..1.5 (not ones, so that a norm left out changes the
    numbers), embeddings and head of sd 0.15 (logits of sd ~1: a perplexity near the
    vocabulary's on random tokens, as an untrained model's). Generated in name order, float32."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_tensors(c).items():
        if name.endswith('norm.weight'):
            a = rng.uniform(0.5, 1.5, shape)
        elif name.endswith('.bias'):
            a = rng.normal(0, 0.5, shape)
        elif name in ('model.embed_tokens.weight', 'lm_head.weight'):
            a = rng.normal(0, 0.15, shape)
        else:
            a = rng.normal(0, 1 / math.sqrt(shape[1]), shape)
        out[name] = a.astype(F32)
    return out


def write(arch, outdir, seed=1, dtype='F32', shards=1, hidden=None, intermediate=None, layers=None,
          heads=None, kv_heads=None, vocab=None, max_pos=None, head_dim=None, window=16):
    """Writes config.json and the safetensors (one file, or `shards` files with an index)."""
    h, i, l, nh, nkv, v, mp, hd = SHAPES[arch]
    cfg = make_config(arch, hidden or h, intermediate or i, layers or l, heads or nh, kv_heads or nkv,
                      vocab or v, max_pos or mp, head_dim if head_dim is not None else hd, window)
    cfg['torch_dtype'] = {'F32': 'float32', 'BF16': 'bfloat16', 'F16': 'float16'}[dtype]
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, 'config.json'), 'w') as f:
        json.dump(cfg, f, indent=2)
        f.write('\n')
    c = parse_config(os.path.join(outdir, 'config.json'))
    w = random_weights(c, seed)
    names = list(w)
    if shards <= 1:
        st_write(os.path.join(outdir, 'model.safetensors'), w, dtype)
    else:
        weight_map = {}
        per = -(-len(names) // shards)
        for s in range(shards):
            fn = 'model-%05d-of-%05d.safetensors' % (s + 1, shards)
            part = {n: w[n] for n in names[s * per:(s + 1) * per]}
            st_write(os.path.join(outdir, fn), part, dtype)
            weight_map.update(dict.fromkeys(part, fn))
        with open(os.path.join(outdir, 'model.safetensors.index.json'), 'w') as f:
            json.dump({'metadata': {}, 'weight_map': weight_map}, f, indent=2)
    return cfg


# ---------------------------------------------------------------------------------------------

def read_tokens(path):
    """The file qlora-tool eval --tokens reads: a non-empty JSON array of token-id arrays."""
    with open(path) as f:
        seqs = json.load(f)
    if not (isinstance(seqs, list) and seqs and all(isinstance(s, list) for s in seqs)):
        raise ValueError('%s must hold a non-empty array of token-id arrays' % path)
    for i, s in enumerate(seqs):
        for k, t in enumerate(s):
            if not (_is_int(t) and t >= 0):
                raise ValueError('%s: [%d][%d] is not a non-negative integer' % (path, i, k))
    return seqs


def main(argv):
    ap = argparse.ArgumentParser(prog='hf_arch.py', description=__doc__.split('\n\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    w = sub.add_parser('write', help='a tiny random checkpoint of ARCH')
    w.add_argument('arch', choices=sorted(SHAPES))
    w.add_argument('outdir')
    w.add_argument('--seed', type=int, default=1)
    w.add_argument('--dtype', choices=('F32', 'BF16', 'F16'), default='F32')
    w.add_argument('--shards', type=int, default=1)
    for opt in ('hidden', 'intermediate', 'layers', 'heads', 'kv-heads', 'vocab', 'max-pos', 'head-dim'):
        w.add_argument('--' + opt, type=int)
    w.add_argument('--window', type=int, default=16, help='mistral-v01 sliding_window (default 16)')
    e = sub.add_parser('eval', help='NLL and perplexity of a tokens file, as qlora-tool eval --json')
    e.add_argument('dir')
    e.add_argument('tokens')
    e.add_argument('--logits', type=int, default=8, help='logits kept per position (default 8)')
    e.add_argument('--no-window', action='store_true', help='ignore a sliding window (diagnostics)')
    e.add_argument('--adapter', metavar='PEFT_DIR', help='with this PEFT LoRA adapter applied')
    wa = sub.add_parser('write-adapter', help='a random PEFT LoRA adapter for the checkpoint in DIR')
    wa.add_argument('dir')
    wa.add_argument('outdir')
    wa.add_argument('--rank', type=int, default=4)
    wa.add_argument('--alpha', type=float, default=8.0)
    wa.add_argument('--targets', help='comma-separated peft names (q_proj,...) or all-linear (default: all seven)')
    wa.add_argument('--seed', type=int, default=1)
    wa.add_argument('--rslora', action='store_true')
    wa.add_argument('--dtype', choices=('F32', 'BF16', 'F16'), default='F32')
    sub.add_parser('archs', help='the ARCH names')
    a = ap.parse_args(argv)
    try:
        if a.cmd == 'archs':
            for name in SHAPES:
                print(name)
        elif a.cmd == 'write':
            write(a.arch, a.outdir, a.seed, a.dtype, a.shards, a.hidden, a.intermediate, a.layers, a.heads,
                  a.kv_heads, a.vocab, a.max_pos, a.head_dim, a.window)
        elif a.cmd == 'write-adapter':
            targets = None if a.targets is None else a.targets if a.targets == 'all-linear' else a.targets.split(',')
            write_adapter(a.dir, a.outdir, a.rank, a.alpha, targets, a.seed, a.rslora, a.dtype)
        else:
            c, weights = load(a.dir)
            adapter = load_adapter(c, a.adapter) if a.adapter else None
            print(json.dumps(evaluate(c, weights, read_tokens(a.tokens), a.logits, not a.no_window, adapter)))
    except Refused as err:
        print('hf_arch.py %s: %s' % (a.cmd, err), file=sys.stderr)
        return 1
    except ValueError as err:
        print('hf_arch.py %s: %s' % (a.cmd, err), file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
