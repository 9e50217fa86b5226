#!/usr/bin/python3
"""Issue 17's PEFT claims on every architecture, against the independent reference
tests/ref/hf_arch.py (which applies a PEFT adapter as peft runs it on the Hugging Face
model, in HF's own rotate-half row order, knowing nothing of qlora's permutation):

- an adapter trained by `qlora-tool train` (rank 4, all seven targets, B != 0), put in a
  store by `qlora-tool import` and written back by `qlora-tool export`, scores under
  `qlora-tool eval --quant f32 --adapter` what the reference scores with the exported
  directory applied (1e-5 relative): names, q/k row order and scaling of the export;
- its tensors are exactly those peft creates for that model (names from the checkpoint's
  module names, lora_A [r x in], lora_B [out x r], o_proj's in = heads * head_dim), its
  adapter_config.json one the reference (strict about LoraConfig keys) accepts;
- import of the exported directory and export again gives the same bytes;
- a random adapter written by the reference itself, imported by qlora-tool, scores alike
  in both (import proved apart from export);
- with a quantized base (nf4, no double quantization: block scales stay per row, so HF's
  row order quantizes alike) the same, against the reference fed the dequantized linears
  and fp32 biases and norms: both would move if biases or norms were quantized.

Each check is shown to bite: the adapter, the q/k rows left in qlora's interleaved order,
alpha / sqrt(r) for alpha / r, quantized biases or norms each move the reference's nll_sum
by more than 10x the tolerance. TAP output.

usage: test_arch_peft.py TOOL TOKENIZE_HELPER SHARED_DIR"""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref'))

import hf_arch  # noqa: E402
import tap  # noqa: E402
from tap import case  # noqa: E402

np = hf_arch.np
TOOL, TOKENIZE, SHARED = sys.argv[1], sys.argv[2], sys.argv[3]
# qlora-tool against the reference, f32 and nf4 (there fed the dequantized weights: the same
# products). Both agree to ~3e-8 relative here; 1e-5, ten times stricter than test_arch.py's
# 1e-4, so that each mistake below (the smallest moves nll_sum by ~3e-4) is shown to bite at
# ten times the tolerance.
REL = 1e-5
REL_NF4 = 1e-5
RANK, ALPHA = 4, 8.0
SEVEN = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
# Every one has GQA: llama32 llama3 RoPE, head_dim key, tied; llama-bias attention and mlp
# biases, untied; mistral-v01 a sliding window of 16; qwen25 q/k/v biases, heads of 8;
# qwen3 q_norm/k_norm and head_dim 32 != 64 / 4 (q_proj 128 rows, o_proj 128 columns);
# qwen3-bias that with biases on all four projections, o_proj's too.
ARCHS = ('llama32', 'llama-bias', 'mistral-v01', 'qwen25', 'qwen3', 'qwen3-bias')

TOKENIZER = os.path.join(SHARED, 'models/stories260K/tokenizer.bin')  # 512 ids: vocab 512 below
tmp = tempfile.mkdtemp(prefix='qlora-arch-peft-')
train_txt = os.path.join(tmp, 'train.txt')
with open(os.path.join(SHARED, 'data/tinystories_train.txt'), encoding='utf-8') as f:
    open(train_txt, 'w').write(f.read(20000))


def held_out_text(n):
    """n sequences of 16 tokens (mistral-v01's window) of TinyStories' validation text,
    by qlora's tokenizer (tests/tokenize_helper.c): text, so that the trained adapter
    matters (on random ids it barely moves the NLL)."""
    with open(os.path.join(SHARED, 'data/tinystories_valid.txt'), encoding='utf-8') as f:
        paras = [p.strip().encode() for p in f.read(20000).split('\n\n') if len(p) > 200]
    p = subprocess.run([TOKENIZE, TOKENIZER, '512'], input=b''.join(b'%d\n%s' % (len(t), t) for t in paras),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    seqs = []
    for line in p.stdout.decode().splitlines():
        ids = [int(t) for t in line.split('\t')[0].split()]
        seqs += [ids[i:i + 16] for i in range(0, len(ids) - 15, 16)]
    assert len(seqs) >= n, len(seqs)
    return random.Random(17).sample(seqs, n)


SEQS = held_out_text(8)
tokens = os.path.join(tmp, 'tokens.json')
json.dump(SEQS, open(tokens, 'w'))
db = os.path.join(tmp, 'db')


def tool(*args):
    rc, out, err = tap.run(TOOL, *args)
    assert rc == 0, 'qlora-tool %s failed (%d): %s' % (' '.join(args[:1]), rc, err.strip())
    return out


def tool_eval(model, *extra):
    return json.loads(tool('eval', '--model', model, '--tokens', tokens, '--json', *extra))


def close(got, want, rel, what):
    assert abs(got - want) <= rel * abs(want), '%s: qlora-tool %.10g, reference %.10g (rel %.2e > %.0e)' % (
        what, got, want, abs(got - want) / abs(want), rel)


def moves(a, b, rel, what):
    print('#   %s: %.8f -> %.8f (%.1fx the tolerance)' % (what, b, a, abs(a - b) / (rel * abs(b))), file=sys.stderr)
    assert abs(a - b) > 10 * rel * abs(b), '%s moves nll_sum only from %.10g to %.10g' % (what, b, a)


def ref_eval(model, adapter=None, change=None):
    """The reference's eval; change(c, w, adapter) may edit what it runs."""
    c, w = hf_arch.load(model)
    ad = hf_arch.load_adapter(c, adapter) if adapter else None
    if change:
        w, ad = dict(w), ad and dict(ad, lora=dict(ad['lora']))
        change(c, w, ad)
    return hf_arch.evaluate(c, w, SEQS, 0, True, ad)


_arch = {}


def prepared(arch):
    """(model dir, exported PEFT dir, trained file) of arch, made once: a tiny checkpoint,
    an adapter trained on it, imported into the store and exported."""
    if arch in _arch:
        return _arch[arch]
    d = os.path.join(tmp, arch)
    hf_arch.write(arch, d, seed=1, vocab=512)
    shutil.copy(TOKENIZER, d)
    # the family's own BOS/EOS ids (128000...) are outside this vocabulary: the paired
    # tokenizer's (stories260K: 1, 2), as generation reads config.json's eos_token_id
    cfg_path = os.path.join(d, 'config.json')
    cfg = json.load(open(cfg_path))
    cfg.update(bos_token_id=1, eos_token_id=2)
    json.dump(cfg, open(cfg_path, 'w'), indent=2)
    trained = os.path.join(tmp, arch + '-trained.safetensors')
    tool('train', '--model', d, '--quant', 'f32', '--data', train_txt, '--rank', str(RANK), '--alpha', str(ALPHA),
         '--targets', 'q,k,v,o,gate,up,down', '--steps', '12', '--batch', '2', '--seq-len', '16', '--lr', '0.05',
         '--warmup', '0', '--schedule', 'constant', '--seed', '1', '--out', trained)
    # train writes adapter_model.safetensors alone; the directory import reads needs the config
    meta = tap.read_st(trained)[0]['__metadata__']
    src = os.path.join(tmp, arch + '-src')
    os.mkdir(src)
    json.dump({'peft_type': 'LORA', 'task_type': 'CAUSAL_LM', 'r': int(meta['r']),
               'lora_alpha': float(meta['lora_alpha']), 'target_modules': meta['target_modules'].split(','),
               'use_rslora': meta['use_rslora'] == 'true', 'bias': 'none'},
              open(os.path.join(src, 'adapter_config.json'), 'w'))
    shutil.copy(trained, os.path.join(src, 'adapter_model.safetensors'))
    tool('import', '--db', db, '--model', d, '--quant', 'f32', arch, src)
    exported = os.path.join(tmp, arch + '-peft')
    tool('export', '--db', db, arch, exported)
    _arch[arch] = (d, exported, trained)
    return _arch[arch]


def interleaved(c, w, ad):
    """q/k lora_B rows in llama2.c's interleaved order (what qlora holds), read as HF's."""
    hd = c['head_dim']
    for (layer, mod), (a, b) in list(ad['lora'].items()):
        if mod in ('self_attn.q_proj', 'self_attn.k_proj'):
            # HF row h*hd + j*hd/2 + i holds interleaved row h*hd + 2i + j
            perm = np.array([h * hd + 2 * (q % (hd // 2)) + q // (hd // 2)
                             for h in range(b.shape[0] // hd) for q in range(hd)])
            ad['lora'][(layer, mod)] = (a, b[perm])


def rslora_scaling(c, w, ad):
    ad['scaling'] = ALPHA / RANK ** 0.5


# ---- a trained adapter through import and export, per architecture -------------------------

for arch in ARCHS:
    @case('%s: an adapter trained by qlora-tool, exported, scores in qlora-tool eval --quant f32 '
          'what the reference scores with the PEFT directory (1e-5 relative)' % arch)
    def _(arch=arch):
        d, exported, _ = prepared(arch)
        got, want = tool_eval(d, '--quant', 'f32', '--adapter', os.path.join(exported, 'adapter_model.safetensors')), \
            ref_eval(d, exported)
        assert got['n_predicted'] == want['n_predicted'], (got, want['n_predicted'])
        close(got['nll_sum'], want['nll_sum'], REL, 'nll_sum')
        close(got['ppl'], want['ppl'], REL, 'ppl')
        print('# %s: reference nll_sum %.8f, qlora-tool %.8f' % (arch, want['nll_sum'], got['nll_sum']),
              file=sys.stderr)
        # the comparison bites: the adapter itself, q/k rows in the wrong order, rsLoRA's scaling
        base = ref_eval(d)
        close(tool_eval(d, '--quant', 'f32')['nll_sum'], base['nll_sum'], REL, 'nll_sum without the adapter')
        moves(want['nll_sum'], base['nll_sum'], REL, 'the adapter')
        moves(ref_eval(d, exported, interleaved)['nll_sum'], want['nll_sum'], REL, 'q/k lora_B rows interleaved')
        moves(ref_eval(d, exported, rslora_scaling)['nll_sum'], want['nll_sum'], REL, 'alpha / sqrt(r)')

    @case('%s: the export holds exactly the tensors peft creates (names, [r x in], [out x r]) and a '
          'config the reference accepts' % arch)
    def _(arch=arch):
        d, exported, _ = prepared(arch)
        header, _ = tap.read_st(os.path.join(exported, 'adapter_model.safetensors'))
        header.pop('__metadata__', None)
        # from the checkpoint's own tensors: every nn.Linear named by target_modules
        want = {}
        for name, t in tap.read_st(os.path.join(d, 'model.safetensors'))[0].items():
            if name.endswith('_proj.weight') and name.split('.')[-2] in SEVEN:
                out_f, in_f = t['shape']
                key = 'base_model.model.' + name[:-len('.weight')]
                want[key + '.lora_A.weight'] = [RANK, in_f]
                want[key + '.lora_B.weight'] = [out_f, RANK]
        got = {n: t['shape'] for n, t in header.items()}
        assert got == want, 'missing %s, extra %s, other shapes %s' % (
            sorted(set(want) - set(got)), sorted(set(got) - set(want)),
            {n: (got[n], want[n]) for n in set(got) & set(want) if got[n] != want[n]})
        assert all(t['dtype'] == 'F32' for t in header.values()), header
        c = hf_arch.parse_config(os.path.join(d, 'config.json'))
        o_in = c['num_attention_heads'] * c['head_dim']
        assert got['base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight'] == [RANK, o_in], got
        assert got['base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight'] == [o_in, RANK], got
        lora = hf_arch.st_read(os.path.join(exported, 'adapter_model.safetensors'))
        zero = [n for n, a in lora.items() if '.lora_B.' in n and not np.abs(a).max() > 0]
        assert not zero, 'lora_B still zero after training: %s' % zero
        cfg = json.load(open(os.path.join(exported, 'adapter_config.json')))
        r, scaling, modules = hf_arch.parse_adapter_config(os.path.join(exported, 'adapter_config.json'))
        assert (r, scaling, cfg['task_type'], sorted(cfg['target_modules'])) == (
            RANK, ALPHA / RANK, 'CAUSAL_LM', sorted(SEVEN)), cfg

    @case('%s: import of the exported directory, exported again: the same bytes; the tensors are '
          'the trained file\'s' % arch)
    def _(arch=arch):
        d, exported, trained = prepared(arch)
        tool('import', '--db', db, '--model', d, '--quant', 'f32', arch + '-again', exported)
        again = os.path.join(tmp, arch + '-peft-again')
        tool('export', '--db', db, arch + '-again', again)
        for f in ('adapter_model.safetensors', 'adapter_config.json'):
            assert open(os.path.join(again, f), 'rb').read() == open(os.path.join(exported, f), 'rb').read(), f
        a, b = hf_arch.st_read(trained), hf_arch.st_read(os.path.join(exported, 'adapter_model.safetensors'))
        assert a.keys() == b.keys() and all(np.array_equal(a[n].view(np.uint32), b[n].view(np.uint32)) for n in a)


# ---- an adapter written by the reference, imported by qlora-tool ---------------------------

HAND = [('llama32', {}), ('mistral-v01', {'dtype': 'BF16'}), ('qwen25', {'rslora': True, 'alpha': 6.0}),
        ('qwen3', {}), ('qwen3-bias', {'targets': ['o_proj', 'k_proj', 'down_proj']})]

for arch, opts in HAND:
    @case('%s: a random PEFT adapter written by the reference (%s), imported by qlora-tool: both '
          'evaluate it alike (1e-5 relative), and export gives its tensors back' % (
              arch, ', '.join('%s %s' % kv for kv in opts.items()) or 'F32, all seven'))
    def _(arch=arch, opts=opts):
        d, _, _ = prepared(arch)
        hand = os.path.join(tmp, arch + '-hand')
        hf_arch.write_adapter(d, hand, r=RANK, seed=5, **opts)
        tool('import', '--db', db, '--model', d, '--quant', 'f32', arch + '-hand', hand)
        out = os.path.join(tmp, arch + '-hand-out')
        tool('export', '--db', db, arch + '-hand', out)
        got = tool_eval(d, '--quant', 'f32', '--adapter', os.path.join(out, 'adapter_model.safetensors'))
        want = ref_eval(d, hand)
        close(got['nll_sum'], want['nll_sum'], REL, 'nll_sum')
        close(got['ppl'], want['ppl'], REL, 'ppl')
        moves(want['nll_sum'], ref_eval(d)['nll_sum'], REL, 'the adapter')
        moves(ref_eval(d, hand, interleaved)['nll_sum'], want['nll_sum'], REL, 'q/k lora_B rows interleaved')
        a, b = hf_arch.st_read(os.path.join(hand, 'adapter_model.safetensors')), \
            hf_arch.st_read(os.path.join(out, 'adapter_model.safetensors'))
        assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


# ---- LoraConfig keys that change the math: refused by both --------------------------------

# (key, value): each a LoRA other than x W^T + b + alpha / r * (x A^T) B^T on these tensors
# (alpha_pattern: another scaling for q_proj; pissa: peft rewrites the base at load; ...)
NOT_PLAIN = [('alpha_pattern', {'q_proj': 64}), ('rank_pattern', {'k_proj': 4}), ('use_dora', True),
             ('init_lora_weights', 'pissa'), ('alora_invocation_tokens', [5, 6]), ('fan_in_fan_out', True),
             ('layers_to_transform', [0]), ('modules_to_save', ['lm_head']), ('lora_bias', True)]


@case('qwen3: an adapter whose adapter_config.json is not plain LoRA (%s) is refused by qlora-tool '
      'import and by the reference, naming the key' % ', '.join(k for k, _ in NOT_PLAIN))
def _():
    d, _, _ = prepared('qwen3')
    bad = []
    for key, value in NOT_PLAIN:
        a = os.path.join(tmp, 'qwen3-not-plain-' + key)
        hf_arch.write_adapter(d, a, r=RANK, seed=9)
        p = os.path.join(a, 'adapter_config.json')
        json.dump(dict(json.load(open(p)), **{key: value}), open(p, 'w'))
        rc, out, err = tap.run(TOOL, 'import', '--db', db, '--model', d, '--quant', 'f32', 'not-plain', a)
        if rc != 1 or key not in err:
            bad.append('qlora-tool import %s=%r: exit %d, %r' % (key, value, rc, (out + err).strip()))
        try:
            ref_eval(d, a)
            bad.append('reference accepted %s=%r' % (key, value))
        except hf_arch.Refused as e:
            if key not in str(e):
                bad.append('reference: %s' % e)
    assert not bad, '; '.join(bad)


# ---- a quantized base: linears quantized, biases and norms fp32 ----------------------------

NF4 = ['--quant', 'nf4', '--no-double-quant']


def roundtrip(a):
    """dequantize(quantize(a)) by qlora-tool roundtrip, nf4 without double quantization
    (blocks within a row: any row order quantizes alike)."""
    a = np.ascontiguousarray(a, dtype='<f4').reshape(-1, a.shape[-1])
    p = subprocess.run([TOOL, 'roundtrip', '--format', 'nf4', '--no-double-quant', '--rows', str(a.shape[0]),
                        '--cols', str(a.shape[1])], input=a.tobytes(), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return np.frombuffer(p.stdout, dtype='<f4').reshape(a.shape)


def dequantized(suffixes):
    def change(c, w, ad):
        for n in list(w):
            if n.endswith(suffixes):
                w[n] = roundtrip(w[n]).reshape(w[n].shape)
    return change


LINEAR_W = tuple('%s.weight' % m for m in SEVEN)

for arch in ('llama-bias', 'qwen3-bias'):
    @case('%s: nf4 base with the adapter: qlora-tool eval equals the reference fed the dequantized '
          'linears and fp32 biases and norms; quantized biases or norms would show' % arch)
    def _(arch=arch):
        d, exported, _ = prepared(arch)
        # the fingerprint binds an adapter to its base: import it for the nf4 one
        hand = os.path.join(tmp, arch + '-nf4')
        hf_arch.write_adapter(d, hand, r=RANK, seed=7)
        tool('import', '--db', db, '--model', d, *NF4, arch + '-nf4', hand)
        out = os.path.join(tmp, arch + '-nf4-out')
        tool('export', '--db', db, arch + '-nf4', out)
        got = tool_eval(d, *NF4, '--adapter', os.path.join(out, 'adapter_model.safetensors'))
        want = ref_eval(d, hand, dequantized(LINEAR_W))
        close(got['nll_sum'], want['nll_sum'], REL_NF4, 'nll_sum')
        print('# %s nf4: reference nll_sum %.8f, qlora-tool %.8f' % (arch, want['nll_sum'], got['nll_sum']),
              file=sys.stderr)
        moves(ref_eval(d, hand, dequantized(LINEAR_W + ('_proj.bias',)))['nll_sum'], want['nll_sum'], REL_NF4,
              'biases quantized too')
        moves(ref_eval(d, hand, dequantized(LINEAR_W + ('norm.weight',)))['nll_sum'], want['nll_sum'], REL_NF4,
              'norm weights quantized too')
        moves(want['nll_sum'], ref_eval(d, hand)['nll_sum'], REL_NF4, 'quantizing the linears')


shutil.rmtree(tmp)
tap.report()
