#!/usr/bin/python3
"""hf_arch_torch.py: a second transcription of the forward pass, in torch, written apart from
hf_arch.py's numpy one, to check it (not used by the tests, which need numpy only).

    hf_arch_torch.py DIR TOKENS.json      prints nll_sum / n_predicted / ppl as JSON

It shares only the checkpoint reading (hf_arch.load: config and tensors); the math is
transformers' modules as written there: torch.arange(0, dim, 2, dtype=torch.int64).float(),
torch.rsqrt, torch.nn.functional.softmax(dtype=torch.float32), repeat_kv by expand/reshape,
an additive mask of finfo.min, F.linear, F.silu, F.cross_entropy in float32."""

import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_arch  # noqa: E402  (only load() and read_tokens())


def inv_freq_of(c):
    dim = c['head_dim']
    inv_freq = 1.0 / (c['rope_theta'] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    r = c['rope']
    if r['rope_type'] == 'linear':
        inv_freq /= r['factor']
    elif r['rope_type'] == 'llama3':
        factor, low, high = r['factor'], r['low_freq_factor'], r['high_freq_factor']
        old = r['original_max_position_embeddings']
        low_wl, high_wl = old / low, old / high
        wavelen = 2 * math.pi / inv_freq
        inv_l = torch.where(wavelen > low_wl, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
        inv_freq = torch.where(medium, smoothed, inv_l)
    return inv_freq


def rms(x, w, eps):
    v = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(v + eps))


def rot(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def logits_of(c, w, ids):
    T = len(ids)
    nh, nkv, hd, eps = c['num_attention_heads'], c['num_key_value_heads'], c['head_dim'], c['rms_norm_eps']
    pos = torch.arange(T)[None, :].float()
    freqs = (inv_freq_of(c)[None, :, None].float() @ pos[:, None, :]).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [1, 1, T, hd]
    q_i, kv_i = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = kv_i <= q_i
    if c['sliding_window'] is not None:
        allowed = allowed & (kv_i > q_i - c['sliding_window'])
    mask = torch.zeros(T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)
    x = F.embedding(torch.tensor([ids]), w['model.embed_tokens.weight'])
    for layer in range(c['num_hidden_layers']):
        p = 'model.layers.%d.' % layer
        get = w.get
        h = rms(x, w[p + 'input_layernorm.weight'], eps)
        q = F.linear(h, w[p + 'self_attn.q_proj.weight'], get(p + 'self_attn.q_proj.bias')).view(1, T, -1, hd)
        k = F.linear(h, w[p + 'self_attn.k_proj.weight'], get(p + 'self_attn.k_proj.bias')).view(1, T, -1, hd)
        v = F.linear(h, w[p + 'self_attn.v_proj.weight'], get(p + 'self_attn.v_proj.bias')).view(1, T, -1, hd)
        if c['qk_norm']:
            q = rms(q, w[p + 'self_attn.q_norm.weight'], eps)
            k = rms(k, w[p + 'self_attn.k_norm.weight'], eps)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        n_rep = nh // nkv
        k = k[:, :, None].expand(1, nkv, n_rep, T, hd).reshape(1, nh, T, hd)
        v = v[:, :, None].expand(1, nkv, n_rep, T, hd).reshape(1, nh, T, hd)
        a = torch.matmul(q, k.transpose(2, 3)) * hd ** -0.5 + mask
        a = F.softmax(a, dim=-1, dtype=torch.float32)
        o = torch.matmul(a, v).transpose(1, 2).reshape(1, T, -1)
        x = x + F.linear(o, w[p + 'self_attn.o_proj.weight'], get(p + 'self_attn.o_proj.bias'))
        h = rms(x, w[p + 'post_attention_layernorm.weight'], eps)
        m = F.silu(F.linear(h, w[p + 'mlp.gate_proj.weight'], get(p + 'mlp.gate_proj.bias'))) * \
            F.linear(h, w[p + 'mlp.up_proj.weight'], get(p + 'mlp.up_proj.bias'))
        x = x + F.linear(m, w[p + 'mlp.down_proj.weight'], get(p + 'mlp.down_proj.bias'))
    x = rms(x, w['model.norm.weight'], eps)
    return F.linear(x, w['model.embed_tokens.weight'] if c['tied'] else w['lm_head.weight'])[0]


def main(d, tokens):
    c, w = hf_arch.load(d)
    w = {n: torch.from_numpy(a.copy()) for n, a in w.items()}
    nll, n = 0.0, 0
    with torch.no_grad():
        for ids in hf_arch.read_tokens(tokens):
            lg = logits_of(c, w, ids)
            nll += float(F.cross_entropy(lg[:-1], torch.tensor(ids[1:]), reduction='sum'))
            n += len(ids) - 1
    print(json.dumps({'nll_sum': nll, 'n_predicted': n, 'ppl': math.exp(nll / n)}))


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
