#!/usr/bin/python3
"""qlorad end to end: a real daemon on a temporary socket and database over stories260K
(nf4), spoken to in raw frames so that broken frames can be sent too. TAP output.

usage: test_daemon.py QLORAD SHARED_DIR"""

import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

from qlorad_fixture import Conn as _Conn, expect_error
from tap import case, report

QLORAD, SHARED = sys.argv[1], sys.argv[2]
MODEL = os.path.join(SHARED, 'models/stories260K')
TRAIN = open(os.path.join(SHARED, 'data/tinystories_train.txt'), encoding='utf-8').read(60000)
VALID = open(os.path.join(SHARED, 'data/tinystories_valid.txt'), encoding='utf-8').read(6000)
tmp = tempfile.mkdtemp(prefix='qlorad-test-')
SOCK = os.path.join(tmp, 'sock')
DB = os.path.join(tmp, 'db')
SMALL = {'steps': 12, 'batch_size': 2, 'seq_len': 64, 'eval_every': 6, 'checkpoint_every': 4, 'rank': 4,
         'alpha': 8, 'warmup': 2}


def Conn(path=SOCK, tcp=None):
    return _Conn(path, tcp)


daemon = None


def start(*extra, db=DB, sock=SOCK, quant='nf4'):
    """Starts qlorad and waits until it answers (a stale socket file may be there before)."""
    global daemon
    log = open(os.path.join(tmp, 'log'), 'ab')
    p = subprocess.Popen([QLORAD, '--model', MODEL, '--quant', quant, '--db', db, '--socket', sock, *extra],
                         stdout=log, stderr=log)
    daemon = p
    for _ in range(600):
        assert p.poll() is None, 'qlorad exited with %d at start' % p.returncode
        try:
            c = Conn(sock)
            c.ok('ping')
            c.close()
            return p
        except (FileNotFoundError, ConnectionRefusedError):
            time.sleep(0.05)
    raise AssertionError('qlorad does not answer on %s' % sock)


def stop(p=None, sig=signal.SIGTERM):
    """Stops the daemon; a SIGTERM must end it with status 0 (under the sanitizers too:
    a leak or an error report fails it), else the end of its log is the message."""
    p = p or daemon
    p.send_signal(sig)
    rc = p.wait(timeout=60)
    if sig == signal.SIGTERM and rc != 0:
        log = open(os.path.join(tmp, 'log'), errors='replace').read()
        raise AssertionError('qlorad exited with %d:\n%s' % (rc, log[-3000:]))
    return rc


def submit(c, name, **hyper):
    return c.ok('job.submit', adapter=name, data={'text': TRAIN}, eval_data={'text': VALID},
                hyper=dict(SMALL, **hyper))['job_id']


start()


@case('the socket is 0600; a live daemon\'s socket is not stolen')
def _():
    assert stat.S_IMODE(os.stat(SOCK).st_mode) == 0o600, oct(os.stat(SOCK).st_mode)
    p = subprocess.run([QLORAD, '--model', MODEL, '--db', os.path.join(tmp, 'db2'), '--socket', SOCK],
                       capture_output=True, timeout=60)
    assert p.returncode == 1 and b'another daemon' in p.stderr, p.stderr
    assert Conn().ok('ping')['protocol'] == 1


@case('submit -> watch -> succeeded -> listed; the adapter beats the base on held-out text')
def _():
    c = Conn()
    jid = submit(c, 'story')
    events = []
    rec = c.ok('job.watch', job_id=jid, events=events)
    assert rec['state'] == 'succeeded' and rec['adapter_version'] == 1, rec
    kinds = [e['type'] for e in events]
    assert 'progress' in kinds and 'eval' in kinds and 'checkpoint' in kinds, kinds
    assert kinds[-1] == 'state' and events[-1]['state'] == 'succeeded', events[-1]
    states = [e['state'] for e in events if e['type'] == 'state']
    assert all(a != b for a, b in zip(states, states[1:])), 'a state told twice: %s' % states
    steps = [e['step'] for e in events if e['type'] == 'progress']
    assert steps == sorted(steps) and steps[-1] == 12, steps
    m = rec['metrics']
    assert m['ppl_adapter'] < m['ppl_base'], m
    ads = c.ok('adapter.list')['adapters']
    assert [(a['name'], a['version'], a['job_id']) for a in ads] == [('story', 1, jid)], ads
    base = c.ok('eval', text=VALID, adapter=None)
    tuned = c.ok('eval', text=VALID, adapter='story')
    assert tuned['adapter'] == 'story@1' and base['adapter'] is None, (tuned, base)
    assert tuned['ppl'] < base['ppl'], (tuned, base)
    g0 = c.ok('generate', prompt='Once upon a time', max_tokens=30, adapter=None)
    g1 = c.ok('generate', prompt='Once upon a time', max_tokens=30, adapter='story@1')
    assert g0['tokens'] != g1['tokens'], 'the adapter changes nothing in generation'
    c.close()


@case('generate streams one event per token, then the whole text')
def _():
    c = Conn()
    events = []
    r = c.ok('generate', prompt='Once upon a time', max_tokens=25, stream=True, events=events)
    assert [e['token'] for e in events] == r['tokens'] and len(r['tokens']) >= 1, (events, r)
    assert ''.join(e['text'] for e in events) == r['text'], (events, r['text'])
    assert r['text'].startswith(', there was a little girl named Lily'), r['text']


@case('pipelined requests: each answered by its id with its own arguments')
def _():
    c = Conn()
    texts = ['story number %d, about a cat who liked %s' % (i, 'fish ' * i) for i in range(60)]
    want = {100 + i: c.ok('tokenize', text=t)['tokens'] for i, t in enumerate(texts)}
    for i, t in enumerate(texts):  # the pool reads each text while the loop reads the next
        b = msgpack.packb({'id': 100 + i, 'op': 'tokenize', 'args': {'text': t}}, use_bin_type=True)
        c.raw(struct.pack('>I', len(b)) + b)
    got = {}
    for _ in texts:
        m = c.recv()
        assert m['ok'], m
        got[m['id']] = m['result']['tokens']
    assert got == want, 'wrong tokens for ids %s' % [k for k in want if got.get(k) != want[k]][:5]


@case('cancel: a queued job at once, a running one at its next step')
def _():
    c = Conn()
    running = submit(c, 'long', steps=100000, checkpoint_every=0, eval_every=0)
    queued = submit(c, 'never')
    for _ in range(200):
        if c.ok('job.get', job_id=running)['step'] >= 1:
            break
        time.sleep(0.05)
    r = c.ok('job.cancel', job_id=queued)
    assert r['state'] == 'cancelled', r
    c.ok('job.cancel', job_id=running)
    rec = c.ok('job.watch', job_id=running)
    assert rec['state'] == 'cancelled' and 0 < rec['step'] < 100000, rec
    expect_error(c.call('job.cancel', job_id=running), 'conflict', 'cancelled')
    names = {a['name'] for a in c.ok('adapter.list')['adapters']}
    assert 'long' not in names and 'never' not in names, names
    assert [j['job_id'] for j in c.ok('job.list', state='cancelled')['jobs']] == [running, queued]


@case('SIGKILL during training: restarted, the job resumes and ends as an uninterrupted run')
def _():
    c = Conn()
    whole = submit(c, 'whole', steps=40, checkpoint_every=5, eval_every=0)
    ref = c.ok('job.watch', job_id=whole)
    killed = submit(c, 'killed', steps=40, checkpoint_every=5, eval_every=0)
    for _ in range(400):
        if c.ok('job.get', job_id=killed)['step'] >= 12:
            break
        time.sleep(0.02)
    stop(sig=signal.SIGKILL)
    start()
    c = Conn()
    rec = c.ok('job.watch', job_id=killed)
    assert rec['state'] == 'succeeded' and rec['resumed'] == 1, rec
    assert rec['eval_loss'] == ref['eval_loss'], (rec['eval_loss'], ref['eval_loss'])
    a = c.ok('eval', text=VALID, adapter='killed')
    b = c.ok('eval', text=VALID, adapter='whole')
    assert a['nll_sum'] == b['nll_sum'], (a, b)


@case('SIGTERM: the running job checkpoints and resumes at the next start; exit status 0')
def _():
    c = Conn()
    jid = submit(c, 'termed', steps=60, checkpoint_every=0, eval_every=0)
    for _ in range(400):
        if c.ok('job.get', job_id=jid)['step'] >= 5:
            break
        time.sleep(0.02)
    assert stop() == 0
    assert not os.path.exists(SOCK), 'the socket file is left behind'
    start()
    rec = Conn().ok('job.watch', job_id=jid)
    assert rec['state'] == 'succeeded' and rec['resumed'] == 1, rec


@case('a stale socket file from a dead daemon is replaced')
def _():
    stop(sig=signal.SIGKILL)
    assert os.path.exists(SOCK)
    start()
    assert Conn().ok('ping')['protocol'] == 1


@case('50 concurrent clients (status, eval, generate) while a job trains: none fails')
def _():
    c = Conn()
    jid = submit(c, 'busy', steps=30, checkpoint_every=10, eval_every=0)
    failures = []

    def client(k):
        try:
            cc = Conn()
            for i in range(3):
                op = (k + i) % 3
                if op == 0:
                    cc.ok('status')
                elif op == 1:
                    r = cc.ok('eval', tokens=[[1, 403, 407, 261, 378, 432]])
                    assert r['n_predicted'] == 5
                else:
                    r = cc.ok('generate', prompt='Once', max_tokens=8, temperature=0.8, seed=k)
                    assert 1 <= len(r['tokens']) <= 8
            cc.close()
        except Exception as e:  # noqa: BLE001 (collect every failure)
            failures.append('%d: %r' % (k, e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    assert c.ok('job.watch', job_id=jid)['state'] == 'succeeded'


@case('hot swap under load: activate in a loop while generating; no request fails')
def _():
    c = Conn()
    names = ['story@1', 'busy@1', 'whole@1']
    failures, seen, lock = [], set(), threading.Lock()
    done = threading.Event()

    def gen(k):
        try:
            cc = Conn()
            while not done.is_set():
                r = cc.ok('generate', prompt='Once upon a time', max_tokens=6)
                with lock:
                    seen.add(r['adapter'])
            cc.close()
        except Exception as e:  # noqa: BLE001
            failures.append(repr(e))

    threads = [threading.Thread(target=gen, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    def adapters_seen():
        with lock:
            return len(seen - {None})

    # at least 60 swaps, and on until the generators have run with two adapters (a loaded
    # machine may finish 60 swaps before the first generate does)
    i, deadline = 0, time.time() + 120
    while i < 60 or (adapters_seen() < 2 and time.time() < deadline and not failures):
        name, version = names[i % 3].split('@')
        r = c.ok('adapter.activate', name=name, version=int(version))
        assert r == {'active': name, 'version': int(version)}, r
        i += 1
    done.set()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    seen.discard(None)  # before the first activate
    assert seen <= set(names) and len(seen) >= 2, seen
    assert c.ok('status')['adapters']['active'] in names
    assert c.ok('adapter.activate', name=None) == {'active': None, 'version': None}
    assert c.ok('generate', prompt='Once', max_tokens=3)['adapter'] is None


@case('export and import in PEFT format; a deleted adapter is gone, its versions never reused')
def _():
    c = Conn()
    files = c.ok('adapter.export', name='story', version=1, format='peft')['files']
    assert '"peft_type": "LORA"' in files['adapter_config.json'].replace('":"', '": "'), files['adapter_config.json']
    rec = c.ok('adapter.import', name='story', files=files)
    assert rec['version'] == 2 and rec['rank'] == 4 and rec['job_id'] is None, rec
    a = c.ok('eval', text=VALID, adapter='story@1')
    b = c.ok('eval', text=VALID, adapter='story@2')
    assert a['nll_sum'] == b['nll_sum'], (a, b)
    assert c.ok('adapter.delete', name='story', version=2) == {'deleted': 1}
    expect_error(c.call('eval', text=VALID, adapter='story@2'), 'not_found', 'story@2')
    assert c.ok('adapter.import', name='story', files=files)['version'] == 3
    bad = dict(files, **{'adapter_model.safetensors': files['adapter_model.safetensors'][:100]})
    expect_error(c.call('adapter.import', name='story', files=bad), 'invalid_argument')
    assert c.ok('adapter.get', name='story')['version'] == 3


@case('an adapter of another base is refused with conflict')
def _():
    c = Conn()
    files = c.ok('adapter.export', name='story', version=1)['files']
    stop()
    start(quant='int8')
    c = Conn()
    expect_error(c.call('adapter.activate', name='story', version=1), 'conflict', 'base')
    expect_error(c.call('generate', prompt='Once', max_tokens=2, adapter='story@1'), 'conflict')
    expect_error(c.call('adapter.import', name='other', files=files), 'conflict')
    stop()
    start()


@case('malformed requests: the documented error each, and the daemon goes on serving')
def _():
    c = Conn()
    expect_error(c.call('no.such.op'), 'unknown_op', 'no.such.op')
    expect_error(c.call('eval', tokens='abc'), 'bad_request', 'tokens')
    expect_error(c.call('job.get'), 'bad_request', 'job_id')
    expect_error(c.call('job.get', job_id=999), 'not_found', '999')
    expect_error(c.call('ping', bogus=1), 'bad_request', 'bogus')
    expect_error(c.call('eval', tokens=[[1, 9999]]), 'invalid_argument', 'tokens[0][1]')
    expect_error(c.call('eval', tokens=[[1]]), 'invalid_argument', 'tokens[0]')
    expect_error(c.call('generate', prompt='x', max_tokens=0), 'invalid_argument', 'max_tokens')
    expect_error(c.call('generate', prompt='x', temperature=-1), 'invalid_argument', 'temperature')
    expect_error(c.call('generate', prompt='x', adapter='../etc'), 'invalid_argument', 'adapter')
    expect_error(c.call('generate', prompt='x', adapter='nobody'), 'not_found', 'nobody')
    expect_error(c.call('adapter.get', name='a/b'), 'invalid_argument', 'name')
    expect_error(c.call('adapter.get', name='x' * 65), 'invalid_argument', 'name')
    expect_error(c.call('job.submit', adapter='x', data={'text': TRAIN}, hyper={'rank': 0}),
                 'invalid_argument', 'hyper.rank')
    expect_error(c.call('job.submit', adapter='x', data={'text': TRAIN}, hyper={'ranks': 4}),
                 'bad_request', 'hyper.ranks')
    expect_error(c.call('job.submit', adapter='x', data={'text': TRAIN}, hyper={'seq_len': 100000}),
                 'invalid_argument', 'seq_len')
    expect_error(c.call('job.submit', adapter='x', data={'text': TRAIN}, hyper={'targets': ['q', 'lm_head']}),
                 'invalid_argument', 'lm_head')
    # without --data-dir a path is refused whatever it names (tests/test_files.py for the rest)
    expect_error(c.call('job.submit', adapter='x', data={'path': '/nonexistent/file'}),
                 'invalid_argument', 'data.path', '--data-dir')
    expect_error(c.call('job.submit', adapter='x', data={'text': TRAIN}, method='dpo'), 'invalid_argument', 'method')
    expect_error(c.call('job.submit', adapter='x'), 'bad_request', 'data')
    expect_error(c.call('job.list', state='sleeping'), 'invalid_argument', 'state')
    # a request that is not a map, or lacks its id
    b = msgpack.packb([1, 2, 3])
    c.raw(struct.pack('>I', len(b)) + b)
    m = c.recv()
    assert m['id'] == 0 and m['error']['code'] == 'bad_request', m
    assert c.ok('ping')['protocol'] == 1
    # broken frames: bad_frame with id 0, then the connection closes
    for payload in (b'\xc1', msgpack.packb({'id': 1, 'op': 'ping'}) + b'\x00', b'\x92\x01'):
        cc = Conn()
        cc.raw(struct.pack('>I', len(payload)) + payload)
        m = cc.recv()
        assert m == {'id': 0, 'ok': False, 'error': m['error']} and m['error']['code'] == 'bad_frame', m
        assert cc.closed(), 'connection left open after a bad frame'
    for length in (0, 64 << 20 | 1):
        cc = Conn()
        cc.raw(struct.pack('>I', length))
        m = cc.recv()
        assert m['error']['code'] == 'bad_frame' and 'max_frame' in m['error']['message'], m
        assert cc.closed()
    deep = b'\x91' * 100 + b'\x01'
    cc = Conn()
    cc.raw(struct.pack('>I', len(deep)) + deep)
    assert cc.recv()['error']['code'] == 'bad_frame'
    liar = b'\xdd\xff\xff\xff\xff'  # an array claiming 4 billion items
    cc = Conn()
    cc.raw(struct.pack('>I', len(liar)) + liar)
    assert cc.recv()['error']['code'] == 'bad_frame'
    assert c.ok('ping')['protocol'] == 1, 'the first connection was disturbed'
    assert daemon.poll() is None


@case('TCP: only with a token; anything before auth is unauthorized and closes')
def _():
    stop()
    token = os.path.join(tmp, 'token')
    open(token, 'w').write('s3cret-token-0123456789\n')
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.run([QLORAD, '--model', MODEL, '--db', DB, '--socket', SOCK, '--listen', '127.0.0.1:%d' % port],
                       capture_output=True, timeout=60)
    assert p.returncode == 2 and b'token' in p.stderr, p.stderr
    start('--listen', '127.0.0.1:%d' % port, '--token-file', token)
    c = Conn(tcp=('127.0.0.1', port))
    expect_error(c.call('ping'), 'unauthorized')
    assert c.closed()
    c = Conn(tcp=('127.0.0.1', port))
    expect_error(c.call('auth', token='wrong'), 'unauthorized')
    assert c.closed()
    c = Conn(tcp=('127.0.0.1', port))
    assert c.ok('auth', token='s3cret-token-0123456789') == {}
    assert c.ok('ping')['protocol'] == 1
    assert Conn().ok('ping')['protocol'] == 1  # the Unix socket needs no token


@case('status reports the model, quantization, memory, jobs and adapters')
def _():
    s = Conn().ok('status')
    assert s['model']['name'] == 'stories260K' and s['model']['dim'] == 64 and s['model']['vocab_size'] == 512, s
    assert s['quant']['format'] == 'nf4' and 4.0 < s['quant']['bits_per_param'] < 4.3, s['quant']
    assert s['memory']['rss_bytes'] > s['memory']['base_bytes'] > 0, s['memory']
    assert s['jobs']['succeeded'] >= 5 and s['jobs']['cancelled'] == 2, s['jobs']
    assert s['adapters']['stored'] >= 6, s['adapters']


@case('--max-running 2: two jobs train side by side, the third waits; same result as alone')
def _():
    stop()
    start('--max-running', '2')
    c = Conn()
    alone = c.ok('job.get', job_id=submit(c, 'alone', steps=30, checkpoint_every=0, eval_every=0))
    alone = c.ok('job.watch', job_id=alone['job_id'])
    # the third recomputes activations in backward: that too changes nothing of the result
    ids = [submit(c, 'side%d' % k, steps=30, checkpoint_every=0, eval_every=0, recompute=k == 2) for k in range(3)]
    recs = [c.ok('job.watch', job_id=j) for j in ids]
    assert all(r['state'] == 'succeeded' for r in recs), recs
    a, b, third = recs
    assert b['started_at'] < a['finished_at'] and a['started_at'] < b['finished_at'], 'the first two did not overlap'
    assert third['started_at'] >= min(a['finished_at'], b['finished_at']) - 1e-3, 'a third job ran beside two'
    for r in recs:  # same seed and data: the same adapter whether it trained beside another or alone
        assert abs(r['eval_loss'] - alone['eval_loss']) <= 1e-5 * abs(alone['eval_loss']), (r['eval_loss'], alone)
    assert [r['hyper']['recompute'] for r in recs] == [False, False, True], [r['hyper'] for r in recs]
    assert c.ok('status')['jobs']['running'] == 0


@case('SIGTERM at the end: exit status 0')
def _():
    assert stop() == 0


if daemon.poll() is None:
    daemon.kill()
shutil.rmtree(tmp)
report()
