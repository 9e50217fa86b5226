#!/usr/bin/python3
"""Benchmarks of qlorad as a service, each against a reference measured in the same run:
 1. `status` round trips (p50, p99) with 1, 10 and 100 connections while a job trains,
    against the same with the daemon idle;
 2. swap latency: adapter.activate + the first generated token (streamed), the adapter in
    the cache vs loaded from LMDB (a daemon with --adapter-cache-mb 0), against a
    generate of the base alone;
 3. training tokens/s inside the daemon against `qlora-tool train` on the same job
    (target: at least 0.95).

usage: bench_daemon.py BUILD_DIR [MODEL_DIR]   (default ../shared/models/tinystories6M)"""

import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

BUILD = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, '..', '..', 'shared', 'models', 'tinystories6M')
SHARED_DATA = os.path.join(HERE, '..', '..', 'shared', 'data')
QLORAD = os.path.join(BUILD, 'daemon', 'qlorad')
TOOL = os.path.join(BUILD, 'tool', 'qlora-tool')
TRAIN_TXT = os.path.join(SHARED_DATA, 'tinystories_train.txt')
JOB = {'steps': 12, 'batch_size': 4, 'seq_len': 128, 'rank': 16, 'eval_every': 0, 'checkpoint_every': 0,
       'warmup': 2}
tmp = tempfile.mkdtemp(prefix='qlorad-bench-')


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf, self.next_id = b'', 0

    def send(self, op, **args):
        self.next_id += 1
        b = msgpack.packb({'id': self.next_id, 'op': op, 'args': args}, use_bin_type=True)
        self.s.sendall(struct.pack('>I', len(b)) + b)

    def recv(self):
        while len(self.buf) < 4 or len(self.buf) < 4 + struct.unpack('>I', self.buf[:4])[0]:
            d = self.s.recv(1 << 20)
            if not d:
                raise EOFError
            self.buf += d
        n = struct.unpack('>I', self.buf[:4])[0]
        m = msgpack.unpackb(self.buf[4:4 + n], raw=False)
        self.buf = self.buf[4 + n:]
        return m

    def call(self, op, **args):
        self.send(op, **args)
        while True:
            m = self.recv()
            if 'event' not in m:
                assert m['ok'], m
                return m['result']


def start(name, *extra):
    sock = os.path.join(tmp, name + '.sock')
    p = subprocess.Popen([QLORAD, '--model', MODEL, '--quant', 'nf4', '--db', os.path.join(tmp, name + '.db'),
                          '--socket', sock, *extra], stderr=subprocess.DEVNULL)
    while not os.path.exists(sock):
        time.sleep(0.05)
    return p, sock


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)


def percentiles(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def status_latencies(sock, n_conn, seconds=3.0):
    lat, stop_at = [], time.time() + seconds
    lock = threading.Lock()

    def client():
        c = Conn(sock)
        mine = []
        while time.time() < stop_at:
            t0 = time.perf_counter()
            c.call('status')
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    ts = [threading.Thread(target=client) for _ in range(n_conn)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return percentiles(lat)


def submit(c, name, steps=None):
    text = open(TRAIN_TXT, encoding='utf-8').read(400000)
    hyper = dict(JOB, steps=steps or JOB['steps'])
    return c.call('job.submit', adapter=name, data={'text': text}, hyper=hyper)['job_id']


def watch_rate(c, jid):
    """Mean tokens/s over the job's steps after the first, from its progress events."""
    c.send('job.watch', job_id=jid)
    rates = []
    while True:
        m = c.recv()
        if 'event' in m:
            e = m['event']
            if e['type'] == 'progress' and e['step'] > 1:
                rates.append(e['tokens_per_s'])
            continue
        return statistics.mean(rates), m['result']


def tool_rate():
    path = os.path.join(tmp, 'train.txt')
    with open(TRAIN_TXT, encoding='utf-8') as f:
        open(path, 'w').write(f.read(400000))
    args = [TOOL, 'train', '--model', MODEL, '--quant', 'nf4', '--data', path, '--out', os.path.join(tmp, 'a.st'),
            '--steps', str(JOB['steps']), '--batch', str(JOB['batch_size']), '--seq-len', str(JOB['seq_len']),
            '--rank', str(JOB['rank']), '--warmup', '2', '--checkpoint-every', '0', '--eval-every', '0']
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rates = [float(m.group(2)) for m in re.finditer(r'^step (\d+)/\d+ .* ([0-9.]+) tokens/s$', out, re.M)
             if int(m.group(1)) > 1]
    return statistics.mean(rates)


def main():
    print('qlorad benchmarks on %s (nf4); %d cores' % (os.path.basename(os.path.normpath(MODEL)), os.cpu_count()))
    p, sock = start('main')
    c = Conn(sock)

    print('\n1. status round trip, ms (p50 / p99)')
    print('   %-12s %-18s %-18s %s' % ('connections', 'idle', 'while training', 'p50 ratio'))
    for n in (1, 10, 100):
        idle = status_latencies(sock, n)
        jid = submit(c, 'load%d' % n, steps=1000)
        time.sleep(1.0)
        busy = status_latencies(sock, n)
        c.call('job.cancel', job_id=jid)
        print('   %-12d %6.3f / %-9.3f %6.3f / %-9.3f %.2fx' % (n, idle[0] * 1e3, idle[1] * 1e3, busy[0] * 1e3,
                                                              busy[1] * 1e3, busy[0] / idle[0]))

    print('\n2. training tokens/s: daemon job vs qlora-tool train (same job, same run)')
    # let the cancelled job of part 1 stop before measuring
    time.sleep(1.0)
    daemon_rate, rec = watch_rate(c, submit(c, 'speed'))
    ref = tool_rate()
    print('   daemon %.0f tokens/s, qlora-tool %.0f tokens/s: ratio %.3f (target >= 0.95)'
          % (daemon_rate, ref, daemon_rate / ref))

    print('\n3. swap latency: activate + first streamed token, ms (median of 20)')
    c.call('job.submit', adapter='other', data={'text': open(TRAIN_TXT).read(200000)},
           hyper=dict(JOB, steps=2))
    while c.call('job.list', state='succeeded')['jobs'][-1]['adapter'] != 'other':
        time.sleep(0.2)
    stop(p)

    def first_token(sock, names):
        cc = Conn(sock)
        times = []
        for i in range(20):
            t0 = time.perf_counter()
            if names:
                cc.call('adapter.activate', name=names[i % 2])
            cc.send('generate', prompt='Once upon a time', max_tokens=1, stream=True)
            while 'event' not in cc.recv():
                pass
            times.append(time.perf_counter() - t0)
            cc.recv()  # the final response
        return statistics.median(times) * 1e3

    for label, extra in (('cached', ()), ('from LMDB', ('--adapter-cache-mb', '0'))):
        p, sock = start('main', *extra)
        base = first_token(sock, None)
        swap = first_token(sock, ['speed', 'other'])
        print('   %-10s %.2f ms vs the base alone %.2f ms: %.2fx' % (label, swap, base, swap / base))
        stop(p)
    shutil.rmtree(tmp)


if __name__ == '__main__':
    main()
