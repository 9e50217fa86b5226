#!/usr/bin/python3
"""The tokenizer against Hugging Face tokenizers itself (its Rust library through the npm
binding @anush008/tokenizers, which scripts/setup.sh installs into .deps/node), on the
three real tokenizer.json files of ../shared/tokenizers (mistral-32k: sentencepiece kind;
llama3, qwen3: byte-level, Split regexes, NFC for qwen3, ignore_merges for llama3):

- ids, with and without what the post-processor adds (add_special_tokens), and with and
  without special tokens read as text (split_special_tokens), on thousands of texts: lines
  and paragraphs of ../shared/data, a long stretch of it, and generated hard cases
  (CJK, emoji, combining marks in NFC and NFD, RTL, digit runs, whitespace runs, "\\r\\n",
  apostrophes and case, every added token of the file embedded in text, empty text, and
  for the byte-level files invalid UTF-8, which both sides read as U+FFFD per maximal
  invalid subpart: node gets the text as Python decodes it with errors='replace');
- decode against Hugging Face's decode, with special tokens shown (byte-level files) and
  skipped (all three), the bytes made text as Rust's from_utf8_lossy does;
- tokenizer_config.json: BOS and EOS ids, and where generation stops;
- malformed and unsupported tokenizer.json fields, each refused naming the file and field.

A missing reference is a failure saying how to install it, never a skip.

usage: test_tokenizer_hf.py TOKENIZE_HELPER NODE_DIR SHARED_DIR"""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unicodedata

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref'))
import tap  # noqa: E402
import tok_helper  # noqa: E402
from tap import case  # noqa: E402

HELPER, NODE_DIR, SHARED = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
MODULES = os.path.join(NODE_DIR, 'node_modules')
HF_JS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref', 'hf_tokenize.js')
TOKENIZERS = os.path.join(SHARED, 'tokenizers')
FILES = ['mistral-32k', 'llama3', 'qwen3']
DATA = ['tinystories_train.txt', 'tinystories_valid.txt', 'shakespeare_train.txt', 'shakespeare_valid.txt']
ADD, SPLIT = 1, 2  # tok_encode's TOK_ADD_SPECIAL, TOK_SPLIT_SPECIAL
rng = random.Random(20261202)
tmp = tempfile.mkdtemp(prefix='qlora-tokhf-')


def load(name):
    with open(os.path.join(TOKENIZERS, name, 'tokenizer.json'), encoding='utf-8') as f:
        return json.load(f)


def vocab_size(tok):
    return 1 + max(max(tok['model']['vocab'].values()), max(a['id'] for a in tok['added_tokens']))


def helper(path, vocab, texts, flags):
    return tok_helper.run(HELPER, path, vocab, texts, flags)


def hf(path, texts, decode):
    """Hugging Face's answers (ref/hf_tokenize.js) for texts (str) and id lists."""
    req = os.path.join(tmp, 'request.json')
    with open(req, 'w', encoding='utf-8') as f:
        json.dump({'texts': texts, 'decode': decode}, f)
    with open(req, 'rb') as f:
        p = subprocess.run(['node', HF_JS, MODULES, path], stdin=f, capture_output=True, timeout=900)
    assert p.returncode == 0, 'the Hugging Face reference failed: %s' % p.stderr.decode(errors='replace')[-2000:]
    return json.loads(p.stdout)


# ---- the texts ----

def data_texts():
    texts = []
    for name in DATA:
        with open(os.path.join(SHARED, 'data', name), 'rb') as f:
            whole = f.read()
        lines = [ln for ln in whole.split(b'\n') if ln.strip()]
        texts += rng.sample(lines, min(700, len(lines)))
        paras = whole.split(b'\n\n')
        texts += rng.sample(paras, min(100, len(paras)))
        for _ in range(40):  # arbitrary cuts with their newlines, also inside characters
            n = rng.randrange(1, 3000)
            at = rng.randrange(len(whole) - n)
            texts.append(whole[at:at + n])
        if name == 'tinystories_valid.txt':
            texts.append(whole[:200000])  # long: many pre-tokens, chunks
    return texts


UNICODE = ['\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3002', '\u4e2d\u6587\u6d4b\u8bd5\uff0c\u6ca1\u6709\u7a7a\u683c',
           '\ud55c\uad6d\uc5b4 \ubb38\uc7a5', '\U0001f642', '\U0001f468\u200d\U0001f469\u200d\U0001f467',
           '\U0001f44d\U0001f3fd', '\u2764\ufe0f', 'caf\u00e9', 'cafe\u0301', 'Ame\u0301lie', '\u1100\u1161\u11a8',
           '\u0958', 'A\u030a', '\u212b', 'e\u0301\u0301', 'Vi\u1ec7t Nam', 'Vie\u0323\u0302t',
           '\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645', '\u05e9\u05dc\u05d5\u05dd',
           '\u202eabc\u202c', '\u0928\u092e\u0938\u094d\u0924\u0947', '\u00a0', '\u3000', '\u2003', '\u200b',
           '\ufeff', '\u00df', '\u0130', '\u03a3\u03bf\u03c6\u03af\u03b1', '\u0416\u0438\u0437\u043d\u044c',
           '\U00020000', '\U0010ffff', '\ue000', '\u00bd', '\u2167', '\u0663\u0664', '\uff11\uff12']
PIECES = (['Hello', 'hello', ' world', 'The', ' the', 'a', ' ', '  ', '   ', '\t', '\n', '\n\n', '\r\n',
           '\r', ' \n', '\t\t ', '.', ',', '!', '?', '...', '-', '--', '(', ')', '"', "'", '`', '$', '%',
           "'s", "'S", "'ll", "'LL", "'VE", "'ve", "'re", "'d", "'m", "'t", "don't", "DON'T", "I'M",
           'x', 'ABC', 'camelCase', 'snake_case', 'https://example.com/a?b=1', 'a@b.c', '#1', '_'] +
          ['1', '12', '123', '1234', '12345', '1234567', '3.14159', '1,000,000', '2026-12-02', '0x1F']
          + UNICODE)


def specials_of(tok):
    return [a['content'] for a in tok['added_tokens']]


def generated(tok, byte_level):
    adds = specials_of(tok)
    texts = [b'', b' ', b'  ', b'\n', b'\r\n', b'\t', b'a', b'   leading', b'trailing   ', b'trailing \n ',
             b'a  b   c    d', b'\n\n\n\nx', b'x\r\n\r\ny', b' \t \n \r\n ']
    texts += [p.encode() for p in PIECES]
    for u in UNICODE:  # a form and its NFC and NFD, alone and in words
        for form in (u, unicodedata.normalize('NFC', u), unicodedata.normalize('NFD', u)):
            texts += [form.encode(), ('x' + form + ' y').encode(), (' ' + form + form).encode()]
    for n in range(1, 14):
        texts += [('7' * n).encode(), ('a' + '9' * n + 'b').encode(), (' ' + '5' * n + ' ').encode()]
    for n in (1, 2, 3, 5, 8, 17, 40):
        texts += [(' ' * n + 'x').encode(), ('x' + ' ' * n).encode(), ('x' + '\t' * n + 'y').encode(),
                  ('x' + '\n' * n).encode(), ('x' + ' \n' * n + 'y').encode()]
    some = adds if len(adds) <= 40 else adds[:20] + rng.sample(adds[20:], 20)
    for a in some:  # added tokens in text, whole, cut, doubled, with spaces around
        texts += [a.encode(), ('x' + a + 'y').encode(), (' ' + a + ' ').encode(), (a + a).encode(),
                  ('Hello ' + a + '\nworld').encode(), a[:-1].encode(), a[1:].encode(), (a + 'x' + a).encode()]
    for _ in range(1500):
        texts.append(''.join(rng.choice(PIECES + some) for _ in range(rng.randrange(1, 25))).encode())
    if byte_level:  # invalid UTF-8: lone continuations, truncated sequences, overlong, surrogates
        bad = [b'\x80', b'\xff', b'\xc3', b'\xe2\x82', b'\xf0\x9f\x99', b'\xc0\xaf', b'\xed\xa0\x80',
               b'\xf4\x90\x80\x80', b'a\x80b', b'\xe6\x97\xa5\xe6']
        texts += bad + [b'hello ' + b + b' world' for b in bad]
        for _ in range(300):
            texts.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
    return texts


def compared(name, tok):
    byte_level = tok['decoder'] and tok['decoder'].get('type') == 'ByteLevel'
    texts = data_texts() + generated(tok, byte_level)
    if not byte_level:
        # the sentencepiece kind encodes invalid UTF-8 as its bytes (byte fallback), which
        # no Python str holds: only valid texts go to the reference
        texts = [t for t in texts if valid(t)]
    return texts


def valid(b):
    try:
        b.decode('utf-8')
        return True
    except UnicodeDecodeError:
        return False


def first_difference(a, b):
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


def check_file(name, tok=None, path=None, texts=None):
    tok = tok or load(name)
    path = path or os.path.join(TOKENIZERS, name, 'tokenizer.json')
    V = vocab_size(tok)
    byte_level = tok['decoder'].get('type') == 'ByteLevel'
    texts = texts or compared(name, tok)
    ours = {flags: helper(path, V, texts, flags) for flags in (0, ADD, SPLIT, ADD | SPLIT)}
    strs = [t.decode('utf-8', errors='replace') for t in texts]
    decode_ids = [ids for ids, *_ in ours[ADD]]
    ref = hf(path, strs, decode_ids)
    bad, n_tokens = [], 0
    modes = ((ADD, 'ids'), (0, 'plain'), (ADD | SPLIT, 'split'), (SPLIT, 'split_plain'))
    for i, text in enumerate(texts):
        for flags, key in modes:
            got, want = ours[flags][i][0], ref['texts'][i][key]
            n_tokens += len(got)
            if got != want:
                k = first_difference(got, want)
                bad.append('%s %r: ids %s vs HF %s at %d' % (key, text[:80], got[k:k + 6], want[k:k + 6], k))
        _, _, shown, skipped = ours[ADD][i]
        d = ref['decode'][i]
        if skipped.decode('utf-8', errors='replace') != d['skipped']:
            bad.append('decode (specials skipped) of %r: %r vs HF %r' % (text[:60], skipped[:80], d['skipped'][:80]))
        if byte_level and shown.decode('utf-8', errors='replace') != d['shown']:
            bad.append('decode of %r: %r vs HF %r' % (text[:60], shown[:80], d['shown'][:80]))
    assert not bad, '%s: %d of %d comparisons differ:\n# %s' % (name, len(bad), 5 * len(texts), '\n# '.join(bad[:8]))
    print('# %s: %d texts, %d tokens in 4 modes, and their decodes: all equal to Hugging Face' %
          (name, len(texts), n_tokens))


@case('the Hugging Face reference is installed (scripts/setup.sh puts it in .deps/node)')
def _():
    assert shutil.which('node'), 'node is not on PATH: run scripts/setup.sh (Debian nodejs)'
    pkg = os.path.join(MODULES, '@anush008', 'tokenizers', 'package.json')
    assert os.path.exists(pkg), '%s missing: run scripts/setup.sh (npm install of @anush008/tokenizers)' % pkg


for _name in FILES:
    case('%s: ids (4 modes) and decodes equal Hugging Face tokenizers on data and hard cases' % _name)(
        lambda name=_name: check_file(name))


@case('added tokens with lstrip, rstrip and single_word (a qwen3 variant): ids equal Hugging Face')
def _():
    tok = load('qwen3')
    flags = {151644: ('lstrip', 'rstrip'), 151645: ('rstrip',), 151667: ('single_word',),
             151668: ('lstrip', 'single_word'), 151657: ('single_word', 'rstrip')}
    for a in tok['added_tokens']:
        for f in flags.get(a['id'], ()):
            a[f] = True
    path = os.path.join(tmp, 'qwen3-strip.json')
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(tok, f, ensure_ascii=False)
    marks = [a['content'] for a in tok['added_tokens'] if a['id'] in flags]
    around = [' ', '  ', '\t', '\n', '\u3000', '\u00a0', '\u2003', 'x', 'word', '_', '9', '\u00e9', '-', '.',
              '\u0301', '\u65e5', '\U0001f642', '']
    texts = []
    for m in marks:
        for a in around:
            for b in around:
                texts.append((a + m + b).encode())
                texts.append(('Hi' + a + m + b + 'there' + a + m).encode())
    for _ in range(1500):
        texts.append(''.join(rng.choice(marks + around) for _ in range(rng.randrange(1, 14))).encode())
    check_file('qwen3 (lstrip, rstrip, single_word)', tok, path, texts)


@case('no special token hides an overlapping non-special one (what the split reference assumes)')
def _():
    for name in FILES:
        adds = load(name)['added_tokens']
        for s in (a['content'] for a in adds if a['special']):
            for o in (a['content'] for a in adds if not a['special']):
                assert o not in s and not any(s.endswith(o[:k]) or o.endswith(s[:k]) for k in range(1, len(o))), \
                    (name, s, o)


def encode(path, vocab, text, flags=ADD):
    return helper(path, vocab, [text.encode()], flags)[0][0]


@case('tokenizer_config.json: BOS/EOS and what encoding adds, as transformers\' AutoTokenizer')
def _():
    # mistral-32k: LlamaTokenizer, add_bos_token true: BOS first, no EOS
    d = os.path.join(tmp, 'mistral')
    os.mkdir(d)
    src = os.path.join(TOKENIZERS, 'mistral-32k')
    os.symlink(os.path.join(src, 'tokenizer.json'), os.path.join(d, 'tokenizer.json'))
    with open(os.path.join(src, 'tokenizer_config.json')) as f:
        cfg = json.load(f)
    hello = encode(os.path.join(src, 'tokenizer.json'), 32000, 'Hello')
    assert hello == [1, 22557], hello
    cfg['add_eos_token'] = True  # LlamaTokenizerFast.update_post_processor: "<s> $A </s>"
    with open(os.path.join(d, 'tokenizer_config.json'), 'w') as f:
        json.dump(cfg, f)
    assert encode(os.path.join(d, 'tokenizer.json'), 32000, 'Hello') == [1, 22557, 2]
    cfg['add_bos_token'] = False
    with open(os.path.join(d, 'tokenizer_config.json'), 'w') as f:
        json.dump(cfg, f)
    assert encode(os.path.join(d, 'tokenizer.json'), 32000, 'Hello') == [22557, 2]
    # qwen3: Qwen2Tokenizer, add_bos_token false: nothing added; llama3: nothing either
    assert encode(os.path.join(TOKENIZERS, 'qwen3', 'tokenizer.json'), 151669, 'Hello') == [9707]
    assert encode(os.path.join(TOKENIZERS, 'llama3', 'tokenizer.json'), 128256, 'Hello') == [9906]
    # a non-Llama class asking for BOS: transformers would not rebuild the template; refused
    cfg = {'tokenizer_class': 'Qwen2Tokenizer', 'add_bos_token': True, 'bos_token': None}
    d = os.path.join(tmp, 'qwen-bos')
    os.mkdir(d)
    os.symlink(os.path.join(TOKENIZERS, 'qwen3', 'tokenizer.json'), os.path.join(d, 'tokenizer.json'))
    with open(os.path.join(d, 'tokenizer_config.json'), 'w') as f:
        json.dump(cfg, f)
    p = subprocess.run([HELPER, d, '151669'], capture_output=True, timeout=60)
    assert p.returncode == 2 and 'tokenizer_config.json' in p.stderr.decode() and \
        'add_bos_token' in p.stderr.decode(), p.stderr


# ---- malformed and unsupported files ----

def variant(name, mutate):
    tok = load(name)
    mutate(tok)
    return tok


def set_in(tok, keys, value):
    *head, last = keys
    for k in head:
        tok = tok[k]
    tok[last] = value


BAD = [  # (base file, mutation, words the message must hold)
    ('qwen3', lambda t: set_in(t, ['normalizer'], {'type': 'NFKC'}), ['normalizer', 'NFKC']),
    ('qwen3', lambda t: set_in(t, ['normalizer'], {'type': 'Lowercase'}), ['normalizer', 'Lowercase']),
    ('qwen3', lambda t: set_in(t, ['pre_tokenizer', 'pretokenizers', 0, 'behavior'], 'Sideways'),
     ['pre_tokenizer.pretokenizers[0].behavior', 'Sideways']),
    ('qwen3', lambda t: set_in(t, ['pre_tokenizer', 'pretokenizers', 0, 'pattern'], {'Regex': '(?<'}),
     ['pre_tokenizer.pretokenizers[0].pattern.Regex', 'does not compile']),
    ('qwen3', lambda t: set_in(t, ['pre_tokenizer', 'pretokenizers', 0], {'type': 'Whitespace'}),
     ['pre_tokenizer.pretokenizers[0]', 'Whitespace']),
    ('qwen3', lambda t: set_in(t, ['pre_tokenizer', 'pretokenizers', 0, 'invert'], 'no'),
     ['pre_tokenizer.pretokenizers[0].invert']),
    ('qwen3', lambda t: t['pre_tokenizer']['pretokenizers'].pop(), ['pre_tokenizer', 'ByteLevel']),
    ('qwen3', lambda t: set_in(t, ['pre_tokenizer'], None), ['pre_tokenizer', 'ByteLevel']),
    ('qwen3', lambda t: set_in(t, ['post_processor'], {'type': 'RobertaProcessing'}),
     ['post_processor', 'RobertaProcessing']),
    ('qwen3', lambda t: set_in(t, ['post_processor'], {'type': 'TemplateProcessing', 'single': [],
                                                       'pair': [], 'special_tokens': {}}),
     ['post_processor.single', '$A']),
    ('qwen3', lambda t: set_in(t, ['model', 'byte_fallback'], True), ['model.byte_fallback']),
    ('qwen3', lambda t: set_in(t, ['model', 'type'], 'WordPiece'), ['model.type', 'WordPiece']),
    ('qwen3', lambda t: set_in(t, ['model', 'dropout'], 0.1), ['model.dropout']),
    ('qwen3', lambda t: set_in(t, ['model', 'end_of_word_suffix'], '</w>'), ['model.end_of_word_suffix']),
    ('qwen3', lambda t: t['model']['vocab'].pop('\u0120'), ['model.vocab', 'U+0120']),
    ('qwen3', lambda t: set_in(t, ['model', 'vocab', 'a b'], 5), ['model.vocab', '"a b"']),
    ('qwen3', lambda t: t['model']['merges'].insert(7, ['\u00e9\u00e9', 'x']), ['model.merges[7]']),
    ('qwen3', lambda t: set_in(t, ['added_tokens', 0, 'normalized'], True), ['added_tokens[0].normalized']),
    ('qwen3', lambda t: set_in(t, ['added_tokens', 0, 'lstrip'], 'yes'), ['added_tokens[0]', 'booleans']),
    ('qwen3', lambda t: set_in(t, ['added_tokens', 1, 'content'], '<|endoftext|>'),
     ['added_tokens[1]', 'is also id 151643']),
    ('llama3', lambda t: set_in(t, ['model', 'ignore_merges'], 'yes'), ['model.ignore_merges']),
    ('llama3', lambda t: set_in(t, ['decoder'], {'type': 'WordPiece'}),
     ['model.byte_fallback']),  # not ByteLevel: read as the sentencepiece kind, which needs byte fallback
    ('mistral-32k', lambda t: set_in(t, ['decoder'], {'type': 'ByteLevel'}), ['model.byte_fallback']),
    ('mistral-32k', lambda t: set_in(t, ['post_processor', 'single', 0, 'SpecialToken', 'id'], '<x>'),
     ['post_processor.special_tokens', '<x>']),
    ('mistral-32k', lambda t: set_in(t, ['post_processor', 'special_tokens', '<s>', 'ids'], [99999]),
     ['post_processor.special_tokens["<s>"].ids[0]']),
]


@case('malformed or unsupported tokenizer.json fields: each refused, naming the file and the field')
def _():
    for i, (base, mutate, words) in enumerate(BAD):
        path = os.path.join(tmp, 'bad%d.json' % i)
        tok = variant(base, mutate)
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(tok, f, ensure_ascii=False)
        p = subprocess.run([HELPER, path, str(vocab_size(load(base)))], capture_output=True, timeout=60)
        err = p.stderr.decode(errors='replace').strip()
        assert p.returncode == 2, 'case %d %s: exit %d, loaded (%s)' % (i, words, p.returncode, err)
        assert err.startswith(path + ': '), 'case %d: message does not name the file: %s' % (i, err)
        for w in words:
            assert w in err, 'case %d: %r not in the message %r' % (i, w, err)


@case('model directories: generation stops at generation_config.json\'s eos ids, else config.json\'s, '
      'else the tokenizer\'s EOS; bad ids are refused naming the file')
def _():
    stops = os.path.join(tmp, 'stops')
    os.mkdir(stops)
    os.symlink(os.path.join(TOKENIZERS, 'qwen3', 'tokenizer.json'), os.path.join(stops, 'tokenizer.json'))
    os.symlink(os.path.join(TOKENIZERS, 'qwen3', 'tokenizer_config.json'),
               os.path.join(stops, 'tokenizer_config.json'))

    def load_err(cfgs):
        for f, v in cfgs.items():
            with open(os.path.join(stops, f), 'w') as fh:
                json.dump(v, fh)
        p = subprocess.run([HELPER, stops, '151669'], capture_output=True, timeout=60)
        for f in cfgs:
            os.unlink(os.path.join(stops, f))
        return p.returncode, p.stderr.decode()
    rc, err = load_err({'config.json': {'eos_token_id': [151645, 999999]}})
    assert rc == 2 and 'config.json' in err and 'eos_token_id' in err, err
    rc, err = load_err({'generation_config.json': {'eos_token_id': 'x'}})
    assert rc == 2 and 'generation_config.json' in err, err


shutil.rmtree(tmp, ignore_errors=True)
tap.report()
