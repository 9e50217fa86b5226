#!/usr/bin/python3
"""qlora-tool import and export against a store, checked by an independent reader: numpy
reads the exported adapter_model.safetensors and adapter_config.json and checks names,
shapes, r, alpha and targets against the base's own config.json; F16 and BF16 files
(converted by numpy) import to exactly numpy's f32 values; a trained adapter goes through
import -> export byte for byte; a file for another base, and malformed files, are refused
with the store's data file left byte-identical. TAP output.

usage: test_tool_store.py TOOL SHARED_DIR"""

import json
import os
import shutil
import sys
import tempfile

import numpy as np

import tap
from tap import case, read_st, write_st

TOOL, SHARED = sys.argv[1], sys.argv[2]
MODEL = os.path.join(SHARED, 'models/stories260K')
HF_CONFIG = json.load(open(os.path.join(SHARED, 'models/stories260K-hf/config.json')))
MODULES = {'q_proj': 'self_attn', 'k_proj': 'self_attn', 'v_proj': 'self_attn', 'o_proj': 'self_attn',
           'gate_proj': 'mlp', 'up_proj': 'mlp', 'down_proj': 'mlp'}


def run(*args):
    return tap.run(TOOL, *args)


def shapes(rank):
    """{PEFT tensor name: shape} for every linear of the base, from its HF config."""
    d, h = HF_CONFIG['hidden_size'], HF_CONFIG['intermediate_size']
    kv = d // HF_CONFIG['num_attention_heads'] * HF_CONFIG['num_key_value_heads']
    io = {'q_proj': (d, d), 'k_proj': (d, kv), 'v_proj': (d, kv), 'o_proj': (d, d),
          'gate_proj': (d, h), 'up_proj': (d, h), 'down_proj': (h, d)}
    out = {}
    for layer in range(HF_CONFIG['num_hidden_layers']):
        for m, (i, o) in io.items():
            base = 'base_model.model.model.layers.%d.%s.%s.' % (layer, MODULES[m], m)
            out[base + 'lora_A.weight'] = [rank, i]
            out[base + 'lora_B.weight'] = [o, rank]
    return out


def read_tensors(path):
    header, body = read_st(path)
    meta = header.pop('__metadata__', {})
    out = {}
    for name, t in header.items():
        dt = {'F32': '<f4', 'F16': '<f2'}[t['dtype']]
        a, b = t['data_offsets']
        out[name] = np.frombuffer(body[a:b], dtype=dt).reshape(t['shape'])
    return meta, header, out


def write_dir(path, config, header, body):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, 'adapter_config.json'), 'w') as f:
        json.dump(config, f)
    write_st(os.path.join(path, 'adapter_model.safetensors'), header, body)


def to_bf16(a):
    """Round-to-nearest-even f32 -> bf16 bits, as torch does."""
    u = np.ascontiguousarray(a, dtype='<f4').view('<u4').astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype('<u2')


def half_file(tensors, dtype):
    """A PEFT-style file (no metadata of ours) of tensors in F16 or BF16; with the f32
    values numpy says each element means."""
    header, body, off, expect = {'__metadata__': {'format': 'pt'}}, [], 0, {}
    for name, a in tensors.items():
        if dtype == 'F16':
            h = a.astype('<f2')
            expect[name] = h.astype('<f4')
        else:
            h = to_bf16(a)
            expect[name] = (h.astype('<u4') << 16).view('<f4')
        raw = h.tobytes()
        header[name] = {'dtype': dtype, 'shape': list(a.shape), 'data_offsets': [off, off + len(raw)]}
        body.append(raw)
        off += len(raw)
    return header, b''.join(body), expect


tmp = tempfile.mkdtemp(prefix='qlora-test-store-')
db = os.path.join(tmp, 'db')
data_file = os.path.join(db, 'data.mdb')
train = os.path.join(tmp, 'train.txt')
with open(os.path.join(SHARED, 'data/tinystories_train.txt'), encoding='utf-8') as f:
    open(train, 'w').write(f.read(30000))
trained = os.path.join(tmp, 'trained.safetensors')
train_rc, _, train_err = run('train', '--model', MODEL, '--quant', 'f32', '--data', train, '--rank', '4',
                             '--alpha', '8', '--targets', 'all-linear', '--steps', '4', '--warmup', '1',
                             '--batch', '1', '--seq-len', '64', '--seed', '5', '--out', trained)
CONFIG = {'peft_type': 'LORA', 'r': 4, 'lora_alpha': 8, 'target_modules': list(MODULES), 'bias': 'none'}
indir = os.path.join(tmp, 'in')
os.makedirs(indir)
shutil.copy(trained, os.path.join(indir, 'adapter_model.safetensors'))
json.dump(CONFIG, open(os.path.join(indir, 'adapter_config.json'), 'w'))
IMPORT = ['import', '--db', db, '--model', MODEL, '--quant', 'f32']


@case('a trained adapter imports as version 1; export gives back the same bytes')
def _():
    assert train_rc == 0, train_err
    rc, out, err = run(*IMPORT, 'tiny', indir)
    assert rc == 0 and out.strip() == 'tiny@1', (rc, out, err)
    rc, out, err = run('export', '--db', db, 'tiny@1', os.path.join(tmp, 'out1'))
    assert rc == 0, err
    assert open(os.path.join(tmp, 'out1/adapter_model.safetensors'), 'rb').read() == open(trained, 'rb').read()


@case('independent reader: exported names, shapes, r, alpha and targets match the base config')
def _():
    out = os.path.join(tmp, 'out1')
    config = json.load(open(os.path.join(out, 'adapter_config.json')))
    for k, v in {'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': 4, 'lora_alpha': 8, 'bias': 'none',
                 'use_rslora': False, 'lora_dropout': 0}.items():
        assert config.get(k) == v, (k, config.get(k))
    assert sorted(config['target_modules']) == sorted(MODULES), config['target_modules']
    assert 'base_model_name_or_path' in config
    meta, header, tensors = read_tensors(os.path.join(out, 'adapter_model.safetensors'))
    want = shapes(config['r'])
    assert set(tensors) == set(want), set(tensors) ^ set(want)
    for name, a in tensors.items():
        assert header[name]['dtype'] == 'F32' and list(a.shape) == want[name], (name, a.shape, want[name])
        assert np.all(np.isfinite(a)), name
    # trained for 4 steps: B moved away from its zero init
    assert any(np.abs(a).max() > 0 for n, a in tensors.items() if 'lora_B' in n)


@case('versions: a second import is @2, export without @ takes the latest, a missing version is an error')
def _():
    rc, out, err = run(*IMPORT, 'tiny', indir)
    assert rc == 0 and out.strip() == 'tiny@2', (rc, out, err)
    rc, out, err = run('export', '--db', db, 'tiny', os.path.join(tmp, 'out2'))
    assert rc == 0 and out.startswith('tiny@2 '), (out, err)
    rc, out, err = run('export', '--db', db, 'tiny@9', os.path.join(tmp, 'out9'))
    assert rc == 1 and "tiny@9' not found" in err, (rc, err)
    assert not os.path.exists(os.path.join(tmp, 'out9'))


for dtype in ('F16', 'BF16'):
    @case('%s import (no fingerprint in the file) is exactly numpy\'s f32 values; the base is recorded' % dtype)
    def _():
        _, _, tensors = read_tensors(trained)
        header, body, expect = half_file(tensors, dtype)
        d = os.path.join(tmp, 'in-' + dtype)
        write_dir(d, CONFIG, header, body)
        rc, out, err = run(*IMPORT, 'half-' + dtype, d)
        assert rc == 0, err
        o = os.path.join(tmp, 'out-' + dtype)
        rc, out, err = run('export', '--db', db, 'half-' + dtype, o)
        assert rc == 0, err
        meta, _, got = read_tensors(os.path.join(o, 'adapter_model.safetensors'))
        for name, a in expect.items():
            assert got[name].tobytes() == a.tobytes(), name
        trained_meta, _, _ = read_tensors(trained)
        assert meta['base_fingerprint'] == trained_meta['base_fingerprint'], (meta, trained_meta)


def refused(args, needles, status=1):
    before = open(data_file, 'rb').read()
    rc, out, err = run(*args)
    assert rc == status, 'exit %d, expected %d: %r' % (rc, status, err)
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, '%r not in %r' % (n, err)
    assert open(data_file, 'rb').read() == before, 'the store changed'


@case('an adapter trained on another base (nf4 vs f32) is refused; store unchanged')
def _():
    refused(['import', '--db', db, '--model', MODEL, '--quant', 'nf4', 'other', indir], ['trained on base'])


def broken(name, edit):
    """indir's files with edit(header, body) -> (header, body) applied."""
    header, body = read_st(trained)
    header, body = edit(json.loads(json.dumps(header)), bytearray(body))
    d = os.path.join(tmp, 'bad-' + name)
    write_dir(d, CONFIG, header, bytes(body))
    return d


FIRST = 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'


def nan(h, b):
    b[0:4] = np.float32(np.nan).tobytes()
    return h, b


def bad_dtype(h, b):
    h[FIRST]['dtype'] = 'F64'
    return h, b


def missing(h, b):
    h[FIRST.replace('lora_A', 'lora_Z')] = h.pop(FIRST)
    return h, b


def out_of_range(h, b):
    h[FIRST]['data_offsets'] = [len(b), len(b) + h[FIRST]['data_offsets'][1]]
    return h, b


for what, edit, needles in [('NaN', nan, ['non-finite', FIRST]), ("unknown dtype", bad_dtype, ['dtype', FIRST]),
                            ('missing tensor', missing, ['missing', FIRST]),
                            ('offsets out of range', out_of_range, ['outside the file', FIRST])]:
    @case('malformed file refused (%s), naming the file and tensor; store unchanged' % what)
    def _():
        refused(IMPORT + ['tiny', broken(what.replace(' ', '-'), edit)], ['adapter_model.safetensors'] + needles)


@case('bad arguments: invalid name, unknown store, missing directory')
def _():
    refused(IMPORT + ['../x', indir], ['invalid'], status=2)
    refused(IMPORT + ['ok', os.path.join(tmp, 'nowhere')], ['adapter_config.json', 'cannot open'])
    rc, _, err = run('export', '--db', os.path.join(tmp, 'nodb'), 'tiny', os.path.join(tmp, 'x'))
    assert rc == 2 and 'no store there' in err, err
    assert not os.path.exists(os.path.join(tmp, 'nodb'))


shutil.rmtree(tmp)
tap.report()
