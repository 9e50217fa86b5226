#!/usr/bin/python3
"""SFT conversations against transformers' way (issue 18): for the real tokenizers and chat
templates of ../shared/tokenizers (Qwen3, Llama 3), the token ids qlorad trains on equal
Hugging Face's (python3-jinja2 renders the template as apply_chat_template does, Hugging
Face tokenizers encodes it without adding special tokens), and the positions that carry
loss equal those the reference finds by the same rule on its own ids: assistant message j's
tokens are what rendering messages[..j] adds to rendering messages[..j-1] with the
generation prompt. TAP output.

usage: test_sft_chat.py SFT_HELPER NODE_DIR SHARED_DIR"""

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref'))
from chat_ref import IMPORT_ERROR, jinja2, reference  # noqa: E402
from tap import case, report  # noqa: E402

HELPER, NODE_DIR, SHARED = sys.argv[1], os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
MODULES = os.path.join(NODE_DIR, 'node_modules')
HF_JS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref', 'hf_tokenize.js')
tmp = tempfile.mkdtemp(prefix='qlora-sft-chat-')

CONVERSATIONS = [
    [{'role': 'user', 'content': 'Tell me a story about a fox.'},
     {'role': 'assistant', 'content': 'Once upon a time, a fox found a red ball.'}],
    [{'role': 'system', 'content': 'You are brief.'},
     {'role': 'user', 'content': 'What is 2 + 2?'},
     {'role': 'assistant', 'content': '4.', 'weight': 0},
     {'role': 'user', 'content': 'And 3 + 3?'},
     {'role': 'assistant', 'content': '6. That is all.'}],
    [{'role': 'user', 'content': 'Übersetze: "the cat" — 猫 🐈'},
     {'role': 'assistant', 'content': 'Die Katze.\n\nDas ist alles.'},
     {'role': 'user', 'content': "Don't stop; it's fine."},
     {'role': 'assistant', 'content': "I won't, I'll go on:  spaces,\ttabs and 12345."}],
]


def hf_plain(path, texts):
    """Hugging Face tokenizers' ids of texts without added special tokens (ref/hf_tokenize.js)."""
    req = os.path.join(tmp, 'request.json')
    with open(req, 'w', encoding='utf-8') as f:
        json.dump({'texts': texts, 'decode': []}, f)
    with open(req, 'rb') as f:
        p = subprocess.run(['node', HF_JS, MODULES, path], stdin=f, capture_output=True, timeout=300)
    assert p.returncode == 0, 'the Hugging Face reference failed: %s' % p.stderr.decode(errors='replace')[-2000:]
    return [t['plain'] for t in json.loads(p.stdout)['texts']]


def shared(a, b):
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def expected(name, conv):
    """The reference's ids and loss mask for one conversation: an assistant message's tokens
    are what its turn adds to the rendering of the turns before it with the generation prompt
    (the prefix rule); where the template renders those turns otherwise once later ones
    follow, the span of its content, found by rendering the whole with a marker in its place,
    up to the special token after it (the content-span rule). None when neither holds."""
    d = os.path.join(SHARED, 'tokenizers', name)
    cfg = json.load(open(os.path.join(d, 'tokenizer_config.json'), encoding='utf-8'))
    tj = json.load(open(os.path.join(d, 'tokenizer.json'), encoding='utf-8'))
    special = {a['id'] for a in tj['added_tokens'] if a.get('special')}
    tok = lambda k: cfg[k]['content'] if isinstance(cfg.get(k), dict) else cfg.get(k)  # noqa: E731
    template = cfg['chat_template']
    plain = [{k: v for k, v in m.items() if k != 'weight'} for m in conv]

    def render(msgs, gen):
        tag, text = reference(template, msgs, gen, tok('bos_token'), tok('eos_token'), {})
        assert tag == 'ok', text
        return text
    full = render(plain, False)
    hf = lambda texts: hf_plain(os.path.join(d, 'tokenizer.json'), texts)  # noqa: E731
    full_ids = hf([full])[0]
    loss = [0] * len(full_ids)
    for j, m in enumerate(conv):
        if m['role'] != 'assistant':
            continue
        gen_text, upto_text = render(plain[:j], True), render(plain[:j + 1], False)
        if full.startswith(gen_text) and full.startswith(upto_text):
            gen_ids, upto_ids = hf([gen_text, upto_text])
            begin, end = shared(gen_ids, full_ids), shared(upto_ids, full_ids)
        else:
            alt = render(plain[:j] + [dict(plain[j], content='\x01')] + plain[j + 1:], False)
            p = alt.index('\x01')
            after = len(alt) - p - 1
            if alt.count('\x01') != 1 or alt[:p] != full[:p] or alt[p + 1:] != full[len(full) - after:]:
                return None
            q = len(full) - after
            q_ws = q
            while q_ws < len(full) and full[q_ws] in ' \t\r\n':
                q_ws += 1
            at_p, at_q, at_ws = hf([full[:p], full[:q], full[:q_ws]])
            begin, end, e_ws = shared(at_p, full_ids), shared(at_q, full_ids), shared(at_ws, full_ids)
            if e_ws < len(full_ids) and full_ids[e_ws] in special:
                end = e_ws + 1
        for i in range(max(begin, 1), end):
            loss[i] = int(m.get('weight', 1) != 0)
    return full_ids, loss


def ours(name, conv):
    d = os.path.join(SHARED, 'tokenizers', name)
    tj = json.load(open(os.path.join(d, 'tokenizer.json'), encoding='utf-8'))
    vocab = 1 + max(max(tj['model']['vocab'].values()), max(a['id'] for a in tj['added_tokens']))
    path = os.path.join(tmp, name + '.jsonl')
    with open(path, 'w', encoding='utf-8') as f:
        f.write(json.dumps({'messages': conv}, ensure_ascii=False) + '\n')
    p = subprocess.run([HELPER, d, str(vocab), path], capture_output=True, timeout=120)
    if p.returncode != 0:
        return p.stderr.decode(errors='replace')
    ids, loss = p.stdout.decode().rstrip('\n').split('\t')
    return [int(i) for i in ids.split()], [int(i) for i in loss.split()]


@case('the references are installed: python3-jinja2 and Hugging Face tokenizers (scripts/setup.sh)')
def _():
    assert jinja2 is not None, 'python3-jinja2 is missing (%s): run scripts/setup.sh' % IMPORT_ERROR
    assert os.path.exists(os.path.join(MODULES, '@anush008/tokenizers/package.json')), \
        '@anush008/tokenizers is missing under %s: run scripts/setup.sh' % NODE_DIR


for name in ('qwen3', 'llama3'):
    @case('%s: conversations train on Hugging Face\'s ids of the rendered template, loss on the '
          'assistant turns as the reference finds them' % name)
    def _(name=name):
        learned, refused = 0, 0
        for i, conv in enumerate(CONVERSATIONS):
            want, got = expected(name, conv), ours(name, conv)
            if want is None:  # neither rule places the message: refused, naming it
                assert isinstance(got, str) and 'no span of tokens is its own' in got, (i, got)
                refused += 1
                continue
            assert not isinstance(got, str), 'conversation %d refused: %s' % (i, got)
            assert got[0] == want[0], 'conversation %d: ids differ at %d' % (i, shared(got[0], want[0]))
            assert got[1] == want[1], 'conversation %d: loss differs at %s' % (
                i, [k for k in range(len(want[1])) if got[1][k] != want[1][k]][:5])
            assert sum(want[1]) > 0, i
            learned += sum(want[1])
        assert refused == 0, '%d conversations refused' % refused
        print('# %s: %d conversations equal to the reference (%d tokens carry loss)' % (
            name, len(CONVERSATIONS), learned))


def vocab_of(d):
    tj = json.load(open(os.path.join(d, 'tokenizer.json'), encoding='utf-8'))
    return 1 + max(max(tj['model']['vocab'].values()), max(a['id'] for a in tj['added_tokens']))


PROBE = 'qlora-probe-reply'
for name in ('qwen3', 'llama3'):
    @case('%s: chat\'s prompt is Hugging Face\'s ids of the template with the generation prompt; its '
          'end-of-turn stop is the special token the template writes first after a reply' % name)
    def _(name=name):
        d = os.path.join(SHARED, 'tokenizers', name)
        cfg = json.load(open(os.path.join(d, 'tokenizer_config.json'), encoding='utf-8'))
        tok = lambda k: cfg[k]['content'] if isinstance(cfg.get(k), dict) else cfg.get(k)  # noqa: E731
        for conv in CONVERSATIONS:
            msgs = [{k: v for k, v in m.items() if k != 'weight'} for m in conv[:-1]]  # ends on the user
            tag, text = reference(cfg['chat_template'], msgs, True, tok('bos_token'), tok('eos_token'), {})
            assert tag == 'ok', text
            want = hf_plain(os.path.join(d, 'tokenizer.json'), [text])[0]
            path = os.path.join(tmp, name + '-prompt.json')
            with open(path, 'w', encoding='utf-8') as f:
                json.dump(msgs, f, ensure_ascii=False)
            p = subprocess.run([HELPER, '--prompt', d, str(vocab_of(d)), path], capture_output=True, timeout=120)
            assert p.returncode == 0, p.stderr.decode(errors='replace')
            ids_line, eot_line = p.stdout.decode().splitlines()
            assert [int(i) for i in ids_line.split()] == want, (name, msgs)
        # the reference's end of a reply: what follows its content, whitespace aside
        tag, text = reference(cfg['chat_template'], [{'role': 'user', 'content': 'x'},
                                                     {'role': 'assistant', 'content': PROBE}], False,
                              tok('bos_token'), tok('eos_token'), {})
        marker = text[text.index(PROBE) + len(PROBE):].strip()
        ids = hf_plain(os.path.join(d, 'tokenizer.json'), [marker])[0]
        assert eot_line == 'eot %d' % ids[0], (name, marker, ids, eot_line)
        print('# %s: end of turn %r: id %d' % (name, marker, ids[0]))


report()
