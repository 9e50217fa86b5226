#!/usr/bin/python3
"""Soak: 50 concurrent clients (well-behaved ones, and ones that send invalid, truncated
or random frames, storm watch and cancel, or stop reading) against one qlorad while a job
trains. The daemon must never die, answer every request of every well-behaved client
correctly, stay under an RSS bound, and end the job with the adapter it gives when
trained alone. Prints what it held (clients, requests, errors, peak RSS). TAP.

usage: test_soak.py QLORAD SHARED_DIR [SECONDS]   (SECONDS: at least this long; 60)"""

import os
import random
import socket
import struct
import sys
import threading
import time


from qlorad_fixture import Conn, Daemon, frame, rss
from tap import case, report

QLORAD, SHARED = sys.argv[1], sys.argv[2]
SECONDS = float(sys.argv[3]) if len(sys.argv) > 3 else 60
TRAIN = open(os.path.join(SHARED, 'data/tinystories_train.txt'), encoding='utf-8').read(60000)
VALID = open(os.path.join(SHARED, 'data/tinystories_valid.txt'), encoding='utf-8').read(4000)
HYPER = {'batch_size': 2, 'seq_len': 64, 'eval_every': 0, 'checkpoint_every': 10, 'rank': 4, 'alpha': 8,
         'warmup': 2}
RSS_BOUND = 512 << 20  # the base is ~1 MiB; the rest is requests, caches and the sanitizers
OPS_OK = ['ping', 'status', 'tokenize', 'eval', 'generate', 'job.list', 'adapter.list']


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.n = {}
        self.failures = []

    def add(self, key, k=1):
        with self.lock:
            self.n[key] = self.n.get(key, 0) + k

    def fail(self, why):
        with self.lock:
            self.failures.append(why)


def well_behaved(sock, stop, st, rnd):
    """Valid requests only: each must be answered, correctly."""
    c = Conn(sock)
    while not stop.is_set():
        op = rnd.choice(OPS_OK)
        args = {}
        if op == 'tokenize':
            args = {'text': 'Once upon a time %d' % rnd.randrange(1000)}
        elif op == 'eval':
            args = {'tokens': [[1, 403, 407, 261, 378, 432]], 'adapter': None}
        elif op == 'job.list':  # the storms make thousands of jobs: a page at a time
            args = {'limit': rnd.randrange(1, 50), 'after': rnd.randrange(0, 50)}
        elif op == 'generate':
            args = {'prompt': 'Once', 'max_tokens': rnd.randrange(1, 12), 'seed': rnd.randrange(99),
                    'temperature': 0.8, 'stream': rnd.random() < 0.5, 'adapter': None}
        m = c.call(op, args or None)
        if not m['ok']:
            st.fail('%s %r -> %r' % (op, args, m['error']))
            continue
        r = m['result']
        good = {'ping': lambda: r['protocol'] == 1, 'status': lambda: r['model']['dim'] == 64,
                'tokenize': lambda: r['tokens'][0] == 1, 'eval': lambda: r['n_predicted'] == 5,
                'generate': lambda: 1 <= len(r['tokens']) <= args.get('max_tokens', 0),
                'job.list': lambda: len(r['jobs']) <= args['limit'] and isinstance(r['has_more'], bool) and all(
                    j['job_id'] > args['after'] for j in r['jobs']),
                'adapter.list': lambda: isinstance(r['adapters'], list)}[op]()
        if not good:
            st.fail('%s: wrong result %r' % (op, r))
        st.add('well-behaved requests')
    c.close()


def invalid(sock, stop, st, rnd):
    """Well-framed but wrong requests: each gets its error; the connection stays open."""
    c = Conn(sock)
    bad = [('no.such.op', {}), ('eval', {'tokens': 'x'}), ('eval', {'tokens': [[1, 99999]]}),
           ('generate', {'max_tokens': -1}), ('job.get', {'job_id': 10 ** 9}), ('ping', {'x': 1}),
           ('adapter.get', {'name': '../../etc/passwd'}), ('job.submit', {'adapter': 'x', 'data': {'text': ''}}),
           ('adapter.import', {'name': 'x', 'files': {'adapter_config.json': '{', 'adapter_model.safetensors': b'\0'}})]
    while not stop.is_set():
        op, args = rnd.choice(bad)
        m = c.call(op, args)
        if m['ok']:
            st.fail('%s %r succeeded' % (op, args))
        st.add('invalid requests')
    c.close()


def garbage(sock, stop, st, rnd):
    """Random bytes, truncated frames, broken msgpack, lying lengths: then it hangs up."""
    while not stop.is_set():
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        try:
            s.connect(sock)
            kind = rnd.randrange(4)
            good = frame({'id': 1, 'op': 'generate', 'args': {'prompt': 'x' * rnd.randrange(100)}})
            payload = [os.urandom(rnd.randrange(1, 200)), good[:rnd.randrange(1, len(good))],
                       struct.pack('>I', 5) + b'\xc1\xc1\xc1\xc1\xc1', struct.pack('>I', 1 << 26)][kind]
            s.sendall(payload)
            if rnd.random() < 0.5:
                s.recv(65536)  # an error frame, or nothing before the hang-up
        except (OSError, socket.timeout):
            pass
        finally:
            s.close()
        st.add('garbage connections')


def storms(sock, stop, st, rnd):
    """Submits tiny jobs and cancels them, watching them from a connection it never reads."""
    c, silent = Conn(sock), Conn(sock)
    while not stop.is_set():
        m = c.call('job.submit', adapter='storm', data={'text': TRAIN[:3000]},
                   hyper={'steps': 2, 'batch_size': 1, 'seq_len': 16, 'eval_every': 0, 'checkpoint_every': 0})
        if not m['ok']:
            if m['error']['code'] != 'busy':
                st.fail('storm submit: %r' % m['error'])
            time.sleep(0.05)
            continue
        jid = m['result']['job_id']
        for i in range(rnd.randrange(1, 20)):
            silent.send('job.watch', job_id=jid)
        for _ in range(rnd.randrange(1, 5)):
            c.call('job.cancel', job_id=jid)  # cancelled, or conflict once it is
        st.add('storm jobs')
        if rnd.random() < 0.2:
            silent.close()
            silent = Conn(sock)
    c.close()
    silent.close()


def non_reader(sock, stop, st, rnd):
    """Pipelines requests and streams it never reads, then hangs up and starts again."""
    while not stop.is_set():
        c = Conn(sock, timeout=5)
        try:
            for i in range(rnd.randrange(10, 200)):
                c.raw(frame({'id': i + 1, 'op': rnd.choice(['status', 'generate']),
                             'args': {} if i % 2 else None}))
            time.sleep(rnd.random())
        except (OSError, socket.timeout):
            pass
        c.close()
        st.add('non-reading connections')


def guarded(fn, sock, stop, st, rnd):
    try:
        fn(sock, stop, st, rnd)
    except Exception as e:  # noqa: BLE001 (a client that fails is a finding)
        if fn is well_behaved or fn is invalid:
            st.fail('%s: %r' % (fn.__name__, e))


ROLES = [(well_behaved, 20), (invalid, 10), (garbage, 8), (storms, 6), (non_reader, 6)]


@case('50 hostile and careless clients while a job trains: the daemon holds, the adapter is the same')
def _():
    with Daemon(QLORAD, SHARED, extra=('--max-frame', '1048576', '--max-output', '1048576')) as d:
        c = Conn(d.socket)
        t0 = time.time()
        probe = c.ok('job.submit', adapter='probe', data={'text': TRAIN}, hyper=dict(HYPER, steps=5))['job_id']
        c.ok('job.watch', job_id=probe)
        # a job that would last half the soak alone: the clients slow it, and attack it all along
        steps = max(20, int(SECONDS / 2 / ((time.time() - t0) / 5)))
        st, stop, peak = Stats(), threading.Event(), [0]
        threads = []
        for k, (role, n) in enumerate(ROLES):
            for i in range(n):
                rnd = random.Random(1000 * k + i)
                threads.append(threading.Thread(target=guarded, args=(role, d.socket, stop, st, rnd)))
        for t in threads:
            t.start()
        jid = c.ok('job.submit', adapter='soak', data={'text': TRAIN}, eval_data={'text': VALID},
                   hyper=dict(HYPER, steps=steps))['job_id']
        start, done = time.time(), None
        while time.time() - start < SECONDS or done is None:
            peak[0] = max(peak[0], rss(d.proc.pid))
            assert d.proc.poll() is None, 'qlorad died:\n' + d.log_text()[-3000:]
            if done is None:
                rec = c.ok('job.get', job_id=jid)
                if rec['state'] not in ('queued', 'running'):
                    done = rec
            assert time.time() - start < SECONDS + 900, 'the job did not end'
            time.sleep(0.2)
        soaked = time.time() - start
        stop.set()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), 'a client hangs'
        assert d.proc.poll() is None, 'qlorad died:\n' + d.log_text()[-3000:]
        assert not st.failures, '%d failures, e.g. %s; the daemon said:\n%s' % (
            len(st.failures), st.failures[:5], '\n'.join(
                line for line in d.log_text().splitlines() if 'closing' in line or ' warn' in line or ' error' in line)[-4000:])
        assert done['state'] == 'succeeded', done
        assert peak[0] < RSS_BOUND, 'peak RSS %d' % peak[0]
        # the same job on the quiet daemon
        for j in c.ok('job.list', state='queued')['jobs']:
            c.call('job.cancel', job_id=j['job_id'])
        alone = c.ok('job.submit', adapter='alone', data={'text': TRAIN}, eval_data={'text': VALID},
                     hyper=dict(HYPER, steps=steps))['job_id']
        alone = c.ok('job.watch', job_id=alone)
        assert done['eval_loss'] == alone['eval_loss'], (done['eval_loss'], alone['eval_loss'])
        a = c.ok('adapter.export', name='soak')['files']['adapter_model.safetensors']
        b = c.ok('adapter.export', name='alone')['files']['adapter_model.safetensors']
        assert a == b, 'the adapter trained under the soak differs from the one trained alone'
        print('# soak: %d clients for %.0f s; a job of %d steps trained meanwhile; peak RSS %.1f MiB '
              '(bound %d MiB); %s' % (len(threads), soaked, steps, peak[0] / 2**20, RSS_BOUND >> 20,
                                      ', '.join('%s %d' % kv for kv in sorted(st.n.items()))))
        rc = d.stop()
        assert rc == 0, 'qlorad exited with %r:\n%s' % (rc, d.log_text()[-3000:])


report()
