#!/usr/bin/python3
"""qlorad end to end: a real daemon on a temporary socket and database over stories260K
(nf4), spoken to in raw frames so that broken frames can be sent too. Each case runs its own
daemon on a store of its own (and trains or imports the adapters it needs), so any one runs
alone (TAP_ONLY=NAME) and in any order; each must end with status 0 at SIGTERM. TAP output.

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

from qlorad_fixture import Conn as _Conn, expect_error, peft_files
from tap import case, report

QLORAD, SHARED = sys.argv[1], sys.argv[2]
MODEL = os.path.join(SHARED, 'models/stories260K')
TRAIN = open(os.path.join(SHARED, 'data/tinystories_train.txt'), encoding='utf-8').read(60000)
VALID = open(os.path.join(SHARED, 'data/tinystories_valid.txt'), encoding='utf-8').read(6000)
tmp = tempfile.mkdtemp(prefix='qlorad-test-')
SMALL = {'steps': 12, 'batch_size': 2, 'seq_len': 64, 'eval_every': 6, 'checkpoint_every': 4, 'rank': 4,
         'alpha': 8, 'warmup': 2}


def Conn(path, tcp=None):
    return _Conn(path, tcp)


class Served:
    """A daemon of the case's own: its socket, store and log in a directory of their own.
    It may be stopped and started again on the same store; the last run must end with
    status 0 at SIGTERM (under the sanitizers too: a leak or an error report fails it)."""

    def __init__(self, *extra, quant='nf4'):
        self.dir = tempfile.mkdtemp(dir=tmp)
        self.sock = os.path.join(self.dir, 'sock')
        self.db = os.path.join(self.dir, 'db')
        self.log = os.path.join(self.dir, 'log')
        self.extra, self.quant, self.p = extra, quant, None
        self.start()

    def start(self, *extra, quant=None):
        """Starts qlorad (with extra, else the first start's) and waits until it answers (a
        stale socket file may be there before)."""
        with open(self.log, 'ab') as log:
            self.p = subprocess.Popen([QLORAD, '--model', MODEL, '--quant', quant or self.quant, '--db', self.db,
                                       '--socket', self.sock, *(extra or self.extra)], stdout=log, stderr=log)
        for _ in range(600):
            assert self.p.poll() is None, 'qlorad exited with %d at start' % self.p.returncode
            try:
                c = Conn(self.sock)
                c.ok('ping')
                c.close()
                return
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)
        raise AssertionError('qlorad does not answer on %s' % self.sock)

    def stop(self, sig=signal.SIGTERM):
        """Stops the daemon; a SIGTERM must end it with status 0, else the end of its log is
        the message."""
        self.p.send_signal(sig)
        rc = self.p.wait(timeout=60)
        if sig == signal.SIGTERM and rc != 0:
            raise AssertionError('qlorad exited with %d:\n%s' % (rc, open(self.log, errors='replace').read()[-3000:]))
        return rc

    def conn(self):
        return Conn(self.sock)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        if self.p.poll() is None:
            if exc_type is None:
                assert self.stop() == 0
            else:
                self.p.kill()
                self.p.wait()


def submit(c, name, **hyper):
    return c.ok('job.submit', adapter=name, data={'text': TRAIN}, eval_data={'text': VALID},
                hyper=dict(SMALL, **hyper))['job_id']


def trained(c, name, **hyper):
    """The record of a job that trained adapter name (version 1 on a fresh store)."""
    rec = c.ok('job.watch', job_id=submit(c, name, **hyper))
    assert rec['state'] == 'succeeded', rec
    return rec


@case('the socket is 0600; a live daemon\'s socket is not stolen')
def _():
    with Served() as d:
        assert stat.S_IMODE(os.stat(d.sock).st_mode) == 0o600, oct(os.stat(d.sock).st_mode)
        p = subprocess.run([QLORAD, '--model', MODEL, '--db', os.path.join(d.dir, 'db2'), '--socket', d.sock],
                           capture_output=True, timeout=60)
        assert p.returncode == 1 and b'another daemon' in p.stderr, p.stderr
        assert d.conn().ok('ping')['protocol'] == 1


@case('submit -> watch -> succeeded -> listed; the adapter beats the base on held-out text')
def _():
    with Served() as d:
        c = d.conn()
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
    with Served() as d:
        c = d.conn()
        events = []
        r = c.ok('generate', prompt='Once upon a time', max_tokens=25, stream=True, events=events)
        assert [e['token'] for e in events] == r['tokens'] and len(r['tokens']) >= 1, (events, r)
        assert ''.join(e['text'] for e in events) == r['text'], (events, r['text'])
        assert r['text'].startswith(', there was a little girl named Lily'), r['text']


@case('pipelined requests: each answered by its id with its own arguments')
def _():
    with Served() as d:
        c = d.conn()
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
    with Served() as d:
        c = d.conn()
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
    with Served() as d:
        c = d.conn()
        whole = submit(c, 'whole', steps=40, checkpoint_every=5, eval_every=0)
        ref = c.ok('job.watch', job_id=whole)
        killed = submit(c, 'killed', steps=40, checkpoint_every=5, eval_every=0)
        for _ in range(400):
            if c.ok('job.get', job_id=killed)['step'] >= 12:
                break
            time.sleep(0.02)
        d.stop(sig=signal.SIGKILL)
        d.start()
        c = d.conn()
        rec = c.ok('job.watch', job_id=killed)
        assert rec['state'] == 'succeeded' and rec['resumed'] == 1, rec
        assert rec['eval_loss'] == ref['eval_loss'], (rec['eval_loss'], ref['eval_loss'])
        a = c.ok('eval', text=VALID, adapter='killed')
        b = c.ok('eval', text=VALID, adapter='whole')
        assert a['nll_sum'] == b['nll_sum'], (a, b)


@case('SIGTERM: the running job checkpoints and resumes at the next start; exit status 0')
def _():
    with Served() as d:
        c = d.conn()
        jid = submit(c, 'termed', steps=60, checkpoint_every=0, eval_every=0)
        for _ in range(400):
            if c.ok('job.get', job_id=jid)['step'] >= 5:
                break
            time.sleep(0.02)
        assert d.stop() == 0
        assert not os.path.exists(d.sock), 'the socket file is left behind'
        d.start()
        rec = d.conn().ok('job.watch', job_id=jid)
        assert rec['state'] == 'succeeded' and rec['resumed'] == 1, rec


@case('a stale socket file from a dead daemon is replaced')
def _():
    with Served() as d:
        d.stop(sig=signal.SIGKILL)
        assert os.path.exists(d.sock)
        d.start()
        assert d.conn().ok('ping')['protocol'] == 1


@case('50 concurrent clients (status, eval, generate) while a job trains: none fails')
def _():
    with Served() as d:
        c = d.conn()
        jid = submit(c, 'busy', steps=30, checkpoint_every=10, eval_every=0)
        failures = []

        def client(k):
            try:
                cc = d.conn()
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
    with Served() as d:
        c = d.conn()
        names = ['story@1', 'busy@1', 'whole@1']
        for ref in names:  # made here: which adapter served a request is what counts, not what it learnt
            assert c.ok('adapter.import', name=ref.split('@')[0], files=peft_files(MODEL))['version'] == 1
        failures, seen, lock = [], set(), threading.Lock()
        done = threading.Event()

        def gen(k):
            try:
                cc = d.conn()
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
    with Served() as d:
        c = d.conn()
        trained(c, 'story')
        files = c.ok('adapter.export', name='story', version=1, format='peft')['files']
        config = files['adapter_config.json']
        assert '"peft_type": "LORA"' in config.replace('":"', '": "'), config
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
    with Served() as d:
        c = d.conn()
        c.ok('adapter.import', name='story', files=peft_files(MODEL))  # on this base: nf4
        files = c.ok('adapter.export', name='story', version=1)['files']
        d.stop()
        d.start(quant='int8')
        c = d.conn()
        expect_error(c.call('adapter.activate', name='story', version=1), 'conflict', 'base')
        expect_error(c.call('generate', prompt='Once', max_tokens=2, adapter='story@1'), 'conflict')
        expect_error(c.call('adapter.import', name='other', files=files), 'conflict')


@case('malformed requests: the documented error each, and the daemon goes on serving')
def _():
    with Served() as d:
        c = d.conn()
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
        expect_error(c.call('job.submit', adapter='x', data={'text': TRAIN}, method='dpo'), 'invalid_argument',
                     'method')
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
            cc = d.conn()
            cc.raw(struct.pack('>I', len(payload)) + payload)
            m = cc.recv()
            assert m == {'id': 0, 'ok': False, 'error': m['error']} and m['error']['code'] == 'bad_frame', m
            assert cc.closed(), 'connection left open after a bad frame'
        for length in (0, 64 << 20 | 1):
            cc = d.conn()
            cc.raw(struct.pack('>I', length))
            m = cc.recv()
            assert m['error']['code'] == 'bad_frame' and 'max_frame' in m['error']['message'], m
            assert cc.closed()
        deep = b'\x91' * 100 + b'\x01'
        cc = d.conn()
        cc.raw(struct.pack('>I', len(deep)) + deep)
        assert cc.recv()['error']['code'] == 'bad_frame'
        liar = b'\xdd\xff\xff\xff\xff'  # an array claiming 4 billion items
        cc = d.conn()
        cc.raw(struct.pack('>I', len(liar)) + liar)
        assert cc.recv()['error']['code'] == 'bad_frame'
        assert c.ok('ping')['protocol'] == 1, 'the first connection was disturbed'
        assert d.p.poll() is None


@case('TCP: only with a token; anything before auth is unauthorized and closes')
def _():
    with Served() as d:
        d.stop()
        token = os.path.join(d.dir, 'token')
        open(token, 'w').write('s3cret-token-0123456789\n')
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
        s.close()
        p = subprocess.run([QLORAD, '--model', MODEL, '--db', d.db, '--socket', d.sock, '--listen',
                            '127.0.0.1:%d' % port],
                           capture_output=True, timeout=60)
        assert p.returncode == 2 and b'token' in p.stderr, p.stderr
        d.start('--listen', '127.0.0.1:%d' % port, '--token-file', token)
        c = Conn(None, tcp=('127.0.0.1', port))
        expect_error(c.call('ping'), 'unauthorized')
        assert c.closed()
        c = Conn(None, tcp=('127.0.0.1', port))
        expect_error(c.call('auth', token='wrong'), 'unauthorized')
        assert c.closed()
        c = Conn(None, tcp=('127.0.0.1', port))
        assert c.ok('auth', token='s3cret-token-0123456789') == {}
        assert c.ok('ping')['protocol'] == 1
        assert d.conn().ok('ping')['protocol'] == 1  # the Unix socket needs no token


@case('status reports the model, quantization, memory, jobs and adapters')
def _():
    with Served() as d:
        c = d.conn()
        trained(c, 'done')
        long = submit(c, 'long', steps=100000, checkpoint_every=0, eval_every=0)
        c.ok('job.cancel', job_id=long)
        assert c.ok('job.watch', job_id=long)['state'] == 'cancelled'
        s = c.ok('status')
        assert s['model']['name'] == 'stories260K' and s['model']['dim'] == 64 and s['model']['vocab_size'] == 512, s
        assert s['quant']['format'] == 'nf4' and 4.0 < s['quant']['bits_per_param'] < 4.3, s['quant']
        assert s['memory']['rss_bytes'] > s['memory']['base_bytes'] > 0, s['memory']
        assert s['jobs'] == {'queued': 0, 'running': 0, 'succeeded': 1, 'failed': 0, 'cancelled': 1}, s['jobs']
        assert s['adapters'] == {'stored': 1, 'loaded': 0, 'active': None}, s['adapters']


@case('--max-running 2: two jobs train side by side, the third waits; same result as alone')
def _():
    with Served('--max-running', '2') as d:
        c = d.conn()
        alone = c.ok('job.get', job_id=submit(c, 'alone', steps=30, checkpoint_every=0, eval_every=0))
        alone = c.ok('job.watch', job_id=alone['job_id'])
        # the third recomputes activations in backward: that too changes nothing of the result
        ids = [submit(c, 'side%d' % k, steps=30, checkpoint_every=0, eval_every=0, recompute=k == 2) for k in range(3)]
        recs = [c.ok('job.watch', job_id=j) for j in ids]
        assert all(r['state'] == 'succeeded' for r in recs), recs
        a, b, third = recs
        assert b['started_at'] < a['finished_at'] and a['started_at'] < b['finished_at'], \
            'the first two did not overlap'
        assert third['started_at'] >= min(a['finished_at'], b['finished_at']) - 1e-3, 'a third job ran beside two'
        for r in recs:  # same seed and data: the same adapter whether it trained beside another or alone
            assert abs(r['eval_loss'] - alone['eval_loss']) <= 1e-5 * abs(alone['eval_loss']), (r['eval_loss'], alone)
        assert [r['hyper']['recompute'] for r in recs] == [False, False, True], [r['hyper'] for r in recs]
        assert c.ok('status')['jobs']['running'] == 0


shutil.rmtree(tmp)
report()
