#!/usr/bin/python3
"""qlora-tool train end to end on stories260K, and the adapter file it writes checked
independently: merged into the Hugging Face weights by numpy in HF's own row order, the
merged model must score exactly what the base + adapter scores. Bad arguments give one
clear error before any work. TAP output.

usage: test_tool_train.py TOOL SHARED_DIR"""

import json
import re
import os
import shutil
import sys
import tempfile

import numpy as np

import tap
from tap import case, read_st, write_st

TOOL, SHARED = sys.argv[1], sys.argv[2]
MODEL = os.path.join(SHARED, 'models/stories260K')


def run(*args):
    return tap.run(TOOL, *args)


def read_tensors(path):
    """An F32 safetensors file as (metadata, {name: array})."""
    header, body = read_st(path)
    meta = header.pop('__metadata__', {})
    tensors = {}
    for name, t in header.items():
        assert t['dtype'] == 'F32', name
        a, b = t['data_offsets']
        tensors[name] = np.frombuffer(body[a:b], dtype='<f4').reshape(t['shape'])
    return meta, tensors


def write_tensors(path, tensors):
    header, body, off = {}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a, dtype='<f4').tobytes()
        header[name] = {'dtype': 'F32', 'shape': list(a.shape), 'data_offsets': [off, off + len(raw)]}
        body.append(raw)
        off += len(raw)
    write_st(path, header, b''.join(body))


def eval_ppl(model, *extra):
    rc, out, err = run('eval', '--model', model, '--text', valid, '--json', *extra)
    assert rc == 0, err
    return json.loads(out)


def expect_usage_error(args, *needles):
    rc, out, err = run(*args)
    lines = err.strip().splitlines()
    assert rc == 2, 'exit status %d, expected 2 (stderr: %r)' % (rc, err)
    assert len(lines) == 1, 'expected one line on stderr, got %r' % err
    for n in needles:
        assert n in lines[0], '%r not in the message %r' % (n, lines[0])
    assert 'step 1/' not in out, 'work started before the error: %r' % out


tmp = tempfile.mkdtemp(prefix='qlora-test-train-')
train = os.path.join(tmp, 'train.txt')
valid = os.path.join(tmp, 'valid.txt')
with open(os.path.join(SHARED, 'data/tinystories_train.txt'), encoding='utf-8') as f:
    open(train, 'w').write(f.read(100000))
with open(os.path.join(SHARED, 'data/tinystories_valid.txt'), encoding='utf-8') as f:
    open(valid, 'w').write(f.read(8000))
adapter = os.path.join(tmp, 'adapter.safetensors')
TRAIN = ['train', '--model', MODEL, '--quant', 'f32', '--data', train, '--eval-data', valid,
         '--rank', '4', '--alpha', '8', '--steps', '12', '--batch', '2', '--seq-len', '512',
         '--warmup', '2', '--eval-every', '6', '--checkpoint-every', '6', '--seed', '3']
train_out = run(*TRAIN, '--out', adapter)


@case('train prints a line per step, evals and checkpoints, and writes a PEFT adapter')
def _():
    rc, out, err = train_out
    assert rc == 0, err
    steps = [l for l in out.splitlines() if l.startswith('step ') and 'tokens/s' in l]
    assert len(steps) == 12 and steps[-1].startswith('step 12/12'), out
    evals = [l for l in out.splitlines() if 'eval loss' in l]
    assert [l.split()[1] for l in evals] == ['0/12', '6/12', '12/12'], evals
    first, last = float(evals[0].split()[4]), float(evals[-1].split()[4])
    assert last < first, 'eval loss %g -> %g' % (first, last)
    assert sum('checkpoint' in l for l in out.splitlines()) == 2, out
    meta, tensors = read_tensors(adapter)
    assert meta['r'] == '4' and float(meta['lora_alpha']) == 8 and meta['use_rslora'] == 'false', meta
    assert set(meta['target_modules'].split(',')) == {
        'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'}, meta
    assert len(meta['base_fingerprint']) == 16, meta
    assert len(tensors) == 5 * 7 * 2, len(tensors)
    a = tensors['base_model.model.model.layers.2.mlp.down_proj.lora_A.weight']
    b = tensors['base_model.model.model.layers.2.mlp.down_proj.lora_B.weight']
    assert a.shape == (4, 172) and b.shape == (64, 4), (a.shape, b.shape)
    assert np.abs(b).max() > 0, 'lora_B is still zero after training'


@case('the adapter file scores as the trained adapter did; merged into the HF weights by numpy, the same')
def _():
    meta, lora = read_tensors(adapter)
    scale = float(meta['lora_alpha']) / int(meta['r'])
    hf = os.path.join(SHARED, 'models/stories260K-hf')
    _, weights = read_tensors(os.path.join(hf, 'model.safetensors'))
    merged = {}
    for name, w in weights.items():
        key = 'base_model.model.' + name[:-len('.weight')]
        if key + '.lora_A.weight' in lora:
            w = w + scale * (lora[key + '.lora_B.weight'] @ lora[key + '.lora_A.weight'])
        merged[name] = w
    d = os.path.join(tmp, 'merged')
    os.mkdir(d)
    shutil.copy(os.path.join(hf, 'config.json'), d)
    shutil.copy(os.path.join(hf, 'tokenizer.bin'), d)
    write_tensors(os.path.join(d, 'model.safetensors'), merged)
    with_adapter = eval_ppl(MODEL, '--quant', 'f32', '--adapter', adapter)
    on_hf = eval_ppl(hf, '--quant', 'f32', '--adapter', adapter)
    base = eval_ppl(MODEL, '--quant', 'f32')
    by_numpy = eval_ppl(d, '--quant', 'f32')
    assert abs(on_hf['ppl'] - with_adapter['ppl']) < 1e-5 * with_adapter['ppl'], (on_hf, with_adapter)
    assert abs(by_numpy['ppl'] - with_adapter['ppl']) < 1e-4 * with_adapter['ppl'], (by_numpy, with_adapter)
    assert with_adapter['ppl'] < base['ppl'], (with_adapter, base)
    # training evaluated the same windows (seq_len is the model's) with the adapter in memory
    last = [l for l in train_out[1].splitlines() if 'eval loss' in l][-1]
    trained_ppl = float(last.split('(ppl ')[1].rstrip(')'))
    assert abs(trained_ppl - with_adapter['ppl']) < 1e-4 + 1e-6 * trained_ppl, (last, with_adapter)


@case('an adapter trained on one base is refused on another (fingerprint)')
def _():
    rc, out, err = run('eval', '--model', MODEL, '--quant', 'nf4', '--text', valid, '--adapter', adapter)
    assert rc == 1 and 'trained on base' in err and adapter in err, (rc, err)


@case('the same seed trains the same adapter, byte for byte')
def _():
    again = os.path.join(tmp, 'again.safetensors')
    rc, out, err = run(*TRAIN, '--out', again)
    assert rc == 0, err
    assert open(again, 'rb').read() == open(adapter, 'rb').read(), 'adapters differ'


@case('--recompute: one layer of activations, recomputed in backward: the same adapter, byte for byte')
def _():
    again = os.path.join(tmp, 'recomputed.safetensors')
    rc, out, err = run(*TRAIN, '--recompute', '--out', again)
    assert rc == 0, err
    losses = [l.split('tokens/s')[0].rsplit('  ', 1)[0] for l in out.splitlines() if 'tokens/s' in l]
    want = [l.split('tokens/s')[0].rsplit('  ', 1)[0] for l in train_out[1].splitlines() if 'tokens/s' in l]
    assert losses == want and len(losses) == 12, (losses, want)
    assert open(again, 'rb').read() == open(adapter, 'rb').read(), 'adapters differ'


@case('recovery (--recompute, nf4) lowers the KL to the f32 teacher on Qwen3, Mistral and Llama 3 pieces')
def _():
    # random checkpoints of each architecture's pieces (make-model), paired with the
    # stories260K tokenizer: the same training path as a real model's, at a toy size
    for arch in (['--arch', 'qwen3', '--head-dim', '24', '--bias', '--untied'], ['--arch', 'mistral'],
                 ['--arch', 'llama', '--bias', '--rope-scaling', 'llama3', '--rope-theta', '500000']):
        d = os.path.join(tmp, 'recovery-' + arch[1])
        rc, out, err = run('make-model', '--dim', '64', '--hidden', '160', '--layers', '2', '--heads', '4',
                           '--kv-heads', '2', '--vocab', '512', '--seq-len', '128', '--init-std', '0.15', *arch,
                           '--out', d)
        assert rc == 0, err
        shutil.copy(os.path.join(MODEL, 'tokenizer.bin'), d)
        rc, out, err = run('train', '--model', d, '--quant', 'nf4', '--method', 'recovery', '--data', train,
                           '--rank', '4', '--steps', '40', '--batch', '2', '--seq-len', '64', '--warmup', '0',
                           '--lr', '3e-3', '--schedule', 'constant', '--recompute', '--seed', '3',
                           '--out', os.path.join(tmp, 'recovery.safetensors'))
        assert rc == 0, err
        kl = [float(l.split()[3]) for l in out.splitlines() if l.startswith('step ') and ' loss ' in l]
        first, last = sum(kl[:5]) / 5, sum(kl[-5:]) / 5
        assert len(kl) == 40 and last < 0.95 * first, '%s: KL %.4f -> %.4f' % (arch[1], first, last)
        print('# %s: KL to the teacher %.4f -> %.4f over 40 steps' % (arch[1], first, last))


def make_pairs(path_train, path_valid):
    """Prompt/completion pairs from the shared stories: a fixed instruction line and a
    story's first two sentences as the prompt, its third sentence as the completion."""

    text = open(os.path.join(SHARED, 'data/tinystories_train.txt'), encoding='utf-8').read(400000)
    with open(path_train, 'w') as tr, open(path_valid, 'w') as va:
        for i, story in enumerate(s.strip() for s in text.split('\n\n') if s.strip()):
            sents = re.split(r'(?<=[.!?]) ', story)
            if len(sents) >= 3:
                rec = {'prompt': '### Continue the story in the voice of the narrator ###\n' + ' '.join(sents[:2]),
                       'completion': ' ' + sents[2]}
                (va if i % 10 == 0 else tr).write(json.dumps(rec) + '\n')


@case('SFT on prompt/completion pairs: completions learned on held-out pairs, prompts not trained')
def _():
    pairs, held = os.path.join(tmp, 'pairs.jsonl'), os.path.join(tmp, 'held.jsonl')
    make_pairs(pairs, held)
    def examples(*extra):
        rc, out, err = run('eval', '--model', MODEL, '--quant', 'nf4', '--examples', held, *extra)
        assert rc == 0, err
        return json.loads(out)
    before = examples()
    after = {}
    for flag in ([], ['--train-on-prompt']):
        out_file = os.path.join(tmp, 'sft%d.safetensors' % len(flag))
        rc, out, err = run('train', '--model', MODEL, '--data', pairs, '--eval-data', held, '--rank', '8',
                           '--steps', '40', '--batch', '4', '--seq-len', '256', '--lr', '3e-3', '--eval-every', '20',
                           '--seed', '3', '--out', out_file, *flag)
        assert rc == 0, err
        assert re.search(r'examples: \d+ \(prompt/completion\)', out), out
        after[len(flag)] = examples('--adapter', out_file)
    masked, whole = after[0], after[1]
    print('# held-out completion nll %.3f -> %.3f (prompts %.3f -> %.3f); with --train-on-prompt prompts -> %.3f'
          % (before['completion_nll'], masked['completion_nll'], before['prompt_nll'], masked['prompt_nll'],
             whole['prompt_nll']))
    assert masked['completion_nll'] < before['completion_nll'] - 0.5, (before, masked)
    # the instruction line is learned only when the prompts carry loss
    assert masked['prompt_nll'] > whole['prompt_nll'] + 1.0, (masked, whole)


@case('SFT data: a bad line is refused with its number and field, before any work')
def _():
    bad = os.path.join(tmp, 'bad.jsonl')
    for lines, needles in [(['{"prompt": "a", "completion": "b"}', '{"prompt": "a"}'], ['line 2', "'completion'"]),
                           (['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": 3}'],
                            ['line 2', "'completion' is not a string"]),
                           (['{"prompt": "a", "completion": "b"}', '', '{"text": "c"}'], ['line 3', "'text'"]),
                           (['{"prompt": "a", "completion": "b"}', '{oops'], ['line 2']),
                           (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'],
                            ['line 1', "'messages'", 'no chat template']),
                           (['{"messages": [{"role": "user", "content": "hi"}]}'], ['line 1', 'no assistant message']),
                           (['{"messages": [{"role": "robot", "content": "hi"}]}'], ['line 1', "'messages[0].role'"]),
                           (['{"messages": [{"role": "user", "content": "hi", "weight": 1}]}'],
                            ['line 1', "'messages[0].weight'"]),
                           (['{"prompt": "a", "completion": ""}'], ['line 1', 'empty'])]:
        open(bad, 'w').write('\n'.join(lines) + '\n')
        rc, out, err = run('train', '--model', MODEL, '--data', bad, '--steps', '2', '--out',
                           os.path.join(tmp, 'never.safetensors'))
        assert rc != 0 and 'bad.jsonl' in err and all(n in err for n in needles), (lines, err)
        assert 'step 1/' not in out, out


@case('--help: train and eval print their usage and exit 0')
def _():
    for cmd, flags in (('train', ('--recompute', '--grad-accum', '--init')), ('eval', ('--tokens', '--adapter'))):
        rc, out, err = run(cmd, '--help')
        assert rc == 0 and out.startswith('usage: qlora-tool %s ' % cmd) and not err, (rc, out, err)
        for f in flags:
            assert f in out, '%s missing from %r' % (f, out)


@case('bad arguments: one clear error naming the field, before any work')
def _():
    empty = os.path.join(tmp, 'empty.txt')
    open(empty, 'w').close()
    out = os.path.join(tmp, 'never.safetensors')
    base = ['train', '--model', MODEL, '--data', train, '--out', out]
    expect_usage_error(base + ['--rank', '0'], 'rank')
    expect_usage_error(base + ['--lr', '-0.1'], 'lr')
    expect_usage_error(base + ['--seq-len', '9999'], 'seq_len', '512')
    expect_usage_error(base + ['--targets', 'q,lm_head'], 'lm_head')
    expect_usage_error(base + ['--method', 'dpo'], '--method', 'dpo', '"lora" or "recovery"')
    expect_usage_error(base + ['--schedule', 'linear'], '--schedule', 'linear', '"cosine" or "constant"')
    expect_usage_error(base + ['--init', 'pissa'], '--init', 'pissa', '"default" or "loftq"')
    expect_usage_error(base + ['--steps', 'ten'], '--steps', 'ten')
    expect_usage_error(base + ['--seed', '-1'], '--seed', '-1')
    expect_usage_error(base + ['--batch', '99999999999'], '--batch')
    expect_usage_error(base + ['--recompute', 'yes'], 'yes')
    expect_usage_error(['train', '--model', MODEL, '--data', empty, '--out', out], 'empty')
    expect_usage_error(['train', '--model', MODEL, '--data', train], '--out')
    assert not os.path.exists(out), 'an adapter was written'


shutil.rmtree(tmp)
tap.report()
