#!/usr/bin/python3
"""The architectures of issue 17 against the independent reference tests/ref/hf_arch.py
(numpy, read from transformers' modeling files): for every ARCH a tiny random checkpoint
with the config key set of a published model, evaluated by `qlora-tool eval` in f32 (equal
to the reference within 1e-4 relative) and in every quantized format (finite, and within
the bound below of the reference); the refusals the loader must make, each naming the file
and the key or tensor; and make-model's output evaluated alike by both. TAP output.

usage: test_arch.py TOOL SHARED_DIR"""

import json
import math
import os
import random
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref'))

import hf_arch  # noqa: E402
import tap  # noqa: E402
from tap import case  # noqa: E402

TOOL, SHARED = sys.argv[1], sys.argv[2]
REL = 1e-4  # f32 against the reference: both float32, only the order of the sums differs

# Quantized formats (quant/include/quant.h QT_FORMATS; qlora-tool eval --quant) and the bound
# on |mean NLL (nats/token) of qlora-tool eval --quant F - the reference's f32 mean NLL|.
# Measured on 30 checkpoints (every ARCH, seeds 1-3) by the reference fed the weights of
# every linear passed through `qlora-tool roundtrip --format F` (which reproduces
# qlora-tool eval --quant F to 4 decimals where eval runs today), the largest shifts were:
# int8 0.009, nf4 0.13, fp4 0.14, int4 0.13, bitnet1 0.59, ternary 0.49 (of mean NLLs of
# 6.1-7.1; log(vocab) ~5.8). The bounds are about twice those: room for another summation
# order, small enough that a wrong code table, a block scale off by a factor or a linear fed
# another's weights goes past them (int8's bound is a tenth of nf4's shift, nf4's under half
# of 1-bit's). The f32 match is what proves the architecture; these prove the quantized
# kernels run it.
QUANT_BOUND = {'int8': 0.03, 'nf4': 0.3, 'fp4': 0.3, 'int4': 0.3, 'bitnet1': 1.2, 'ternary': 1.0}

tmp = tempfile.mkdtemp(prefix='qlora-arch-')
rng = random.Random(17)
# sequences of 16, 9, 2 and 12 tokens (bos first), ids under the smallest vocabulary; none
# longer than mistral-v01's sliding_window of 16
SEQS = [[1] + [rng.randrange(3, 288) for _ in range(n - 1)] for n in (16, 9, 2, 12)]
tokens = os.path.join(tmp, 'tokens.json')
with open(tokens, 'w') as f:
    json.dump(SEQS, f)


def tool(*args):
    return tap.run(TOOL, *args)


def tool_eval(model, *extra, toks=None):
    rc, out, err = tool('eval', '--model', model, '--tokens', toks or tokens, '--json', *extra)
    assert rc == 0, 'qlora-tool eval %s failed (%d): %s' % (' '.join(extra), rc, err.strip())
    return json.loads(out)


def reference(model, toks=None, window=True):
    c, w = hf_arch.load(model)
    seqs = SEQS if toks is None else hf_arch.read_tokens(toks)
    return hf_arch.evaluate(c, w, seqs, 0, window)


def close(got, want, rel, what):
    assert abs(got - want) <= rel * abs(want), '%s: qlora-tool %.10g, reference %.10g (rel %.2e > %.0e)' % (
        what, got, want, abs(got - want) / abs(want), rel)


_written = {}


def checkpoint(arch, dtype='F32', shards=1):
    key = (arch, dtype, shards)
    if key not in _written:
        d = os.path.join(tmp, '%s-%s-%d' % (arch, dtype, shards))
        hf_arch.write(arch, d, seed=1, dtype=dtype, shards=shards)
        _written[key] = (d, reference(d))
    return _written[key]


def variant(arch, name, edit_config=None, edit_tensors=None):
    """A copy of arch's F32 checkpoint with its config and/or tensors edited."""
    src, _ = checkpoint(arch)
    d = os.path.join(tmp, '%s-%s' % (arch, name))
    shutil.copytree(src, d)
    if edit_config:
        p = os.path.join(d, 'config.json')
        cfg = json.load(open(p))
        edit_config(cfg)
        json.dump(cfg, open(p, 'w'), indent=2)
    if edit_tensors:
        p = os.path.join(d, 'model.safetensors')
        t = hf_arch.st_read(p)
        edit_tensors(t)
        hf_arch.st_write(p, t, 'F32')
    return d


# ---- the reference itself: each feature an ARCH adds moves the numbers ----------------------

def ablated(arch, change):
    """The reference's nll_sum with one feature of arch taken away."""
    d, ref = checkpoint(arch)
    c, w = hf_arch.load(d)
    c, w = dict(c), dict(w)
    change(c, w)
    return ref['nll_sum'], hf_arch.evaluate(c, w, SEQS, 0)['nll_sum']


def zero(*suffixes):
    def change(c, w):
        for n in list(w):
            if n.endswith(suffixes):
                w[n] = w[n] * 0
    return change


def ones(*suffixes):
    def change(c, w):
        for n in list(w):
            if n.endswith(suffixes):
                w[n] = w[n] * 0 + 1
    return change


def no_rope_scaling(c, w):
    c['rope'] = {'rope_type': 'default'}


ABLATIONS = {
    'tinyllama': [('norm weights', ones('layernorm.weight', 'model.norm.weight'))],
    'smollm2': [('norm weights', ones('layernorm.weight', 'model.norm.weight'))],
    'llama32': [('rope_scaling llama3', no_rope_scaling)],
    'llama-linear': [('rope_scaling linear', no_rope_scaling)],
    'llama-bias': [('attention biases', zero('self_attn.q_proj.bias', 'self_attn.k_proj.bias',
                                             'self_attn.v_proj.bias', 'self_attn.o_proj.bias')),
                   ('o_proj bias', zero('self_attn.o_proj.bias')),
                   ('mlp biases', zero('mlp.gate_proj.bias', 'mlp.up_proj.bias', 'mlp.down_proj.bias'))],
    'mistral-v01': [],  # its window is shown by the long sequence below
    'mistral-v03': [('norm weights', ones('layernorm.weight', 'model.norm.weight'))],
    'qwen25': [('q/k/v biases', zero('q_proj.bias', 'k_proj.bias', 'v_proj.bias')),
               ('k bias', zero('k_proj.bias'))],
    'qwen3': [('q_norm/k_norm', ones('q_norm.weight', 'k_norm.weight')),
              ('k_norm', ones('k_norm.weight'))],
    'qwen3-bias': [('attention biases', zero('_proj.bias')), ('o_proj bias', zero('o_proj.bias')),
                   ('q_norm/k_norm', ones('q_norm.weight', 'k_norm.weight'))],
}


@case('reference: each feature of an ARCH moves nll_sum by more than 10x the f32 tolerance')
def _():
    weak = []
    for arch, items in ABLATIONS.items():
        for what, change in items:
            ref, without = ablated(arch, change)
            if abs(without - ref) <= 10 * REL * abs(ref):
                weak.append('%s without %s: %.8g vs %.8g' % (arch, what, without, ref))
    d, _ = checkpoint('mistral-v01')
    c, w = hf_arch.load(d)
    long_seq = [[1] + [rng.randrange(3, 288) for _ in range(39)]]
    a, b = (hf_arch.evaluate(c, w, long_seq, 0, win)['nll_sum'] for win in (True, False))
    if abs(a - b) <= 10 * REL * abs(b):
        weak.append('mistral-v01 sliding window on 40 tokens: %.8g vs %.8g' % (a, b))
    assert not weak, 'features that would go unnoticed: ' + '; '.join(weak)


# ---- every ARCH through qlora-tool --------------------------------------------------------

def f32_case(arch, dtype='F32', shards=1):
    @case('%s%s: qlora-tool eval --quant f32 equals the reference (1e-4 relative)' % (
        arch, '' if dtype == 'F32' else ' %s in %d shards' % (dtype, shards)))
    def _():
        d, ref = checkpoint(arch, dtype, shards)
        got = tool_eval(d, '--quant', 'f32')
        assert got['n_predicted'] == ref['n_predicted'], (got, ref['n_predicted'])
        close(got['nll_sum'], ref['nll_sum'], REL, 'nll_sum')
        close(got['ppl'], ref['ppl'], REL, 'ppl')


def quant_case(arch, fmt):
    @case('%s: qlora-tool eval --quant %s is finite and within %.2g nats/token of the reference' % (
        arch, fmt, QUANT_BOUND[fmt]))
    def _():
        d, ref = checkpoint(arch)
        got = tool_eval(d, '--quant', fmt)
        assert math.isfinite(got['nll_sum']) and math.isfinite(got['ppl']), got
        shift = got['nll_sum'] / got['n_predicted'] - ref['nll_sum'] / ref['n_predicted']
        assert abs(shift) <= QUANT_BOUND[fmt], 'mean NLL moved by %.4f nats/token' % shift


for arch in hf_arch.SHAPES:
    f32_case(arch)
f32_case('tinyllama', 'BF16', 2)
f32_case('qwen3', 'BF16', 2)
f32_case('qwen25', 'F16', 1)
for arch in hf_arch.SHAPES:
    for fmt in QUANT_BOUND:
        quant_case(arch, fmt)


@case('mistral-v01: a sequence longer than sliding_window is refused, naming it')
def _():
    d, _ = checkpoint('mistral-v01')
    long_tokens = os.path.join(tmp, 'long.json')
    json.dump([[1] + [rng.randrange(3, 288) for _ in range(16)]], open(long_tokens, 'w'))  # 17 > 16
    rc, out, err = tool('eval', '--model', d, '--tokens', long_tokens, '--json')
    assert rc != 0, 'accepted 17 tokens with a window of 16: %s' % out
    assert 'sliding_window' in err, err


# ---- refusals: (ARCH, name, config edit, tensor edit, needles of the message) ---------------

def cfg_set(**kv):
    return lambda cfg: cfg.update(kv)


def t_add(name, shape):
    return lambda t: t.__setitem__(name, hf_arch.np.full(shape, 0.5, dtype=hf_arch.F32))


def t_drop(name):
    return lambda t: t.pop(name)


def file_of(name):
    return lambda d: os.path.join(d, name)


def lit(s):
    return lambda d: s


REFUSALS = [
    ('tinyllama', 'unknown-arch', cfg_set(architectures=['GemmaForCausalLM'], model_type='gemma'), None,
     [file_of('config.json'), lit('architectures')]),
    ('llama32', 'rope-yarn', cfg_set(rope_scaling={'rope_type': 'yarn', 'factor': 4.0,
                                                   'original_max_position_embeddings': 64}), None,
     [file_of('config.json'), lit('rope_scaling')]),
    ('llama32', 'rope-dynamic', cfg_set(rope_scaling={'type': 'dynamic', 'factor': 2.0}), None,
     [file_of('config.json'), lit('rope_scaling')]),
    ('mistral-v03', 'attention-bias', cfg_set(attention_bias=True), None,
     [file_of('config.json'), lit('attention_bias')]),
    ('qwen25', 'sliding', cfg_set(use_sliding_window=True), None,
     [file_of('config.json'), lit('use_sliding_window')]),
    ('tinyllama', 'extra-bias', None, t_add('model.layers.0.self_attn.q_proj.bias', (64,)),
     [file_of('model.safetensors'), lit('model.layers.0.self_attn.q_proj.bias')]),
    ('qwen25', 'extra-o-bias', None, t_add('model.layers.0.self_attn.o_proj.bias', (56,)),
     [file_of('model.safetensors'), lit('model.layers.0.self_attn.o_proj.bias')]),
    ('tinyllama', 'missing', None, t_drop('model.layers.1.mlp.down_proj.weight'),
     [lit('model.layers.1.mlp.down_proj.weight')]),
    ('qwen3', 'missing-k-norm', None, t_drop('model.layers.1.self_attn.k_norm.weight'),
     [lit('model.layers.1.self_attn.k_norm.weight')]),
    ('qwen25', 'missing-v-bias', None, t_drop('model.layers.0.self_attn.v_proj.bias'),
     [lit('model.layers.0.self_attn.v_proj.bias')]),
]


def refusal_case(arch, name, cfg_edit, t_edit, needles):
    @case('%s %s: qlora-tool eval refuses it, naming the file and the key or tensor' % (arch, name))
    def _():
        d = variant(arch, name, cfg_edit, t_edit)
        rc, out, err = tool('eval', '--model', d, '--tokens', tokens, '--json')
        assert rc == 1, 'exit status %d, expected 1 (stdout %r, stderr %r)' % (rc, out, err)
        # a missing tensor has no file of its own: the directory is named
        for n in [lambda d: d] + needles:
            assert n(d) in err, '%r not in %r' % (n(d), err.strip())


for r in REFUSALS:
    refusal_case(*r)


@case('reference: refuses what it does not model (yarn, dynamic, an extra or missing tensor...)')
def _():
    bad = []
    for arch, name, cfg_edit, t_edit, needles in REFUSALS:
        d = variant(arch, 'ref-' + name, cfg_edit, t_edit)
        try:
            hf_arch.load(d)
            bad.append('%s: loaded' % name)
        except hf_arch.Refused as e:
            if not all(n(d) in str(e) for n in needles):
                bad.append('%s: %s' % (name, e))
    assert not bad, '; '.join(bad)


# ---- make-model (the C writer) read alike by both ------------------------------------------

MAKE_MODEL = [
    ('llama', []),
    ('llama-bias-llama3', ['--arch', 'llama', '--bias', '--untied', '--rope-scaling', 'llama3', '--rope-factor', '8',
                           '--rope-theta', '500000', '--init-std', '0.15']),
    ('llama-linear', ['--arch', 'llama', '--rope-scaling', 'linear', '--rope-factor', '4', '--init-std', '0.15']),
    ('mistral', ['--arch', 'mistral', '--init-std', '0.15']),
    ('qwen2', ['--arch', 'qwen2', '--init-std', '0.15']),
    ('qwen3', ['--arch', 'qwen3', '--head-dim', '24', '--bias', '--untied', '--init-std', '0.15']),
]


for name, extra in MAKE_MODEL:
    @case('make-model %s: qlora-tool and the reference evaluate its output alike' % name)
    def _(extra=extra, name=name):
        d = os.path.join(tmp, 'make-model-' + name)
        rc, out, err = tool('make-model', '--dim', '64', '--hidden', '160', '--layers', '2', '--heads', '4',
                            '--kv-heads', '2', '--vocab', '320', '--seq-len', '64', *extra, '--out', d)
        assert rc == 0, err
        ref = reference(d)
        got = tool_eval(d)
        close(got['nll_sum'], ref['nll_sum'], REL, 'nll_sum')
        close(got['ppl'], ref['ppl'], REL, 'ppl')


shutil.rmtree(tmp)
tap.report()
