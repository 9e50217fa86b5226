#!/usr/bin/python3
"""tokenizer.json (Hugging Face, Llama flavour) against two references:

- tokenizer.bin: the stories260K tokenizer.bin, converted into a tokenizer.json at test time
  as transformers' LlamaConverter would (ref/tokbin_to_json.py), must give the same ids as
  the tokenizer.bin itself on ../shared/models/README.md's encodings and on all of
  ../shared/data, and decode back to the text;
- Hugging Face's BPE written plainly in Python (ref/hf_bpe.py, the naive quadratic loop):
  the C encoder must match it on the converted tokenizer and on a small hand-written one
  whose merge ranks disagree with any score order, with byte fallback to byte tokens that
  sit at other ids than tokenizer.bin's, multi-byte UTF-8 and literal "\u2581".

Then malformed tokenizer.json files, each refused with a message naming the file and the
field, and a model directory holding a tokenizer.json and no tokenizer.bin, end to end
through qlora-tool. TAP output.

usage: test_tokenizer_json.py TOKENIZE_HELPER QLORA_TOOL SHARED_DIR"""

import copy
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref'))
import hf_bpe  # noqa: E402
import tokbin_to_json  # noqa: E402
import tok_helper  # noqa: E402

import tap  # noqa: E402
from tap import case  # noqa: E402

HELPER, TOOL, SHARED = sys.argv[1], sys.argv[2], os.path.abspath(sys.argv[3])
BIN = os.path.join(SHARED, 'models/stories260K/tokenizer.bin')
HF_MODEL = os.path.join(SHARED, 'models/stories260K-hf')
SPACE = '\u2581'
DATA = ['tinystories_train.txt', 'tinystories_valid.txt', 'shakespeare_train.txt',
        'shakespeare_valid.txt']

tmp = tempfile.mkdtemp(prefix='qlora-tokjson-')
converted = tokbin_to_json.convert(tokbin_to_json.read_bin(BIN, 512))
JSON = os.path.join(tmp, 'tokenizer.json')
tokbin_to_json.write(converted, JSON)
rng = random.Random(20261123)


def encode(path, texts, vocab=512):
    """[(ids, decoded bytes)] of each text (str or bytes) by the C tokenizer at path."""
    texts = [t.encode() if isinstance(t, str) else t for t in texts]
    return [(ids, back) for ids, back, *_ in tok_helper.run(HELPER, path, vocab, texts)]


def readme_encodings():
    """[(text, ids)] from the encoder table of ../shared/models/README.md."""
    rows = []
    with open(os.path.join(SHARED, 'models/README.md'), encoding='utf-8') as f:
        for line in f:
            m = re.match(r'\| `(".*")` \| ([\d ]+) \|$', line.strip())
            if m:
                rows.append((json.loads(m.group(1)), [int(i) for i in m.group(2).split()]))
    return rows


def data(name):
    with open(os.path.join(SHARED, 'data', name), 'rb') as f:
        return f.read()


def first_difference(a, b):
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


@case('README encodings: the converted tokenizer.json gives llama2.c\'s ids')
def _():
    rows = readme_encodings()
    assert len(rows) == 6, 'found %d rows in the README table' % len(rows)
    for (text, want), (ids, back) in zip(rows, encode(JSON, [t for t, _ in rows])):
        assert ids == want, '%r: %s, want %s' % (text, ids, want)
        assert back == text.encode(), '%r decoded as %r' % (text, back)


tally = {'tokens': 0, 'texts': 0}


@case('tokenizer.json ids == tokenizer.bin ids on all of ../shared/data (whole files, '
      'paragraphs, lines, random cuts), and both decode back')
def _():
    texts = []
    for name in DATA:
        whole = data(name)
        texts.append(whole)
        parts = whole.split(b'\n\n') if name.startswith('tinystories_valid') else whole.split(b'\n')
        texts += [p for p in parts if p][:3000]
        for _ in range(300):  # arbitrary cuts, also inside UTF-8 sequences
            n = rng.randrange(1, 2000)
            at = rng.randrange(len(whole) - n)
            texts.append(whole[at:at + n])
    by_json, by_bin = encode(JSON, texts), encode(BIN, texts)
    bad = []
    for text, (a, da), (b, db) in zip(texts, by_json, by_bin):
        tally['texts'] += 1
        tally['tokens'] += len(a)
        if a != b or da != text or db != text:
            i = first_difference(a, b)
            bad.append('%d bytes from %r: json %s vs bin %s at %d; decodes back: %s %s'
                       % (len(text), text[:60], a[i:i + 5], b[i:i + 5], i, da == text, db == text))
    assert not bad, '%d of %d texts differ:\n%s' % (len(bad), len(texts), '\n'.join(bad[:5]))
    print('# compared %d texts, %d tokens: all equal' % (tally['texts'], tally['tokens']))


def random_text(alphabet, n):
    return ''.join(rng.choice(alphabet) for _ in range(n))


@case('the converted tokenizer.json: the C encoder == the Python HF BPE reference')
def _():
    ref = hf_bpe.Tokenizer(converted)
    valid = data('tinystories_valid.txt').decode()
    texts = [t for t, _ in readme_encodings()] + ['', ' ', '  ', SPACE, 'a' + SPACE + 'b',
                                                  'x' * 50, '\n\n', '\u00e9\u00e9\u00e9']
    for _ in range(150):
        n = rng.randrange(0, 300)
        at = rng.randrange(len(valid) - n)
        texts.append(valid[at:at + n])
    alphabet = list('the a sdnwo\n.,\u00e9') + ['\U0001f642', SPACE, 'ing', ' was', 'ou']
    texts += [random_text(alphabet, rng.randrange(0, 40)) for _ in range(300)]
    for text, (ids, back) in zip(texts, encode(JSON, texts)):
        want = ref.encode(text)
        assert ids == want, '%r: %s, want %s' % (text, ids, want)
        assert back == ref.decode(ids[1:]), '%r decoded as %r' % (text, back)


# ---- a small hand-written tokenizer.json ----
# Ranks that no score order gives: "aba" made by "a ba" before "ab a", "hel" by "h el" before
# "he l", and "a b" listed twice (its last rank counts, after "ab a" needs it). Byte tokens
# after the pieces (not at 3..258); ids past the vocab left unused.

PIECES = ['<unk>', '<s>', '</s>', SPACE, 'a', 'b', 'e', 'h', 'l', 'o', '\u00e9', '\u65e5',
          '\u672c', '\n', 'ba', 'aba', 'ab', 'bab', SPACE + 'h', 'el', 'll', 'he', 'hel',
          'hell', 'hello', SPACE + 'hello', 'lo', 'llo', 'o' + SPACE, '\u65e5\u672c',
          SPACE + '\u65e5\u672c', SPACE + 'a', 'ell', '\u00e9' + SPACE, SPACE + SPACE]
MERGES = ['b a', 'a ba', '%s h' % SPACE, 'e l', 'l l', 'h el', 'a b', 'ab a', 'hel l', 'he l',
          'h e', 'hell o', '%s hello' % SPACE, 'ba b', 'b ab', '\u65e5 \u672c',
          '%s \u65e5\u672c' % SPACE, '%s a' % SPACE, 'l o', 'l lo', 'o %s' % SPACE, 'e ll',
          '\u00e9 %s' % SPACE, '%s %s' % (SPACE, SPACE), 'a b']
TINY_VOCAB = len(PIECES) + 256 + 5


def tiny(pairs=False):
    vocab = {p: i for i, p in enumerate(PIECES)}
    for b in range(256):
        vocab['<0x%02X>' % b] = len(PIECES) + b
    tok = copy.deepcopy(converted)
    tok['model']['vocab'] = vocab
    tok['model']['merges'] = [m.split(' ') if pairs else m for m in MERGES]
    # an added token that model.vocab lacks: decodes as its content, found in the text
    tok['added_tokens'].append({'id': TINY_VOCAB - 1, 'content': '<pad>', 'special': True})
    return tok


def write_json(tok, name):
    path = os.path.join(tmp, name)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(tok, f, ensure_ascii=False)
    return path


@case('a hand-written tokenizer.json ("a b" and ["a", "b"] merges): C == the Python reference '
      'on fixed and random strings, decode included')
def _():
    fixed = ['', 'a', 'ab', 'aba', 'ababa', 'abababab', 'bab', 'babab', 'hello', 'hello hello',
             ' hello', 'hell', 'hel', 'helllo', 'ello', 'caf\u00e9 ', '\u00e9\u00e9 \u00e9',
             '\u65e5\u672c', ' \u65e5\u672c\u65e5\u672c', '\U0001f642', 'a\U0001f642b', 'xyz',
             'o o  o', '    ', SPACE, SPACE + 'hello', 'a' + SPACE + SPACE + 'b', '\n\nhe\n',
             'h\u00e9llo', '<s>', '<0x41>', 'c\u00e9\u65e5\U0001f642 ', 'a<s>b', ' <pad></s>x<s',
             '<pad><pad>', 'hello <s> hello']
    alphabet = (list('abhelo c\n') + ['\u00e9', '\u65e5', '\u672c', '\U0001f642', SPACE, 'ab',
                'hello ', ' ', 'ba', '<s>', '<pad>', '</s', '<'])
    rand = [random_text(alphabet, rng.randrange(0, 30)) for _ in range(1500)]
    for pairs in (False, True):
        tok = tiny(pairs)
        ref = hf_bpe.Tokenizer(tok)
        path = write_json(tok, 'tiny-%s.json' % ('pairs' if pairs else 'strings'))
        texts = fixed + rand
        got = encode(path, texts, TINY_VOCAB)
        for text, (ids, back) in zip(texts, got):
            want = ref.encode(text)
            assert ids == want, '%r: %s, want %s' % (text, ids, want)
            # Decoding drops the dummy space after every BOS (run.c's rule, tokenizer.h), HF's
            # Strip only at the start: "a<s>b" is "a<s>b" here, "a<s> b" there.
            # (and the helper decodes after all the leading specials, <pad> too)
            if '<s>' not in text and not text.startswith(('<pad>', '</s>')):
                assert back == ref.decode(ids[1:]), '%r decoded as %r, want %r' % (
                    text, back, ref.decode(ids[1:]))
            if not any(a in text for a in ('<s>', '</s>', '<pad>')):
                assert back == text.replace(SPACE, ' ').encode(), '%r decoded as %r' % (text, back)
    # The reference itself, by hand. "ab": "a b" is listed twice and its last rank (after
    # "▁ a") counts. "ababa": "b a" (rank 0) twice, then "a ba" (1) before "ab a" could.
    # "hello": "▁ h" (2), "e l" (3), then "l l" is gone and "l o" (18) merges.
    r = hf_bpe.Tokenizer(tiny())
    ids = {p: i for i, p in enumerate(PIECES)}
    for text, pieces in (('ab', [SPACE + 'a', 'b']), ('ababa', [SPACE, 'aba', 'ba']),
                         ('hello', [SPACE + 'h', 'el', 'lo'])):
        want = [1] + [ids[p] for p in pieces]
        assert r.encode(text) == want, '%r: reference gives %s, want %s' % (text, r.encode(text), want)


# ---- malformed files ----

def broken(mutate):
    tok = tiny()
    mutate(tok)
    return tok


def set_path(tok, path, value):
    *head, last = path
    for k in head:
        tok = tok[k]
    if value is DELETE:
        del tok[last]
    else:
        tok[last] = value


DELETE = object()
BAD = [  # (name, tokenizer.json or raw bytes, words the message must hold)
    ('not JSON', b'{"model": {"type": "BPE",', ['JSON', 'at byte']),
    ('not an object', b'[1, 2]', ['not a JSON object']),
    ('model.type WordPiece', broken(lambda t: set_path(t, ['model', 'type'], 'WordPiece')),
     ['model.type', 'WordPiece']),
    ('model.type Unigram', broken(lambda t: set_path(t, ['model', 'type'], 'Unigram')),
     ['model.type', 'Unigram']),
    ('no model', broken(lambda t: set_path(t, ['model'], DELETE)), ['model: missing']),
    ('missing model.vocab', broken(lambda t: set_path(t, ['model', 'vocab'], DELETE)),
     ['model.vocab', 'missing']),
    ('missing model.merges', broken(lambda t: set_path(t, ['model', 'merges'], DELETE)),
     ['model.merges', 'missing']),
    ('a merge naming an unknown piece', broken(lambda t: t['model']['merges'].insert(3, 'a zz')),
     ['model.merges[3]', 'second piece', 'not in model.vocab']),
    ('a merge making an unknown piece', broken(lambda t: t['model']['merges'].append('h a')),
     ['model.merges[%d]' % len(MERGES), 'concatenation', 'not in model.vocab']),
    ('a merge of three pieces', broken(lambda t: t['model']['merges'].append('a b a')),
     ['model.merges[%d]' % len(MERGES), 'two pieces']),
    ('a merge that is a number', broken(lambda t: t['model']['merges'].append(7)),
     ['model.merges[%d]' % len(MERGES)]),
    ('vocab id out of range', broken(lambda t: set_path(t, ['model', 'vocab', 'hello'], TINY_VOCAB)),
     ['model.vocab', '"hello" has id %d' % TINY_VOCAB, "vocab_size is %d" % TINY_VOCAB]),
    ('negative vocab id', broken(lambda t: set_path(t, ['model', 'vocab', 'hello'], -1)),
     ['model.vocab', '"hello" has id -1']),
    ('vocab id not an integer', broken(lambda t: set_path(t, ['model', 'vocab', 'hello'], 2.5)),
     ['model.vocab', '"hello"', 'not an integer']),
    ('two pieces with one id', broken(lambda t: set_path(t, ['model', 'vocab', 'hello'], 4)),
     ['model.vocab', 'id 4']),
    ('a piece with a literal space',
     broken(lambda t: set_path(t, ['model', 'vocab', 'a b'], TINY_VOCAB - 3)),
     ['model.vocab', '"a b"']),
    ('a missing byte token', broken(lambda t: t['model']['vocab'].pop('<0x7F>')),
     ['model.vocab', '<0x7F>']),
    ('no "\u2581" piece', broken(lambda t: t['model']['vocab'].pop(SPACE)),
     ['model.vocab', 'no "%s" piece' % SPACE]),
    ('byte_fallback false', broken(lambda t: set_path(t, ['model', 'byte_fallback'], False)),
     ['model.byte_fallback']),
    ('dropout', broken(lambda t: set_path(t, ['model', 'dropout'], 0.1)), ['model.dropout']),
    ('continuing_subword_prefix', broken(
        lambda t: set_path(t, ['model', 'continuing_subword_prefix'], '##')),
     ['model.continuing_subword_prefix']),
    ('pre_tokenizer ByteLevel', broken(lambda t: set_path(t, ['pre_tokenizer'], {
        'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True,
        'use_regex': True})), ['pre_tokenizer', 'ByteLevel']),
    ('pre_tokenizer Metaspace', broken(lambda t: set_path(t, ['pre_tokenizer'], {
        'type': 'Metaspace', 'replacement': SPACE, 'prepend_scheme': 'first', 'split': False})),
     ['pre_tokenizer', 'Metaspace']),
    ('normalizer NFKC', broken(lambda t: t['normalizer']['normalizers'].append({'type': 'NFKC'})),
     ['normalizer.normalizers[2]', 'NFKC']),
    ('no normalizer', broken(lambda t: set_path(t, ['normalizer'], None)), ['normalizer']),
    ('Prepend twice', broken(lambda t: t['normalizer']['normalizers'].append(
        {'type': 'Prepend', 'prepend': SPACE})), ['normalizer', '2 Prepend']),
    ('decoder without Strip', broken(lambda t: t['decoder']['decoders'].pop()),
     ['decoder.decoders', '3 decoders']),
    ('decoder Strip of two', broken(lambda t: set_path(t, ['decoder', 'decoders', 3, 'start'], 2)),
     ['decoder.decoders[3]', 'Strip']),
    ('decoder ByteLevel', broken(lambda t: set_path(t, ['decoder'], {'type': 'ByteLevel'})),
     ['decoder', 'ByteLevel']),
    ('added token content twice', broken(lambda t: set_path(t, ['added_tokens', 1, 'content'], '</s>')),
     ['added_tokens[2]', '"</s>" is also id 1']),
    ('added token normalized', broken(lambda t: set_path(t, ['added_tokens', 1, 'normalized'], True)),
     ['added_tokens[1].normalized']),
    ('no added_tokens', broken(lambda t: set_path(t, ['added_tokens'], DELETE)),
     ['added_tokens']),
]


@case('malformed tokenizer.json files: each refused, naming the file and the field')
def _():
    for i, (name, tok, words) in enumerate(BAD):
        path = os.path.join(tmp, 'bad%d.json' % i)
        if isinstance(tok, bytes):
            with open(path, 'wb') as f:
                f.write(tok)
        else:
            write_json(tok, 'bad%d.json' % i)
        p = subprocess.run([HELPER, path, str(TINY_VOCAB)], capture_output=True, timeout=60)
        err = p.stderr.decode(errors='replace').strip()
        assert p.returncode == 2, '%s: exit %d, loaded (%s)' % (name, p.returncode, err)
        assert err.startswith(path + ': '), '%s: message does not name the file: %s' % (name, err)
        for w in words:
            assert w in err, '%s: %r not in the message %r' % (name, w, err)
    # the converted tokenizer for a model of fewer tokens: ids beyond its vocab_size
    p = subprocess.run([HELPER, JSON, '400'], capture_output=True, timeout=60)
    err = p.stderr.decode()
    assert p.returncode == 2 and 'outside 0..399' in err and JSON in err, err


# ---- model directories ----

def model_dir(name, files):
    """A model directory of links to stories260K-hf's weights, plus files {name: source}."""
    d = os.path.join(tmp, name)
    os.mkdir(d)
    for f in ('config.json', 'model.safetensors'):
        os.symlink(os.path.join(HF_MODEL, f), os.path.join(d, f))
    for f, src in files.items():
        os.symlink(src, os.path.join(d, f))
    return d


def tool(*args):
    return tap.run(TOOL, *args)


@case('a model directory with tokenizer.json and no tokenizer.bin: generate and eval as with '
      'tokenizer.bin')
def _():
    d = model_dir('json-only', {'tokenizer.json': JSON})
    prompt = ['--prompt', 'Once upon a time', '-n', '20']
    a = tool('generate', '--model', d, '--quant', 'f32', *prompt)
    b = tool('generate', '--model', HF_MODEL, '--quant', 'f32', *prompt)
    assert a[0] == 0, a[2]
    assert a[1] == b[1] and a[1].startswith('Once upon a time'), (a[1], b[1])
    rc, out, err = tool('generate', '--model', d, '--quant', 'f32', '-n', '63')
    greedy = ('Once upon a time, there was a little girl named Lily. She loved to play outside in '
              'the park. One day, she saw a big, red ball. She wanted to play with it, but it '
              'was too high.\nL')
    assert rc == 0 and out.rstrip('\n') == greedy, (out, err)
    text = os.path.join(tmp, 'story.txt')
    with open(text, 'wb') as f:
        f.write(data('tinystories_valid.txt')[:20000])
    a = tool('eval', '--model', d, '--quant', 'f32', '--text', text, '--json')
    b = tool('eval', '--model', HF_MODEL, '--quant', 'f32', '--text', text, '--json')
    assert a[0] == 0 and json.loads(a[1]) == json.loads(b[1]), (a, b)


@case('model directories: tokenizer.json wins over tokenizer.bin; a broken one is a model '
      'error naming file and field; neither file is an error naming the directory')
def _():
    bad = write_json(broken(lambda t: set_path(t, ['model', 'type'], 'WordPiece')), 'wp.json')
    d = model_dir('both-broken-json', {'tokenizer.json': bad, 'tokenizer.bin': BIN})
    rc, out, err = tool('generate', '--model', d, '--quant', 'f32', '-n', '5')
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, (rc, err)
    assert os.path.join(d, 'tokenizer.json') in lines[0] and 'model.type' in lines[0], lines
    d = model_dir('both', {'tokenizer.json': JSON, 'tokenizer.bin': BIN})
    assert encode(d, ['hello world'])[0][0] == [1, 281, 306, 414, 263, 304, 341]
    d = model_dir('neither', {})
    rc, out, err = tool('generate', '--model', d, '--quant', 'f32', '-n', '5')
    assert rc == 1 and d in err and 'neither tokenizer.json' in err, (rc, err)


shutil.rmtree(tmp)
tap.report()
