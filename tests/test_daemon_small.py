#!/usr/bin/python3
"""qlorad against careless and hostile strings and races (issue 15, "smaller ones"): every
str it sends is valid UTF-8, client strings cannot forge log lines, PEFT import refuses a
non-finite lora_alpha, a version deleted while the cache loads it stays deleted, a huge
prompt is refused before it is tokenized, adapter names are read exactly; op.list lists
what the dispatcher serves. Each case runs its own daemon (stories260K, nf4) from
tests/qlorad_fixture.py, so cases do not depend on each other's order. TAP output.

usage: test_daemon_small.py QLORAD SHARED_DIR CLIENT_DIR"""

import codecs
import json
import os
import shutil
import subprocess
import tempfile
import socket
import struct
import sys
import threading
import time

import msgpack

from tap import case, report
from qlorad_fixture import Daemon, peft_files as fixture_peft_files

QLORAD, SHARED, CLIENT_DIR, TOOL = sys.argv[1:5]
sys.path.insert(0, CLIENT_DIR)
from qlora_client import Client, QloraError  # noqa: E402

MODEL = os.path.join(SHARED, 'models', 'stories260K')
DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ_LEN = struct.unpack(
    '7i', open(os.path.join(MODEL, 'model.bin'), 'rb').read(28))


class Checked(Daemon):
    """A daemon that must exit with status 0 at SIGTERM (under the sanitizers, a leak or an
    error report fails the case)."""
    def __exit__(self, exc_type, *rest):
        status = self.stop()
        tail = self.log_text()[-3000:]
        self.cleanup()
        if exc_type is None:
            assert status == 0, 'qlorad exited with %r: %s' % (status, tail)


@case('job.submit: method, hyper.schedule and hyper.init take their words only, each named in the error')
def _():
    with Checked(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=60) as c:
        data = {'text': 'Once upon a time ' * 20}
        for kw, field, choices in ((dict(method='dpo'), 'method', '"lora" or "recovery"'),
                                   (dict(schedule='linear'), 'hyper.schedule', '"cosine" or "constant"'),
                                   (dict(init='pissa'), 'hyper.init', '"default" or "loftq"')):
            try:
                c.submit('w', data, **kw)
                raise AssertionError('%r was taken' % kw)
            except QloraError as e:
                assert e.code == 'invalid_argument' and e.message == '%s: must be %s' % (field, choices), (kw, e)
        job = c.submit('w', data, method='recovery', schedule='constant', init='loftq', steps=1, seq_len=16,
                       batch_size=1)
        rec = c.job(job['job_id'])
        assert (rec['method'], rec['hyper']['schedule'], rec['hyper']['init']) == ('recovery', 'constant', 'loftq'), rec


@case('job.submit with JSONL examples trains on them (SFT), its format in the record; a bad line, mixed data '
      'or recovery on examples are refused at submit, naming file, line and field')
def _():
    lines = [json.dumps({'prompt': 'Once upon a time there was a %s.' % w, 'completion': ' The %s was happy.' % w})
             for w in ('cat', 'dog', 'bird', 'fox', 'girl', 'boy')]
    with Checked(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=60) as c:
        good = c.submit('sft', {'text': '\n'.join(lines) + '\n'}, eval_data={'text': lines[0] + '\n'}, steps=3,
                        seq_len=64, batch_size=2, train_on_prompt=False)
        refusals = (
            (dict(data={'text': lines[0] + '\n{"prompt": "x", "completion": 7}\n'}),
             ['data.file_id', 'line 2', "'completion' is not a string"]),
            (dict(data={'text': lines[0] + '\n{"text": "x"\n'}), ['data.file_id', 'line 2']),
            (dict(data={'text': lines[0] + '\n'}, eval_data={'text': 'Once upon a time ' * 9}),
             ['eval_data', 'plain text']),
            (dict(data={'text': json.dumps({'messages': [{'role': 'user', 'content': 'hi'},
                                                         {'role': 'assistant', 'content': 'ho'}]}) + '\n'}),
             ['data.file_id', 'chat template']),
            (dict(data={'text': lines[0] + '\n'}, method='recovery'), ['method', 'not on examples']),
        )
        for kw, words in refusals:
            try:
                c.submit('sft-bad', steps=2, seq_len=64, batch_size=1, **kw)
                raise AssertionError('%r was taken' % kw)
            except QloraError as e:
                assert e.code == 'invalid_argument' and all(w in e.message for w in words), (kw, e)
        assert [j['job_id'] for j in c.jobs()] == [good['job_id']], 'a refused submit leaves no job'
        deadline = time.time() + 120
        while c.job(good['job_id'])['state'] not in ('succeeded', 'failed', 'cancelled'):
            assert time.time() < deadline
            time.sleep(0.1)
        g = c.job(good['job_id'])
        assert g['state'] == 'succeeded' and g['hyper']['train_on_prompt'] is False, g
        assert g['data']['format'] == g['eval_data']['format'] == 'prompt_completion', g
        assert g['hyper']['chat_template'] == 'model', g['hyper']
        # a conversation on a model without a template trains with a named built-in
        conv = json.dumps({'messages': [{'role': 'user', 'content': 'Once upon a time'},
                                        {'role': 'assistant', 'content': 'there was a cat.'}]}) + '\n'
        chat = c.submit('sft-chat', {'text': conv * 4}, steps=2, seq_len=64, batch_size=1, chat_template='chatml')
        rec = c.job(chat['job_id'])
        assert rec['data']['format'] == 'messages' and rec['hyper']['chat_template'] == 'chatml', rec
        # the example files of docs/training.md, one per format
        examples = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'docs', 'examples')
        for name, fmt in (('prompt_completion', 'prompt_completion'), ('messages', 'messages'),
                          ('text', 'text_examples')):
            j = c.submit('doc-' + name, os.path.join(examples, name + '.jsonl'), steps=1, seq_len=64, batch_size=1,
                         chat_template='chatml')
            assert c.job(j['job_id'])['data']['format'] == fmt, (name, c.job(j['job_id']))
        try:
            c.submit('x', {'text': conv}, chat_template='alpaca')
            raise AssertionError('an unknown template was taken')
        except QloraError as e:
            assert e.code == 'invalid_argument' and 'hyper.chat_template' in e.message and 'chatml' in e.message, e


@case('job.submit: epochs set the steps (as qlora-tool counts them), validation_split holds out, patience keeps the best')
def _():
    import json
    words = ('cat', 'dog', 'bird', 'fox', 'girl', 'boy', 'tree', 'sun', 'boat')
    lines = [json.dumps({'prompt': 'Once upon a time there was a %s.' % w, 'completion': ' The %s was happy.' % w})
             for w in words]
    text = '\n'.join(lines) + '\n'
    hyper = dict(epochs=2, validation_split=0.34, patience=1, eval_every=1, seq_len=64, batch_size=2, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'pairs.jsonl')
        with open(path, 'w') as f:
            f.write(text)
        out = subprocess.run([TOOL, 'train', '--model', MODEL, '--data', path, '--out', os.path.join(tmp, 'a'),
                              '--epochs', '2', '--validation-split', '0.34', '--patience', '1', '--eval-every', '1',
                              '--seq-len', '64', '--batch', '2', '--seed', '3'],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        tool_steps = int(out.stdout.split('epochs: 2 (')[1].split(' ')[0])
        assert 'validation_split 0.34: 3 examples held out' in out.stdout, out.stdout
    with Checked(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=60) as c:
        job = c.submit('epochs', {'text': text}, **hyper)
        deadline = time.time() + 120
        while c.job(job['job_id'])['state'] not in ('succeeded', 'failed', 'cancelled'):
            assert time.time() < deadline
            time.sleep(0.1)
        r = c.job(job['job_id'])
        assert r['state'] == 'succeeded', r
        assert r['total_steps'] == tool_steps and r['hyper']['epochs'] == 2, (r['total_steps'], tool_steps)
        assert r['metrics']['ppl_base'] is not None and r['best_step'] is not None, r
        assert 1 <= r['best_step'] <= r['step'] and r['step'] - r['best_step'] <= 1, r
        assert r['stopped_early'] == (r['step'] < r['total_steps']), r
        try:
            c.submit('p', {'text': text}, patience=2)
            raise AssertionError('patience without eval data was taken')
        except QloraError as e:
            assert e.code == 'invalid_argument' and e.message.startswith('hyper.patience:'), e


@case('job.history: a 1100-step job keeps at most max_points per series, evenly thinned, the last step kept; '
      'it survives a restart')
def _():
    with tempfile.TemporaryDirectory() as db:
        db = os.path.join(db, 'db')
        with Checked(QLORAD, SHARED, db=db) as d, Client(socket=d.socket, timeout=60) as c:
            job = c.submit('long', {'text': 'Once upon a time there was a cat. ' * 40},
                           eval_data={'text': 'The dog ran home. ' * 4}, steps=1100, seq_len=8, batch_size=1,
                           rank=1, eval_every=100, checkpoint_every=0)
            deadline = time.time() + 240
            while c.job(job['job_id'])['state'] not in ('succeeded', 'failed', 'cancelled'):
                assert time.time() < deadline
                time.sleep(0.2)
            assert c.job(job['job_id'])['state'] == 'succeeded', c.job(job['job_id'])
            h = c.history(job['job_id'])
        steps, n = h['step'], h['max_points']
        assert len(steps) <= n and len(steps) > n // 4 and steps[0] == 1 and steps[-1] == 1100, (len(steps), steps[-3:])
        assert all(b > a for a, b in zip(steps, steps[1:])), 'steps increase'
        gaps = [b - a for a, b in zip(steps[:-2], steps[1:-1])]
        assert max(gaps) <= 2 * min(gaps), ('evenly thinned', sorted(set(gaps)))
        assert all(len(h[k]) == len(steps) for k in ('loss', 'lr', 'grad_norm', 'tokens_per_s')), h.keys()
        assert h['eval_step'] == list(range(100, 1101, 100)) and len(h['eval_loss']) == 11, h['eval_step']
        assert all(isinstance(x, float) and x > 0 for x in h['loss'] + h['eval_loss']), 'finite losses'
        with Checked(QLORAD, SHARED, db=db) as d, Client(socket=d.socket, timeout=60) as c:
            again = c.history(job['job_id'])
        assert again == h, 'the stored record keeps the history'


@case('chat on a model without a template: refused naming template; a named built-in renders it')
def _():
    with Checked(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=60) as c:
        msgs = [{'role': 'user', 'content': 'Once upon a time'}]
        try:
            c.chat(msgs)
            raise AssertionError('chat without a template was taken')
        except QloraError as e:
            assert e.code == 'invalid_argument' and 'no chat template' in e.message and 'template' in e.message, e
        try:
            c.chat(msgs, template='alpaca')
            raise AssertionError('an unknown template was taken')
        except QloraError as e:
            assert e.code == 'invalid_argument' and '"alpaca" is not a built-in' in e.message and 'chatml' in e.message, e
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref'))
        from chat_ref import reference
        r = c.chat(msgs, template='chatml', max_tokens=8)
        chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                  "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                  "{% endif %}")
        tag, text = reference(chatml, msgs, True, None, None, {})
        assert tag == 'ok'
        ids = c.tokenize(text)  # with the BOS stories260K's tokenizer adds; chat encodes as rendered, without
        assert ids[0] == 1 and r['tokens'] == c.generate(tokens=ids[1:], max_tokens=8)['tokens'], r


def raw_call(sock_path, op, args=None, rid=1):
    """One request packed with strs as raw bytes (so that a str may hold invalid UTF-8),
    its reply decoded as the project's client decodes it (raw=False: text must be UTF-8)."""
    req = {b'id': rid, b'op': op}
    if args is not None:
        req[b'args'] = args
    body = msgpack.packb(req, use_bin_type=False)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(sock_path)
        s.sendall(struct.pack('>I', len(body)) + body)
        buf = b''
        while len(buf) < 4 or len(buf) < 4 + struct.unpack('>I', buf[:4])[0]:
            d = s.recv(1 << 16)
            assert d, 'the connection closed before the reply'
            buf += d
    return msgpack.unpackb(buf[4:4 + struct.unpack('>I', buf[:4])[0]], raw=False)


def error_of(m, code):
    assert m.get('ok') is False and m['error']['code'] == code, m
    return m['error']['message']


def pieces():
    """stories260K's tokenizer.bin: the bytes each id decodes to (byte tokens as the byte)."""
    data = open(os.path.join(MODEL, 'tokenizer.bin'), 'rb').read()
    off, out = 4, []
    for _ in range(VOCAB):
        n = struct.unpack_from('<i', data, off + 4)[0]
        p = data[off + 8:off + 8 + n]
        off += 8 + n
        if len(p) == 6 and p.startswith(b'<0x') and p.endswith(b'>'):
            p = bytes([int(p[3:5], 16)])
        out.append(p)
    return out


def peft_files(alpha, fill=0.01, r=2):
    return fixture_peft_files(MODEL, alpha, fill, r)


@case('op.list: every op with the arguments the dispatcher checks, and each one it lists is served')
def _():
    with Checked(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=60) as c:
        ops = c.call('op.list')['ops']
        names = [o['name'] for o in ops]
        assert names[:4] == ['auth', 'ping', 'status', 'op.list'] and 'adapter.import' in names, names
        assert len(set(names)) == len(names) >= 23, names
        args = {o['name']: o['args'] for o in ops}
        assert args['ping'] == [] and args['job.get'] == [{'name': 'job_id', 'types': ['uint'], 'required': True}]
        assert [a['name'] for a in args['generate']] == ['prompt', 'tokens', 'max_tokens', 'temperature', 'top_p',
                                                         'seed', 'adapter', 'stream', 'special'], args['generate']
        assert args['generate'][6] == {'name': 'adapter', 'types': ['str', 'nil'], 'required': False}
        assert args['file.upload'][0] == {'name': 'data', 'types': ['str', 'bin'], 'required': True}
        for name in names:
            # the dispatcher's own list: a listed op is found, and refuses an argument it does not list
            try:
                c.call(name, no_such_arg=1)
                raise AssertionError('%s took no_such_arg' % name)
            except QloraError as e:
                assert e.code == 'bad_request' and 'args.no_such_arg' in e.message and name in e.message, (name, e)
            required = [a['name'] for a in args[name] if a['required']]
            if required:
                try:
                    c.call(name)
                    raise AssertionError('%s ran without %s' % (name, required))
                except QloraError as e:
                    assert e.code == 'bad_request' and 'args.%s: missing' % required[0] in e.message, (name, e)


@case('an adapter is named exactly NAME or NAME@VERSION: a NUL, a sign or a space is refused, not read past')
def _():
    with Checked(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=60) as c:
        assert c.import_adapter('st', peft_files('8'))['version'] == 1
        for ref in ('st\x00ry', 'st\x00', 'st@+1', 'st@ 1', 'st@1 ', 'st@', 'st@0', 'st@4294967296', 'st@1@1'):
            try:
                c.generate(prompt='x', max_tokens=1, adapter=ref)
                raise AssertionError('%r was served' % ref)
            except QloraError as e:
                assert e.code == 'invalid_argument' and 'NAME@VERSION' in e.message, (ref, e.code, e.message)
        for field, call in (('adapter', lambda: c.submit('st\x00', {'text': 'x' * 100})),
                            ('name', lambda: c.adapter('st\x00'))):
            try:
                call()
                raise AssertionError('a name with a NUL was taken')
            except QloraError as e:
                assert e.code == 'invalid_argument' and e.message.startswith(field + ':'), e
        assert c.generate(prompt='x', max_tokens=1, adapter='st@01')['adapter'] == 'st@1'


@case('invalid UTF-8 in an op name and an adapter name: the error quotes it as U+FFFD')
def _():
    with Checked(QLORAD, SHARED) as d:
        msg = error_of(raw_call(d.socket, b'no\xffsuch\xc3op'), 'unknown_op')
        assert 'no\ufffdsuch\ufffdop' in msg, msg
        msg = error_of(raw_call(d.socket, b'generate', {b'prompt': b'x', b'adapter': b'\xe2\x82(bad\xed\xa0\x80'}),
                       'invalid_argument')
        assert '\ufffd(bad\ufffd\ufffd\ufffd' in msg, msg  # a surrogate is three invalid bytes, as Python has it
        with Client(socket=d.socket, timeout=60) as c:  # still serving
            assert c.tokenize('hello world') == [1, 281, 306, 414, 263, 304, 341]


@case('generate that samples lone byte tokens: stream and result decode, U+FFFD where no character can be')
def _():
    table = pieces()
    with Checked(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=120) as c:
        # a temperature of 100 samples nearly uniformly: half the vocabulary is byte tokens
        args = dict(tokens=[1], max_tokens=200, temperature=100, seed=7)
        events = list(c.generate(stream=True, **args))
        result = c.generate(**args)
        tokens = result['tokens']
        assert [e['token'] for e in events] == tokens, (events, tokens)
        assert 3 not in tokens, 'seed 7 samples <0x00>: pick a seed without it'  # the result text is a C string
        raw = b''.join(table[t][1:] if i == 0 and table[t][:1] == b' ' else table[t] for i, t in enumerate(tokens))
        # an incremental decoder holds back a character cut at the end, as the daemon does
        expect = codecs.getincrementaldecoder('utf-8')('replace').decode(raw, final=False)
        assert raw.decode('utf-8', 'replace') != raw.decode('utf-8', 'ignore'), 'no invalid UTF-8 was sampled'
        assert ''.join(e['text'] for e in events) == expect, (events, expect)
        assert result['text'] == expect, (result['text'], expect)
        assert '\ufffd' in expect


@case('log lines cannot be forged: newlines, escapes and controls in client strings are escaped')
def _():
    forged = b'x\n2026-01-01T00:00:00.000Z error forged line\r\x1b[31mred\x7f\xc2\x9b2J\\'
    with Checked(QLORAD, SHARED, extra=['--verbose']) as d:
        error_of(raw_call(d.socket, forged), 'unknown_op')
        error_of(raw_call(d.socket, b'generate', {b'prompt': b'x', b'adapter': forged}), 'invalid_argument')
        with Client(socket=d.socket, timeout=60) as c:
            c.ping()
        log = open(d.log, 'rb').read()
    lines = log.split(b'\n')
    assert not any(line.startswith(b'2026-01-01') for line in lines), log
    assert all(b'x\\x0a2026-01-01' in line for line in lines if b'forged' in line), log
    assert b'\x1b' not in log and b'\r' not in log and b'\x7f' not in log and b'\xc2\x9b' not in log, log
    assert b'x\\x0a2026-01-01T00:00:00.000Z error forged line\\x0d\\x1b[31mred\\x7f\\xc2\\x9b2J\\\\' in log, log
    log.decode('utf-8')  # and the whole log is valid UTF-8


@case('adapter.import refuses a non-finite or non-positive lora_alpha, naming it')
def _():
    with Checked(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=60) as c:
        for alpha in ('1e39', '1e999', '0', '-4'):  # 1e39 is finite as a double, +Inf as a float
            try:
                c.import_adapter('alpha', peft_files(alpha))
                raise AssertionError('lora_alpha %s was accepted' % alpha)
            except QloraError as e:
                assert e.code == 'invalid_argument' and 'lora_alpha' in e.message, (alpha, e.code, e.message)
        try:
            c.import_adapter('alpha', peft_files('8', fill=float('nan')))
            raise AssertionError('a NaN in lora_A was accepted')
        except QloraError as e:
            assert e.code == 'invalid_argument' and 'q_proj.lora_A' in e.message and 'non-finite' in e.message, e
        assert c.import_adapter('alpha', peft_files('8'))['version'] == 1
        r = c.eval(tokens=[[1, 403, 407, 261, 378]], adapter='alpha@1')
        assert r['nll_sum'] == r['nll_sum'] and r['ppl'] < 1e6, r


@case('a version deleted while the cache loads it is not served afterwards')
def _():
    # the hook holds each cache load between its read and its insert, so the delete lands there
    os.environ['QLORAD_TEST_CACHE_LOAD_DELAY_MS'] = '400'
    try:
        d = Checked(QLORAD, SHARED)
    finally:
        del os.environ['QLORAD_TEST_CACHE_LOAD_DELAY_MS']
    with d, Client(socket=d.socket, timeout=60) as c, Client(socket=d.socket, timeout=60) as c2:
        tokens = [[1, 403, 407, 261, 378]]
        for version in (1, 2, 3):
            assert c.import_adapter('race', peft_files('8'))['version'] == version
            ref = 'race@%d' % version
            rid = c.send('eval', {'tokens': tokens, 'adapter': ref})  # misses the cache, loads
            time.sleep(0.15)
            assert c2.delete_adapter('race', version) == 1
            c.wait(rid)  # read before the delete: it may be served once
            for _ in range(2):
                try:
                    c.eval(tokens=tokens, adapter=ref)
                    raise AssertionError('%s served after its delete' % ref)
                except QloraError as e:
                    assert e.code == 'not_found' and ref in e.message, (e.code, e.message)


def hwm(pid):
    """Peak RSS of a process, bytes."""
    for line in open('/proc/%d/status' % pid):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) << 10


@case('a prompt too long for the context is refused before it is tokenized')
def _():
    with Checked(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=120) as c:
        before = hwm(d.proc.pid)
        big = 'a' * (16 << 20)
        e = None
        try:
            c.generate(prompt=big, max_tokens=1)
        except QloraError as err:
            e = err
        grew = hwm(d.proc.pid) - before
        # the frame and its decoded copy, not the tokenizer's symbols (~26 bytes per byte)
        assert grew < 5 * len(big), 'peak RSS grew by %d MiB' % (grew >> 20)
        assert e and e.code == 'invalid_argument' and e.message.startswith('prompt: 16777216 bytes'), e
        # within the bound: tokenized, and refused by its count as before
        e = None
        try:
            c.generate(prompt='Once upon a time ' * 200, max_tokens=1)
        except QloraError as err:
            e = err
        assert e and e.code == 'invalid_argument' and 'tokens leave no room' in e.message, e
        assert c.generate(prompt='Once upon a time', max_tokens=3)['tokens'], 'a short prompt still works'


@case('tokenize of 16 MiB of text: memory in proportion to the ids, not ~25 bytes per byte')
def _():
    story = open(os.path.join(SHARED, 'data', 'tinystories_train.txt'), encoding='utf-8').read()
    text = (story * ((16 << 20) // len(story) + 1))[:16 << 20]
    with Checked(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=300) as c:
        before = hwm(d.proc.pid)
        tokens = c.tokenize(text)
        grew = hwm(d.proc.pid) - before
        # the frame, its decoded copy, the ids and their response: 5.4 bytes per byte here,
        # 10.6 under ASan (its shadow and quarantine); before the chunks 27
        assert grew < 16 * len(text), 'peak RSS grew by %d MiB for %d MiB' % (grew >> 20, len(text) >> 20)
        head = c.tokenize(story[:5000])
        assert tokens[0] == 1 and len(tokens) > len(text) // 8, len(tokens)
        assert tokens[:len(head) - 8] == head[:-8], 'the start is tokenized as alone'


@case('a Qwen3 model directory: special tokens in text are ids, or text with special false; a stream of '
      'byte-level tokens holds back split characters; an empty prompt without BOS is refused')
def _():
    d = tempfile.mkdtemp(prefix='qlora-qwen3-')
    try:
        subprocess.run([TOOL, 'make-model', '--dim', '16', '--hidden', '32', '--layers', '1', '--heads', '2',
                        '--kv-heads', '2', '--vocab', '151669', '--seq-len', '64', '--out', d],
                       check=True, capture_output=True, timeout=300)
        for f in ('tokenizer.json', 'tokenizer_config.json'):
            os.symlink(os.path.join(SHARED, 'tokenizers', 'qwen3', f), os.path.join(d, f))
        with Checked(QLORAD, SHARED, model=d) as q, Client(socket=q.socket, timeout=120) as c:
            text = '<|im_start|>user\nhi<|im_end|>'
            ids = c.tokenize(text)
            assert ids[0] == 151644 and ids[-1] == 151645 and len(ids) == 5, ids
            plain = c.tokenize(text, special=False)
            assert 151644 not in plain and 151645 not in plain and plain[0] == 27, plain
            assert c.call('tokenize', text='<think>', special=False)['tokens'] == [151667]  # not special
            try:
                c.generate(prompt='', max_tokens=2)
                raise AssertionError('an empty prompt was taken')
            except QloraError as e:
                assert e.code == 'invalid_argument' and 'no tokens' in e.message, e
            w = c.generate(prompt='\U0001f642 \u65e5\u672c', max_tokens=40, temperature=1.5, seed=7, stream=True)
            events = list(w)
            res = w.result
            assert ''.join(e['text'] for e in events) == res['text'], (events, res)
            assert [e['token'] for e in events] == res['tokens']
            assert 151645 not in res['tokens']  # the stop id, <|im_end|>, ends generation unwritten
            # chat: the template's rendering (python3-jinja2, as transformers) with the generation
            # prompt, then generation as from those tokens
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref'))
            from chat_ref import reference
            cfg = json.load(open(os.path.join(SHARED, 'tokenizers', 'qwen3', 'tokenizer_config.json')))
            msgs = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Name a colour.'}]
            tag, text = reference(cfg['chat_template'], msgs, True, None, cfg['eos_token'], {})
            assert tag == 'ok', text
            want = c.generate(tokens=c.tokenize(text), max_tokens=12, temperature=0.9, seed=5)
            got = c.chat(msgs, max_tokens=12, temperature=0.9, seed=5)
            assert got['tokens'] == want['tokens'] and got['text'] == want['text'], (got, want)
            w = c.chat(msgs, max_tokens=12, temperature=0.9, seed=5, stream=True)
            assert ''.join(e['text'] for e in w) == got['text'] and w.result['tokens'] == got['tokens']
            for bad, field in (([], 'messages'), ([{'role': 'user'}], 'messages'), ('x', 'args.messages')):
                try:
                    c.chat(bad)
                    raise AssertionError('%r was taken' % (bad,))
                except QloraError as e:
                    assert e.code in ('invalid_argument', 'bad_request') and e.message.startswith(field), (bad, e)
    finally:
        shutil.rmtree(d, ignore_errors=True)


report()
