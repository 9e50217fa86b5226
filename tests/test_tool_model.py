#!/usr/bin/python3
"""qlora-tool's model commands end to end: make-model, eval, generate, inspect, and every
kind of broken model file, each of which must give one clear error naming the file and
tensor at fault. TAP output.

usage: test_tool_model.py TOOL SHARED_DIR"""

import json
import os
import subprocess
import shutil
import struct
import sys
import tempfile

import numpy as np

import tap
from tap import case, read_st, write_st

TOOL, SHARED = sys.argv[1], sys.argv[2]


def run(*args, stdin=None):
    return tap.run(TOOL, *args, stdin=stdin)


def expect_error(args, *needles, status=1):
    """Broken model files exit 1; bad arguments and bad input data exit 2 (usage)."""
    rc, out, err = run(*args)
    lines = err.strip().splitlines()
    assert rc == status, 'exit status %d, expected %d (stderr: %r)' % (rc, status, err)
    assert len(lines) == 1, 'expected one line on stderr, got %r' % err
    for n in needles:
        assert n in lines[0], '%r not in the message %r' % (n, lines[0])


tmp = tempfile.mkdtemp(prefix='qlora-test-')
base = os.path.join(tmp, 'base')
tokens = os.path.join(tmp, 'tokens.json')
with open(tokens, 'w') as f:
    json.dump([[1, 5, 300, 7, 42], [1, 9, 10]], f)


def variant(name):
    d = os.path.join(tmp, name)
    shutil.copytree(base, d)
    return d


def eval_json(model, *extra):
    rc, out, err = run('eval', '--model', model, '--tokens', tokens, '--json', *extra)
    assert rc == 0, 'eval failed: %s' % err
    return json.loads(out)


@case('make-model writes a Hugging Face model that eval reads')
def _():
    rc, out, err = run('make-model', '--dim', '64', '--hidden', '160', '--layers', '2', '--heads', '4',
                       '--kv-heads', '2', '--vocab', '512', '--seq-len', '64', '--out', base)
    assert rc == 0, err
    r = eval_json(base)
    assert r['n_predicted'] == 6, r
    assert abs(r['ppl'] - np.exp(r['nll_sum'] / 6)) < 1e-9 * r['ppl'], r
    # random weights of sd 0.02 predict nearly uniformly over 512 tokens
    assert 400 < r['ppl'] < 650, r


@case('F16 and BF16 checkpoints load and agree with F32 within their precision')
def _():
    ref = eval_json(base)['nll_sum']
    header, body = read_st(os.path.join(base, 'model.safetensors'))
    for dtype, conv in (('F16', lambda a: a.astype(np.float16).tobytes()),
                        ('BF16', lambda a: (a.view(np.uint32) >> 16).astype(np.uint16).tobytes())):
        h, parts, off = {}, [], 0
        for name, t in sorted(header.items(), key=lambda kv: kv[1]['data_offsets'][0]):
            b0, b1 = t['data_offsets']
            raw = conv(np.frombuffer(body[b0:b1], dtype=np.float32))
            h[name] = {'dtype': dtype, 'shape': t['shape'], 'data_offsets': [off, off + len(raw)]}
            parts.append(raw)
            off += len(raw)
        d = variant(dtype)
        write_st(os.path.join(d, 'model.safetensors'), h, b''.join(parts))
        got = eval_json(d)['nll_sum']
        assert abs(got - ref) < 0.05 * abs(ref), '%s nll %g vs F32 %g' % (dtype, got, ref)


def corrupt(name, edit):
    d = variant(name)
    path = os.path.join(d, 'model.safetensors')
    header, body = read_st(path)
    header, body = edit(header, body)
    write_st(path, header, body)
    return d


@case('a missing tensor is named')
def _():
    d = corrupt('missing', lambda h, b: ({k: v for k, v in h.items()
                                          if k != 'model.layers.1.mlp.up_proj.weight'}, b))
    expect_error(['eval', '--model', d, '--tokens', tokens], 'model.layers.1.mlp.up_proj.weight', 'missing')


@case('a shape that disagrees with config.json is named')
def _():
    d = variant('shape')
    cfg = json.load(open(os.path.join(d, 'config.json')))
    cfg['intermediate_size'] = 128
    json.dump(cfg, open(os.path.join(d, 'config.json'), 'w'))
    expect_error(['eval', '--model', d, '--tokens', tokens], 'model.safetensors',
                 'model.layers.0.mlp.gate_proj.weight', 'shape')


@case('a config or checkpoint other than the architectures that run is refused, naming the key or tensor')
def _():
    # each would run with other math than transformers' and give a plausible wrong
    # perplexity: refused by key (config.json) or by the tensor it then needs or lacks
    for key, value, needle in [('architectures', ['GPT2LMHeadModel'], 'not one that runs here'),
                               ('model_type', 'mistral', 'disagrees'),
                               ('rope_scaling', {'rope_type': 'yarn', 'factor': 8.0}, '"yarn" is not implemented'),
                               ('rope_scaling', {'rope_type': 'llama3', 'factor': 8.0}, 'low_freq_factor'),
                               ('rope_scaling', {'rope_type': 'linear', 'factor': 2.0, 'beta': 1}, "'rope_scaling.beta'"),
                               ('attention_dropout', 0.1, 'dropout'),
                               ('sliding_window', 4096, 'not a key of LlamaForCausalLM'),
                               ('use_sliding_window', False, 'not a key of LlamaForCausalLM'),
                               ('rope_interleaved', True, 'rotate-half'),
                               ('num_experts', 8, 'unknown key')]:
        d = variant('cfg-%s-%d' % (key, len(os.listdir(os.path.dirname(base)))))
        cfg = json.load(open(os.path.join(d, 'config.json')))
        cfg[key] = value
        json.dump(cfg, open(os.path.join(d, 'config.json'), 'w'))
        expect_error(['eval', '--model', d, '--tokens', tokens], 'config.json', "'%s" % key, needle)
    # switches that make the model need tensors this checkpoint lacks, or another shape
    for key, value, needle in [('attention_bias', True, 'model.layers.0.self_attn.q_proj.bias'),
                               ('mlp_bias', True, 'model.layers.0.mlp.gate_proj.bias')]:
        d = variant('cfg-' + key)
        cfg = json.load(open(os.path.join(d, 'config.json')))
        cfg[key] = value
        json.dump(cfg, open(os.path.join(d, 'config.json'), 'w'))
        expect_error(['eval', '--model', d, '--tokens', tokens], needle, 'missing')
    d = variant('cfg-head_dim')
    cfg = json.load(open(os.path.join(d, 'config.json')))
    cfg['head_dim'] = 2 * cfg['hidden_size'] // cfg['num_attention_heads']
    json.dump(cfg, open(os.path.join(d, 'config.json'), 'w'))
    expect_error(['eval', '--model', d, '--tokens', tokens], 'model.layers.0.self_attn.q_proj.weight', 'shape')
    d = variant('cfg-inert')  # keys that change nothing are read as they are
    cfg = json.load(open(os.path.join(d, 'config.json')))
    cfg.update({'head_dim': cfg['hidden_size'] // cfg['num_attention_heads'], 'rope_scaling': None,
                'attention_bias': False, 'attention_dropout': 0.0, 'pretraining_tp': 1, '_name_or_path': 'x'})
    json.dump(cfg, open(os.path.join(d, 'config.json'), 'w'))
    assert eval_json(d) == eval_json(base)
    def extra(name, shape):  # one more F32 tensor of zeros after the others
        n = 4 * int(np.prod(shape))
        return lambda h, b: (dict(h, **{name: {'dtype': 'F32', 'shape': shape,
                                               'data_offsets': [len(b), len(b) + n]}}), b + bytes(n))
    d = corrupt('bias', extra('model.layers.0.self_attn.q_proj.bias', [64]))
    expect_error(['eval', '--model', d, '--tokens', tokens], 'model.safetensors',
                 'model.layers.0.self_attn.q_proj.bias', 'not part of a LlamaForCausalLM')
    d = corrupt('layer9', extra('model.layers.9.input_layernorm.weight', [64]))
    expect_error(['eval', '--model', d, '--tokens', tokens], 'model.layers.9.input_layernorm.weight', 'not part of')
    d = corrupt('head', extra('lm_head.weight', [512, 64]))
    expect_error(['eval', '--model', d, '--tokens', tokens], 'lm_head.weight', 'tie_word_embeddings is true')
    d = variant('untied')  # untied without its head: the head is missing, not the embedding again
    cfg = json.load(open(os.path.join(d, 'config.json')))
    cfg['tie_word_embeddings'] = False
    json.dump(cfg, open(os.path.join(d, 'config.json'), 'w'))
    expect_error(['eval', '--model', d, '--tokens', tokens], 'lm_head.weight', 'missing')


@case('an unsupported dtype is named')
def _():
    def edit(h, b):
        h['model.norm.weight']['dtype'] = 'I32'
        return h, b
    d = corrupt('dtype', edit)
    expect_error(['eval', '--model', d, '--tokens', tokens], 'model.norm.weight', 'dtype')


@case('overlapping or out-of-range data offsets are refused')
def _():
    def overlap(h, b):
        first = min(h.values(), key=lambda t: t['data_offsets'][0])
        second = sorted(h.values(), key=lambda t: t['data_offsets'][0])[1]
        n = second['data_offsets'][1] - second['data_offsets'][0]
        second['data_offsets'] = [first['data_offsets'][0], first['data_offsets'][0] + n]
        return h, b
    expect_error(['eval', '--model', corrupt('overlap', overlap), '--tokens', tokens], 'overlap')

    def beyond(h, b):
        t = h['model.norm.weight']
        t['data_offsets'] = [len(b) - 4, len(b) + 252]
        return h, b
    expect_error(['eval', '--model', corrupt('beyond', beyond), '--tokens', tokens],
                 'model.norm.weight', 'outside')


@case('truncated files are refused with the file named')
def _():
    d = variant('truncated')
    path = os.path.join(d, 'model.safetensors')
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])
    expect_error(['eval', '--model', d, '--tokens', tokens], path)
    open(path, 'wb').write(b'\xff' * 8 + data[8:100])
    expect_error(['eval', '--model', d, '--tokens', tokens], path, 'header')
    l2c = os.path.join(tmp, 'l2c')
    os.mkdir(l2c)
    src = open(os.path.join(SHARED, 'models/stories260K/model.bin'), 'rb').read()
    open(os.path.join(l2c, 'model.bin'), 'wb').write(src[:len(src) - 1000])
    expect_error(['eval', '--model', l2c, '--tokens', tokens], 'model.bin', 'header promises')
    open(os.path.join(l2c, 'model.bin'), 'wb').write(struct.pack('<7i', 64, 172, 5, 8, 3, 512, 512))
    expect_error(['eval', '--model', l2c, '--tokens', tokens], 'model.bin')


@case('no model at all, and bad arguments')
def _():
    expect_error(['eval', '--model', os.path.join(tmp, 'nowhere'), '--tokens', tokens],
                 'nowhere', 'config.json')
    expect_error(['eval', '--model', base, '--quant', 'nf5', '--tokens', tokens], 'nf5', status=2)
    expect_error(['eval', '--model', base, '--quant', 'nf4', '--block', '48', '--tokens', tokens],
                 'block', status=2)
    expect_error(['eval', '--model', base], '--tokens', status=2)


@case('bad token files: clear errors naming the position')
def _():
    def tok_file(obj, raw=None):
        p = os.path.join(tmp, 'bad.json')
        open(p, 'w').write(raw if raw is not None else json.dumps(obj))
        return p
    expect_error(['eval', '--model', base, '--tokens', tok_file([[1, 512]])], 'tokens[0]', '512', status=2)
    expect_error(['eval', '--model', base, '--tokens', tok_file([[1, 2], [1, -1]])], '[1][1]', status=2)
    expect_error(['eval', '--model', base, '--tokens', tok_file([[1]])], 'tokens[0]', 'at least 2', status=2)
    expect_error(['eval', '--model', base, '--tokens', tok_file([[1] * 65])], 'seq_len', status=2)
    expect_error(['eval', '--model', base, '--tokens', tok_file(None, '[[1, 2]')], 'JSON', status=2)
    expect_error(['eval', '--model', base, '--tokens', tok_file({'a': 1})], 'array', status=2)


@case('eval --text on a real model, with the README perplexity as a sanity bound')
def _():
    text = os.path.join(tmp, 'story.txt')
    valid = open(os.path.join(SHARED, 'data/tinystories_valid.txt'), encoding='utf-8').read()
    open(text, 'w').write(valid[:20000])
    m = os.path.join(SHARED, 'models/tinystories6M')
    rc, out, err = run('eval', '--model', m, '--text', text, '--json')
    assert rc == 0, err
    r = json.loads(out)
    assert r['n_predicted'] > 4000 and 3.5 < r['ppl'] < 8, r
    rc, out2, _ = run('eval', '--model', m + '-hf', '--text', text, '--json')
    assert json.loads(out2) == r, 'layouts differ: %s vs %s' % (out, out2)
    rc, out3, _ = run('eval', '--model', m, '--quant', 'ternary', '--text', text, '--json')
    assert json.loads(out3)['ppl'] > r['ppl'], out3


@case('generate: sampling is deterministic for a seed; greedy reproduces the README')
def _():
    m = os.path.join(SHARED, 'models/stories260K')
    a = run('generate', '--model', m, '--prompt', 'Once upon a time', '-n', '30', '--temperature', '0.9',
            '--seed', '7')
    b = run('generate', '--model', m, '--prompt', 'Once upon a time', '-n', '30', '--temperature', '0.9',
            '--seed', '7')
    assert a[0] == 0 and a[1] == b[1], (a, b)
    assert a[1].startswith('Once upon a time'), a[1]
    rc, out, err = run('generate', '--model', m, '-n', '63')
    assert rc == 0 and out.startswith('Once upon a time, there was a little girl named Lily.'), out


def peak_rss_mib(*args):
    """Runs qlora-tool args in a fresh process; (its stdout, its peak RSS in MiB)."""
    probe = ('import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); '
             'print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.returncode); '
             'sys.stdout.write(r.stdout)')
    got = subprocess.run([sys.executable, '-c', probe, TOOL, *args], capture_output=True, text=True, check=True).stdout
    peak, rc, out = got.split('\n', 2)
    assert rc == '0', got
    return out, int(peak) / 1024


@case('generate on a model of a long context holds the cache of what the request reaches')
def _():
    # 262144 positions x 2 layers x 64 floats of keys and of values: 256 MiB of cache if
    # generation sized it by the model's context (as Llama 3.2's 131072 would be 8 GiB)
    d = os.path.join(tmp, 'long-context')
    rc, out, err = run('make-model', '--dim', '64', '--hidden', '160', '--layers', '2', '--heads', '4',
                       '--kv-heads', '4', '--vocab', '512', '--seq-len', '262144', '--out', d)
    assert rc == 0, err
    shutil.copy(os.path.join(SHARED, 'models/stories260K/tokenizer.bin'), d)
    out, peak = peak_rss_mib('generate', '--model', d, '--prompt', 'Once upon a time', '-n', '8')
    assert out.startswith('Once upon a time'), out
    # the weights and the RoPE tables of the whole context (16 MiB) are all it should hold
    assert peak < 96, 'generate peaked at %.0f MiB' % peak
    print('# generate peaked at %.0f MiB (a cache of the whole context would add 256 MiB)' % peak)


@case('loading holds a tensor of the fp32 checkpoint at a time, not the whole mapped file')
def _():
    d = os.path.join(tmp, 'load-peak')
    rc, out, err = run('make-model', '--dim', '1024', '--hidden', '2816', '--layers', '8', '--heads', '16',
                       '--kv-heads', '16', '--vocab', '4096', '--seq-len', '64', '--out', d)
    assert rc == 0, err
    size = os.path.getsize(os.path.join(d, 'model.safetensors')) / 2**20
    out, peak = peak_rss_mib('eval', '--model', d, '--quant', 'nf4', '--tokens', tokens, '--json')
    assert 'nll_sum' in out, out
    print('# nf4 load of a %.0f MiB checkpoint peaked at %.0f MiB' % (size, peak))
    # nf4 linears ~55 MiB, fp32 embedding 16 MiB, one matrix's fp32 buffer: with the
    # file's pages kept until the end of the load it would be above the file's size
    assert peak < 0.5 * size, 'peak %.0f MiB for a %.0f MiB file' % (peak, size)
    shutil.rmtree(d)


@case('inspect reports sizes, errors per format and memory')
def _():
    rc, out, err = run('inspect', '--model', base, '--quant', 'nf4')
    assert rc == 0, err
    for word in ('parameters', 'nf4', 'ternary', 'bits/param', 'resident'):
        assert word in out, '%s missing from:\n%s' % (word, out)


shutil.rmtree(tmp)
tap.report()
