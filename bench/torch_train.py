#!/usr/bin/python3
"""torch_train.py: the PyTorch CPU reference for bench_train's training throughput.

The same Llama shapes as the model bench_train measures (tied classifier, RMSNorm, RoPE,
causal attention, SwiGLU), a frozen fp32 base (requires_grad False) standing in for the
dequantized one (fp32 matmul speed does not depend on the values, so the weights are
random), LoRA of rank r on all seven linears (PEFT init: A kaiming-uniform, B zero,
scale alpha / r), next-token cross-entropy, AdamW on the LoRA parameters only, and one
optimizer step per batch of batch x seq_len random tokens. Prints `tokens/s X`: the
best of --steps timed steps after one warm-up step. The OpenBLAS thread count comes from
OPENBLAS_NUM_THREADS (set before torch loads), torch's own from --threads.
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F


class LoRALinear(torch.nn.Module):
    def __init__(self, out, inp, rank, alpha):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out, inp) / math.sqrt(inp), requires_grad=False)
        self.lora_A = torch.nn.Parameter(torch.empty(rank, inp))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = torch.nn.Parameter(torch.zeros(out, rank))
        self.scale = alpha / rank

    def forward(self, x):
        return x @ self.weight.t() + self.scale * ((x @ self.lora_A.t()) @ self.lora_B.t())


def rmsnorm(x, w, eps=1e-5):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class Llama(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = a
        D, H, KV = a.dim, a.hidden, a.dim // a.heads * a.kv_heads
        self.embed = torch.nn.Parameter(torch.randn(a.vocab, D) * 0.02, requires_grad=False)
        self.layers = torch.nn.ModuleList()
        for _ in range(a.layers):
            self.layers.append(torch.nn.ModuleDict({
                'q': LoRALinear(D, D, a.rank, 2 * a.rank), 'k': LoRALinear(KV, D, a.rank, 2 * a.rank),
                'v': LoRALinear(KV, D, a.rank, 2 * a.rank), 'o': LoRALinear(D, D, a.rank, 2 * a.rank),
                'gate': LoRALinear(H, D, a.rank, 2 * a.rank), 'up': LoRALinear(H, D, a.rank, 2 * a.rank),
                'down': LoRALinear(D, H, a.rank, 2 * a.rank)}))
        self.norms = torch.nn.Parameter(torch.ones(2 * a.layers + 1, D), requires_grad=False)
        hs = D // a.heads
        freqs = 1.0 / (10000.0 ** (torch.arange(0, hs, 2).float() / hs))
        ang = torch.outer(torch.arange(a.seq_len).float(), freqs)
        self.cos, self.sin = ang.cos(), ang.sin()
        self.mask = torch.ones(a.seq_len, a.seq_len, dtype=torch.bool).triu(1)

    def rope(self, x):  # x [B, heads, T, hs], pairs (2i, 2i+1) as llama2.c
        x0, x1 = x[..., 0::2], x[..., 1::2]
        c, s = self.cos[:x.shape[2]], self.sin[:x.shape[2]]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), -1).flatten(-2)

    def forward(self, tokens):
        a = self.a
        B, T = tokens.shape
        hs = a.dim // a.heads
        x = self.embed[tokens]
        for i, l in enumerate(self.layers):
            xn = rmsnorm(x, self.norms[2 * i])
            q = self.rope(l['q'](xn).view(B, T, a.heads, hs).transpose(1, 2))
            k = self.rope(l['k'](xn).view(B, T, a.kv_heads, hs).transpose(1, 2))
            v = l['v'](xn).view(B, T, a.kv_heads, hs).transpose(1, 2)
            if a.kv_heads != a.heads:
                k = k.repeat_interleave(a.heads // a.kv_heads, 1)
                v = v.repeat_interleave(a.heads // a.kv_heads, 1)
            # Debian's torch 1.13 has no scaled_dot_product_attention
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
            att = torch.softmax(scores.masked_fill(self.mask[:T, :T], -math.inf), -1) @ v
            x = x + l['o'](att.transpose(1, 2).reshape(B, T, a.dim))
            xn = rmsnorm(x, self.norms[2 * i + 1])
            x = x + l['down'](F.silu(l['gate'](xn)) * l['up'](xn))
        return rmsnorm(x, self.norms[-1]) @ self.embed.t()


def main():
    ap = argparse.ArgumentParser()
    for name in ('dim', 'hidden', 'layers', 'heads', 'kv-heads', 'vocab', 'batch', 'seq-len'):
        ap.add_argument('--' + name, type=int, required=True)
    ap.add_argument('--rank', type=int, default=16)
    ap.add_argument('--steps', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Llama(a)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    best = math.inf
    for step in range(a.steps + 1):
        seq = torch.randint(0, a.vocab, (a.batch, a.seq_len + 1), generator=g)
        t0 = time.perf_counter()
        logits = model(seq[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, a.vocab), seq[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if step > 0:
            best = min(best, dt)
    print('tokens/s %.3f' % (a.batch * a.seq_len / best))


if __name__ == '__main__':
    main()
