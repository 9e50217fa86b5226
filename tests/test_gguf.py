#!/usr/bin/python3
"""GGUF files (issue 19, loading) against llama.cpp itself (tests/ref/llama_ref.c over the
prebuilt libllama of .deps/llama, make setup): files written from the HF fixtures and from
make-model by tests/ref/hf_to_gguf.py (llama.cpp's gguf-py, convert_hf_to_gguf.py's
mapping) give qlora-tool eval the nll llama.cpp gives, within 1e-4 relative, and the nll of
the HF directory they came from (the same fp32 weights in the same order: equal to 1e-9,
1e-6 with Llama 3's RoPE scaling, whose frequencies GGUF holds as factors);
files quantized by llama_model_quantize (Q8_0, Q4_0, Q4_K_M, Q5_K_M, Q6_K) run with
--quant native within GGML_BOUND of llama.cpp and equal to their weights decoded, and
re-quantize with --quant nf4; a type qlorad does not run is refused by name; the real
tokenizers (Llama 3, Qwen3, Mistral) from GGUF metadata encode as llama_tokenize and as
their tokenizer.json; malformed files (truncated at every section boundary, bad magic or version, huge
counts, bad alignment, overlaps, duplicates, unknown arch, key or tensor) are refused with
a message naming the file and the byte offset or key, exit status 1, no crash. TAP output.

usage: test_gguf.py QLORA_TOOL TOKENIZE_HELPER LLAMA_REF LLAMA_DIR SHARED_DIR"""

import json
import os
import shutil
import struct
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref'))

import tap  # noqa: E402
from tap import case  # noqa: E402

TOOL, TOKENIZE, LLAMA_REF, LLAMA_DIR, SHARED = sys.argv[1:6]
HERE = os.path.dirname(os.path.abspath(__file__))
REL = 1e-4  # f32 against llama.cpp: both float32, other summation orders and kernels
THREADS = '2'
tmp = tempfile.mkdtemp(prefix='qlora-gguf-')
ENV = dict(os.environ, PYTHONPATH=os.path.join(LLAMA_DIR, 'src', 'gguf-py'),
           ASAN_OPTIONS='detect_leaks=0')  # llama.cpp's own allocations are not ours to check


def have_llama():
    return os.path.exists(LLAMA_REF) and os.path.isdir(os.path.join(LLAMA_DIR, 'src', 'gguf-py'))


def run(*argv, stdin=None):
    import subprocess
    p = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=600, env=ENV)
    return p.returncode, p.stdout.decode(errors='replace'), p.stderr.decode(errors='replace')


def to_gguf(model_dir, out, *extra):
    rc, _, err = run('/usr/bin/python3', os.path.join(HERE, 'ref', 'hf_to_gguf.py'), model_dir, out, *extra)
    assert rc == 0, 'hf_to_gguf.py %s failed: %s' % (model_dir, err[-2000:])
    return out


def tool_eval(model, toks, *extra):
    rc, out, err = run(TOOL, 'eval', '--model', model, '--tokens', toks, '--json', '--quant', 'f32', *extra)
    assert rc == 0, 'qlora-tool eval %s failed (%d): %s' % (model, rc, err.strip())
    return json.loads(out)


def write_tokens(name, seqs):
    path = os.path.join(tmp, name)
    with open(path, 'w') as f:
        json.dump(seqs, f)
    return path


def llama_nll(model, toks):
    rc, out, err = run(LLAMA_REF, 'nll', model, THREADS, toks)
    assert rc == 0, 'llama_ref nll %s: %s' % (model, err[-2000:])
    return json.loads(out)


def close(got, want, rel, what):
    assert abs(got - want) <= rel * abs(want), '%s: qlora-tool %.10g, llama.cpp %.10g (rel %.2e > %.0e)' % (
        what, got, want, abs(got - want) / abs(want), rel)


def encode(path, vocab, texts, flags=None):
    """tokenize_helper's ids of each text (tok_load of path, a GGUF file or tokenizer.json)."""
    stdin = b''.join(b'%d\n%s' % (len(t), t) for t in texts)
    rc, out, err = run(TOKENIZE, path, str(vocab), *([] if flags is None else [str(flags)]), stdin=stdin)
    assert rc == 0, 'tokenize_helper %s: %s' % (path, err.strip())
    return [[int(x) for x in line.split('\t')[0].split()] for line in out.splitlines()]


def llama_tokenize(model, texts, special=True):
    files = []
    for i, t in enumerate(texts):
        files.append(os.path.join(tmp, 'text%d.txt' % i))
        with open(files[-1], 'wb') as f:
            f.write(t)
    rc, out, err = run(LLAMA_REF, 'tokenize', model, *files, *([] if special else ['--no-special']))
    assert rc == 0, 'llama_ref tokenize: %s' % err[-2000:]
    return [json.loads(line) for line in out.splitlines()]


def paragraphs(name, n, min_len=200):
    with open(os.path.join(SHARED, 'data', name), encoding='utf-8') as f:
        ps = [p.strip() for p in f.read().split('\n\n') if len(p.strip()) > min_len]
    return [p.encode() for p in ps[:n]]


@case('llama.cpp reference present (make setup installs .deps/llama)')
def _():
    assert have_llama(), '%s or %s/src/gguf-py missing: run make setup' % (LLAMA_REF, LLAMA_DIR)


# ---- f32 models: llama.cpp's nll, and the HF directory's ---------------------------------------

def compare_models(hf_dir, gguf, texts=None, seqs=None, hf_rel=1e-9):
    if seqs is None:
        ids = encode(gguf, 512, texts)
        assert ids == llama_tokenize(gguf, texts), 'the GGUF tokenizer and llama_tokenize differ'
        seqs = [s[:64] for s in ids]
    toks = write_tokens(os.path.basename(gguf) + '.json', seqs)
    want = llama_nll(gguf, toks)
    for i, s in enumerate(seqs):
        one = write_tokens('one.json', [s])
        got = tool_eval(gguf, one)
        close(got['nll_sum'], sum(want[i]), REL, 'sequence %d nll_sum' % i)
        hf = tool_eval(hf_dir, one)
        assert abs(got['nll_sum'] - hf['nll_sum']) <= hf_rel * abs(hf['nll_sum']), \
            'sequence %d: GGUF %.12g, HF directory %.12g' % (i, got['nll_sum'], hf['nll_sum'])


STORY_TEXTS = None

for model in ('stories260K', 'tinystories6M'):
    @case('%s as f32 GGUF: nll as llama.cpp (1e-4) and as its HF directory' % model)
    def _(model=model):
        assert have_llama(), 'run make setup'
        hf = os.path.join(SHARED, 'models', model + '-hf')
        g = to_gguf(hf, os.path.join(tmp, model + '.gguf'))
        texts = paragraphs('tinystories_valid.txt', 3)
        if model == 'tinystories6M':  # trained lowercased
            texts = [t.lower() for t in texts]
        compare_models(hf, g, texts)


MAKE_MODEL = [
    ('llama', ['--arch', 'llama', '--init-std', '0.15']),
    ('llama-bias-untied', ['--arch', 'llama', '--bias', '--untied', '--rope-theta', '500000', '--init-std', '0.15']),
    ('llama-linear', ['--arch', 'llama', '--rope-scaling', 'linear', '--rope-factor', '4', '--init-std', '0.15']),
    ('llama-llama3', ['--arch', 'llama', '--rope-scaling', 'llama3', '--rope-factor', '8', '--rope-theta', '500000',
                      '--init-std', '0.15']),
    ('mistral', ['--arch', 'mistral', '--init-std', '0.15']),
    ('qwen2', ['--arch', 'qwen2', '--init-std', '0.15']),
    ('qwen3', ['--arch', 'qwen3', '--head-dim', '24', '--untied', '--init-std', '0.15']),
]
SEQS = [[1] + [(i * 37 + k * 101) % 509 + 3 for i in range(n - 1)] for k, n in enumerate((24, 9, 40))]


def make_model(name, extra):
    d = os.path.join(tmp, 'make-model-' + name)
    if not os.path.isdir(d):
        rc, _, err = run(TOOL, 'make-model', '--dim', '64', '--hidden', '160', '--layers', '2', '--heads', '4',
                         '--kv-heads', '2', '--vocab', '512', '--seq-len', '64', *extra, '--out', d)
        assert rc == 0, err
        shutil.copy(os.path.join(SHARED, 'models', 'stories260K', 'tokenizer.bin'), d)
    return d


for name, extra in MAKE_MODEL:
    @case('make-model %s as f32 GGUF: nll as llama.cpp (1e-4) and as its HF directory' % name)
    def _(name=name, extra=extra):
        assert have_llama(), 'run make setup'
        d = make_model(name, extra)
        # Llama 3's scaling: the file's factors divide the frequencies as llama.cpp's
        # freq_factors do, the same numbers as transformers' blend but rounded otherwise
        compare_models(d, to_gguf(d, os.path.join(tmp, name + '.gguf')), seqs=SEQS,
                       hf_rel=1e-6 if 'llama3' in name else 1e-9)


@case('f16 GGUF: loads (re-quantized per --quant), nll within 1e-2 of llama.cpp')
def _():
    assert have_llama(), 'run make setup'
    d = make_model('qwen2', MAKE_MODEL[4][1])
    g = to_gguf(d, os.path.join(tmp, 'qwen2-f16.gguf'), '--outtype', 'f16')
    toks = write_tokens('f16.json', SEQS[:1])
    got = tool_eval(g, toks)
    # llama.cpp rounds the activations to f16 for its f16 dot products; we keep them fp32
    close(got['nll_sum'], sum(llama_nll(g, toks)[0]), 1e-2, 'nll_sum')


@case('--quant nf4 from an f32 GGUF equals --quant nf4 from its HF directory')
def _():
    assert have_llama(), 'run make setup'
    hf = os.path.join(SHARED, 'models', 'stories260K-hf')
    g = os.path.join(tmp, 'stories260K.gguf')
    if not os.path.exists(g):
        to_gguf(hf, g)
    toks = write_tokens('nf4.json', SEQS)
    a, b = tool_eval(g, toks, '--quant', 'nf4'), tool_eval(hf, toks, '--quant', 'nf4')
    assert a['nll_sum'] == b['nll_sum'], (a, b)


# ---- ggml's quantized types (llama_model_quantize) ----------------------------------------------

# |mean nll (nats/token) of qlora-tool --quant native - llama.cpp's| on the same file. llama.cpp's
# CPU path rounds the activations to Q8_0 (Q8_K for the K-quants) for its quantized dot products;
# qlorad keeps them fp32, so the two differ by that rounding, not by the weights (which
# test_ggml.c checks bit for bit against ggml's dequantize_row_*). Measured on tinystories6M
# (762 positions of tinystories_valid): Q8_0 2.5e-4, Q4_0 4.0e-4, Q4_K_M 0.5e-4, Q5_K_M 1.4e-3,
# Q6_K 2.1e-4, against quantization shifts from the f32 model of 0.9e-3 to 6.6e-3. The bound is
# 3.5x the largest: a block scale read wrong or a K-quant's min dropped moves the nll by far more.
GGML_BOUND = 0.005
GGML_TYPES = ['Q8_0', 'Q4_0', 'Q4_K_M', 'Q5_K_M', 'Q6_K']
TS_SEQS = None


def tinystories():
    """tinystories6M as f32 GGUF and 6 paragraphs of its text, 128 tokens each at most."""
    global TS_SEQS
    g = os.path.join(tmp, 'tinystories6M.gguf')
    if not os.path.exists(g):
        to_gguf(os.path.join(SHARED, 'models', 'tinystories6M-hf'), g)
    if TS_SEQS is None:
        TS_SEQS = write_tokens('ts.json', [s[:128] for s in encode(g, 512, [
            t.lower() for t in paragraphs('tinystories_valid.txt', 6, 300)])])
    return g, TS_SEQS


def mean_nll(model, toks, *extra):
    with open(toks) as f:
        n = sum(len(s) - 1 for s in json.load(f))
    if extra == ('llama.cpp',):
        return sum(map(sum, llama_nll(model, toks))) / n
    rc, out, err = run(TOOL, 'eval', '--model', model, '--tokens', toks, '--json', *extra)
    assert rc == 0, 'qlora-tool eval %s %s: %s' % (model, ' '.join(extra), err.strip())
    return json.loads(out)['nll_sum'] / n


for qtype in GGML_TYPES:
    @case('%s file of llama_model_quantize: --quant native (the default) within %g nats/token of llama.cpp' %
          (qtype, GGML_BOUND))
    def _(qtype=qtype):
        assert have_llama(), 'run make setup'
        g, toks = tinystories()
        q = os.path.join(tmp, 'ts-%s.gguf' % qtype)
        rc, _, err = run(LLAMA_REF, 'quantize', g, q, qtype)
        assert rc == 0, err[-2000:]
        native, ref = mean_nll(q, toks), mean_nll(q, toks, 'llama.cpp')
        assert abs(native - ref) <= GGML_BOUND, 'native %.6f, llama.cpp %.6f' % (native, ref)
        assert native == mean_nll(q, toks, '--quant', 'native')  # the default for a GGUF file
        # the fused kernels on ggml's blocks against the same weights decoded to f32
        dec = mean_nll(q, toks, '--quant', 'f32')
        assert abs(native - dec) <= 1e-5 * dec, 'native %.8f, decoded to f32 %.8f' % (native, dec)


@case('--quant nf4 from a Q8_0 file: re-quantized from the decoded rows, within nf4\'s bound of f32')
def _():
    assert have_llama(), 'run make setup'
    g, toks = tinystories()
    q = os.path.join(tmp, 'ts-Q8_0.gguf')
    if not os.path.exists(q):
        assert run(LLAMA_REF, 'quantize', g, q, 'Q8_0')[0] == 0
    nf4, f32 = mean_nll(q, toks, '--quant', 'nf4'), mean_nll(g, toks, '--quant', 'f32')
    assert abs(nf4 - f32) <= 0.3 and nf4 != mean_nll(q, toks), (nf4, f32)  # test_arch.py's nf4 bound


@case('a ggml type qlorad does not run (Q2_K): refused naming the tensor and its type')
def _():
    assert have_llama(), 'run make setup'
    d = os.path.join(tmp, 'make-model-256')
    rc, _, err = run(TOOL, 'make-model', '--dim', '256', '--hidden', '512', '--layers', '1', '--heads', '4',
                     '--kv-heads', '4', '--vocab', '512', '--seq-len', '64', '--out', d)
    assert rc == 0, err
    shutil.copy(os.path.join(SHARED, 'models', 'stories260K', 'tokenizer.bin'), d)
    q = os.path.join(tmp, 'q2k.gguf')
    rc, _, err = run(LLAMA_REF, 'quantize', to_gguf(d, os.path.join(tmp, 'm256.gguf')), q, 'Q2_K')
    assert rc == 0, err[-2000:]
    rc, out, err = run(TOOL, 'eval', '--model', q, '--tokens', write_tokens('q.json', SEQS))
    assert rc == 1 and q in err and "tensor '" in err and ('q2_K' in err or 'q3_K' in err), (rc, err)


# ---- tokenizers from GGUF metadata -------------------------------------------------------------

TEXTS = [b'Hello world', b' leading space', b'two  spaces and\ta tab', b'line one\nline two\n\nafter',
         'caf\u00e9 \u2014 na\u00efve \u65e5\u672c\u8a9e \U0001f642'.encode(), b"I've been 'told he's there, 'RE you?",
         b'3 33 333 3333 33333 3.3 3..3', b'    indented\n\tcode();  // comment', b'!!!???...', b'',
         b'ROMEO:\nBut, soft! what light through yonder window breaks?', b'<s> looks special </s>',
         b'<|im_start|>user\nhi<|im_end|>', b'<|begin_of_text|>Hi'] + paragraphs('shakespeare_valid.txt', 3, 300)

TOKENIZERS = [('llama3', 'llama', 'llama-bpe'), ('qwen3', 'qwen3', 'qwen2'), ('mistral-32k', 'llama', None)]


def vocab_gguf(tok, arch, pre):
    """A GGUF of metadata only: a tiny config of arch with tok's vocabulary."""
    src = os.path.join(SHARED, 'tokenizers', tok)
    d = os.path.join(tmp, 'vocab-' + tok)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(src, 'tokenizer.json'), encoding='utf-8') as f:
        tj = json.load(f)
    n = max(max(tj['model']['vocab'].values()), max(t['id'] for t in tj['added_tokens'])) + 1
    cfg = {'architectures': [{'llama': 'LlamaForCausalLM', 'qwen3': 'Qwen3ForCausalLM'}[arch]],
           'hidden_size': 64, 'intermediate_size': 128, 'num_hidden_layers': 1, 'num_attention_heads': 4,
           'num_key_value_heads': 4, 'vocab_size': n, 'max_position_embeddings': 64, 'rms_norm_eps': 1e-6,
           'head_dim': 16}
    with open(os.path.join(d, 'config.json'), 'w') as f:
        json.dump(cfg, f)
    out = os.path.join(tmp, tok + '.gguf')
    to_gguf(d, out, '--tokenizer', src, '--vocab-only', *(['--pre', pre] if pre else []))
    return out, n


for tok, arch, pre in TOKENIZERS:
    @case('%s from GGUF metadata: ids as llama_tokenize (specials parsed, and as text) and as tokenizer.json' % tok)
    def _(tok=tok, arch=arch, pre=pre):
        assert have_llama(), 'run make setup'
        g, n = vocab_gguf(tok, arch, pre)
        # llama.cpp retypes "control-looking" pieces as CONTROL when the file names no eot id
        # (llama_vocab::impl::load: "</s>", a plain piece of Qwen's vocab, becomes its EOT);
        # this loader keeps the file's token types, so such a text differs by design
        texts = [t for t in TEXTS if tok != 'qwen3' or b'</s>' not in t]
        got, want = encode(g, n, texts), llama_tokenize(g, texts)
        bad = [(t, a, b) for t, a, b in zip(texts, got, want) if a != b]
        assert not bad, '%d of %d texts differ; first %r: ours %s, llama.cpp %s' % (len(bad), len(texts), *bad[0])
        got, want = encode(g, n, TEXTS, 3), llama_tokenize(g, TEXTS, special=False)  # and TOK_SPLIT_SPECIAL
        bad = [(t, a, b) for t, a, b in zip(TEXTS, got, want) if a != b]
        assert not bad, 'as text: %d differ; first %r: ours %s, llama.cpp %s' % (len(bad), *bad[0])
        # the tokenizer.json of the same vocabulary, nothing added (its normalizer aside: the
        # texts are NFC)
        js = os.path.join(SHARED, 'tokenizers', tok, 'tokenizer.json')
        plain = [t for t in TEXTS if b'<' not in t]
        a, b = encode(g, n, plain, 0), encode(js, n, plain, 0)
        bad = [(t, x, y) for t, x, y in zip(plain, a, b) if x != y]
        assert not bad, 'GGUF and tokenizer.json differ on %d; first %r: %s vs %s' % (len(bad), *bad[0])


# ---- malformed files ---------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {U8: '<B', I8: '<b', U16: '<H', I16: '<h', U32: '<I', I32: '<i', F32: '<f', BOOL: '<?', U64: '<Q', I64: '<q',
       F64: '<d'}


def enc_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack('<Q', len(b)) + b


def enc_value(t, v, sub=None):
    if t == STR:
        return enc_str(v)
    if t not in FMT and t not in (STR, ARR):  # a type the format lacks: 4 bytes of something
        return struct.pack('<I', v)
    if t == ARR:
        st, items = sub  # an array of arrays: each item is (sub, items) again
        return struct.pack('<IQ', st, len(items)) + b''.join(enc_value(st, None if st == ARR else x,
                                                                        x if st == ARR else None) for x in items)
    return struct.pack(FMT[t], v)


def build(kvs, tensors, version=3, align=32, magic=b'GGUF', n_kv=None, n_tensors=None):
    """A GGUF image: kvs [(key, type, value[, (sub, items)])], tensors [(name, ne, type, data)]
    laid out in order, each at the next multiple of align (offset given explicitly if a 5th item)."""
    out = magic + struct.pack('<IQQ', version, len(tensors) if n_tensors is None else n_tensors,
                              len(kvs) if n_kv is None else n_kv)
    for kv in kvs:
        key, t, v = kv[:3]
        out += enc_str(key) + struct.pack('<I', t) + enc_value(t, v, kv[3] if len(kv) > 3 else None)
    off, blobs = 0, []
    for t in tensors:
        name, ne, typ, data = t[:4]
        at = t[4] if len(t) > 4 else off
        out += enc_str(name) + struct.pack('<I', len(ne)) + b''.join(struct.pack('<Q', d) for d in ne)
        out += struct.pack('<IQ', typ, at)
        blobs.append((at, data))
        off = at + (len(data) + align - 1) // align * align
    out += b'\0' * ((align - len(out) % align) % align)
    base = len(out)
    body = bytearray(max([a + len(d) for a, d in blobs], default=0))
    for a, d in blobs:
        body[a:a + len(d)] = d
    return out + bytes(body), base


def read_model(path):
    """stories260K's GGUF as build()'s lists (gguf-py's reader)."""
    sys.path.insert(0, os.path.join(LLAMA_DIR, 'src', 'gguf-py'))
    import gguf
    r = gguf.GGUFReader(path)
    kvs = []
    for f in r.fields.values():
        if f.name.startswith('GGUF.'):
            continue
        t = int(f.types[0])
        if t == ARR:
            kvs.append((f.name, ARR, None, (int(f.types[1]), f.contents())))
        else:
            kvs.append((f.name, t, f.contents()))
    tensors = [(t.name, [int(x) for x in t.shape], int(t.tensor_type), t.data.tobytes()) for t in r.tensors]
    return kvs, tensors


def refused(image, *needles, name='bad.gguf'):
    path = os.path.join(tmp, name)
    with open(path, 'wb') as f:
        f.write(image)
    text = os.path.join(tmp, 'b.txt')  # --text: the tokenizer is loaded too
    with open(text, 'w') as f:
        f.write('once upon a time')
    rc, out, err = run(TOOL, 'eval', '--model', path, '--text', text, '--quant', 'f32')
    assert rc == 1, 'exit status %d (want 1): %s' % (rc, err[-600:])
    assert 'AddressSanitizer' not in err and 'runtime error' not in err, err[-2000:]
    assert path in err, 'message does not name the file: %s' % err
    for n in needles:
        assert n in err, 'message lacks %r: %s' % (n, err.strip())
    return err


MODEL = None


def model():
    global MODEL
    if MODEL is None:
        g = os.path.join(tmp, 'stories260K.gguf')
        if not os.path.exists(g):
            to_gguf(os.path.join(SHARED, 'models', 'stories260K-hf'), g)
        MODEL = read_model(g)
    return MODEL


def edited(drop=(), add=(), replace=None, tensors=None, **kw):
    kvs, ts = model()
    kvs = [kv for kv in kvs if kv[0] not in drop]
    if replace:
        kvs = [replace.get(kv[0], kv) for kv in kvs]
    return build(kvs + list(add), ts if tensors is None else tensors(ts), **kw)[0]


@case('the rebuilt stories260K GGUF (the malformed files\' base) loads')
def _():
    assert have_llama(), 'run make setup'
    path = os.path.join(tmp, 'rebuilt.gguf')
    with open(path, 'wb') as f:
        f.write(edited())
    tool_eval(path, write_tokens('r.json', SEQS[:1]))


@case('truncated at every section boundary and inside each: refused naming the byte offset')
def _():
    assert have_llama(), 'run make setup'
    image = edited()
    kvs, ts = model()
    # the boundaries: the header's fields, every key record, every tensor info, the data
    cuts = {0, 3, 4, 7, 8, 15, 16, 23, 24, len(image) - 1, len(image) // 2}
    pos = 24
    for kv in kvs:
        one = enc_str(kv[0]) + struct.pack('<I', kv[1]) + enc_value(kv[1], kv[2], kv[3] if len(kv) > 3 else None)
        cuts |= {pos, pos + 4, pos + 8 + len(kv[0]), pos + len(one) - 1}
        pos += len(one)
    for t in ts:
        cuts |= {pos, pos + 9, pos + 8 + len(t[0]) + 4, pos + 8 + len(t[0]) + 4 + 8 * len(t[1]) + 4}
        pos += 8 + len(t[0]) + 4 + 8 * len(t[1]) + 12
    cuts |= {pos, pos + 1}
    for cut in sorted(c for c in cuts if c < len(image)):
        err = refused(image[:cut], name='cut.gguf')
        assert 'at byte' in err or 'not a GGUF' in err or cut < 4, 'cut at %d: %s' % (cut, err)


HEADER_CASES = [
    ('bad magic', dict(magic=b'GGUG'), ['not a GGUF file']),
    ('version 1', dict(version=1), ['version 1 is not supported']),
    ('version 4', dict(version=4), ['version 4 is not supported']),
    ('big-endian', dict(version=3 << 24), ['big-endian']),
    ('a huge key count', dict(n_kv=1 << 60), ['key count', 'cannot fit']),
    ('a huge tensor count', dict(n_tensors=(1 << 64) - 1), ['tensor count', 'cannot fit']),
]
for what, kw, needles in HEADER_CASES:
    @case('%s: refused' % what)
    def _(kw=kw, needles=needles):
        assert have_llama(), 'run make setup'
        refused(edited(**kw), 'at byte', *needles)


def tensors_edit(fn):
    return lambda ts: fn([list(t) for t in ts])


def overlap(ts):
    ts[1].append(0)  # the second tensor's data at the first one's offset
    ts[0].append(0)
    return ts


def misalign(ts):
    ts[0].append(16)
    return ts


def dup_tensor(ts):
    return ts + [list(ts[-1])]


def huge_dims(ts):
    ts[0][1] = [1 << 32, 1 << 32, 1 << 2]
    return ts


def odd_block(ts):
    ts[0][2] = 8  # q8_0: blocks of 32, but 64 columns are fine; make it 48 columns
    ts[0][1] = [48, 1]
    return ts


CASES = [
    ('general.alignment 3', dict(add=[('general.alignment', U32, 3)]), ['general.alignment', 'power of two']),
    ('general.alignment as a u64', dict(add=[('general.alignment', U64, 32)]), ['general.alignment']),
    ('a key given twice', dict(add=[('llama.block_count', U32, 5)]), ["key 'llama.block_count' is given twice"]),
    ('an unknown value type', dict(add=[('general.x', 13, 0)]), ['unknown value type 13']),
    ('an unknown architecture', dict(replace={'general.architecture': ('general.architecture', STR, 'gpt2')}),
     ["'general.architecture'", '"gpt2"']),
    ('an unknown key of the architecture', dict(add=[('llama.attention.sliding_window', U32, 16)]),
     ["'llama.attention.sliding_window'", 'refused']),
    ('an MoE key', dict(add=[('llama.expert_count', U32, 8)]), ["'llama.expert_count'", 'mixture of experts']),
    ('rope scaling yarn', dict(add=[('llama.rope.scaling.type', STR, 'yarn')]), ["'llama.rope.scaling.type'"]),
    ('an unknown tokenizer model', dict(replace={'tokenizer.ggml.model': ('tokenizer.ggml.model', STR, 'bert')}),
     ["'tokenizer.ggml.model'", '"bert"']),
    ('an unknown tokenizer key', dict(add=[('tokenizer.ggml.precompiled_charsmap', STR, 'x')]),
     ["'tokenizer.ggml.precompiled_charsmap'"]),
    ('an unexpected tensor', dict(tensors=tensors_edit(lambda ts: ts + [['blk.0.attn_extra.weight', [64], 0,
                                                                        b'\0' * 256]])),
     ["tensor 'blk.0.attn_extra.weight'", 'not part of']),
    ('a tensor given twice', dict(tensors=tensors_edit(dup_tensor)), ['is given twice']),
    ('overlapping tensor data', dict(tensors=tensors_edit(overlap)), ['overlaps']),
    ('a misaligned tensor offset', dict(tensors=tensors_edit(misalign)), ['not a multiple of the alignment']),
    ('dims whose product overflows', dict(tensors=tensors_edit(huge_dims)), ['dims overflow']),
    ('columns not a whole number of blocks', dict(tensors=tensors_edit(odd_block)), ['whole number of q8_0 blocks']),
]
for what, kw, needles in CASES:
    @case('%s: refused naming it' % what)
    def _(kw=kw, needles=needles, what=what):
        assert have_llama(), 'run make setup'
        refused(edited(**kw), *needles)


@case('metadata of every value type, nested arrays and strings included, loads')
def _():
    assert have_llama(), 'run make setup'
    add = [('general.t%d' % t, t, v) for t, v in ((U8, 1), (I8, -1), (U16, 2), (I16, -2), (U32, 3), (I32, -3),
                                                    (F32, 0.5), (BOOL, True), (STR, 'x'), (U64, 4), (I64, -4),
                                                    (F64, 0.25))]
    add.append(('general.nested', ARR, None, (ARR, [(U8, [1, 2]), (STR, ['a', 'bc']), (ARR, [(F64, [1.0])])])))
    path = os.path.join(tmp, 'typed.gguf')
    with open(path, 'wb') as f:
        f.write(edited(add=add))
    tool_eval(path, write_tokens('t.json', SEQS[:1]))


shutil.rmtree(tmp)
tap.report()
