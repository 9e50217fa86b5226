#!/usr/bin/python3
"""qlorad's job table against careless use: the memory a job needs checked at submit,
cancels racing the runners' claims, a job never resumed on another base, one daemon per
store. Real daemons over stories260K on temporary sockets and stores. TAP output.

usage: test_jobs.py QLORAD QLORA_TOOL SHARED_DIR"""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

from qlorad_fixture import Qlorad
from tap import case, report, run

QLORAD, TOOL, SHARED = sys.argv[1], sys.argv[2], sys.argv[3]
MODEL = os.path.join(SHARED, 'models/stories260K')
TRAIN = open(os.path.join(SHARED, 'data/tinystories_train.txt'), encoding='utf-8').read(20000)
tmp = tempfile.mkdtemp(prefix='qlorad-jobs-test-')
TINY = {'steps': 2, 'batch_size': 1, 'seq_len': 16, 'eval_every': 0, 'checkpoint_every': 0, 'rank': 2,
        'warmup': 0}


def Daemon(name, *extra, db=None, quant='nf4'):
    """A qlorad on its own socket; the store is shared when db is given."""
    return Qlorad(QLORAD, MODEL, db or os.path.join(tmp, name + '.db'), tmp, name, *extra, quant=quant)


def wait_final(c, ids, timeout=300):
    """The records of jobs ids once every one has ended."""
    deadline = time.time() + timeout
    while True:
        recs = {r['job_id']: r for r in c.ok('job.list')['jobs'] if r['job_id'] in ids}
        if all(r['state'] in ('succeeded', 'failed', 'cancelled') for r in recs.values()) and len(recs) == len(ids):
            return recs
        assert time.time() < deadline, 'jobs not ended: %r' % {i: r['state'] for i, r in recs.items()}
        time.sleep(0.1)


@case('job.submit refuses a job whose memory need exceeds what the machine has, with the figures')
def _():
    d = Daemon('memory')
    try:
        c = d.conn()
        m = c.call('job.submit', adapter='huge', data={'text': TRAIN},
                   hyper={'batch_size': 4096, 'seq_len': 256, 'steps': 1})
        assert not m['ok'] and m['error']['code'] == 'busy', m
        msg = m['error']['message']
        assert 'needs ~' in msg and 'GiB available' in msg and 'batch_size 4096' in msg, msg
        assert c.ok('job.list')['jobs'] == [], 'a refused job was stored'
        # an ordinary job still passes the check
        jid = c.ok('job.submit', adapter='small', data={'text': TRAIN}, hyper=TINY)['job_id']
        assert wait_final(c, {jid})[jid]['state'] == 'succeeded'
    finally:
        d.stop()


@case('40 jobs submitted and cancelled from 4 threads against 2 runners: a cancelled job never publishes, '
      'each ends in one final state, memory and store agree')
def _():
    d = Daemon('race', '--max-running', '2', '--max-queued', '100')
    try:
        c = d.conn()
        first = c.ok('job.submit', adapter='warm', data={'text': TRAIN}, hyper=TINY)['job_id']
        cancelled, errors, lock = {}, [], threading.Lock()

        def worker(k):
            try:
                w = d.conn()
                for i in range(10):
                    # the cancel right behind the submit's answer: it reaches the loop while
                    # a runner woken by the submit claims the job
                    jid = w.ok('job.submit', adapter='race%d' % k, data={'text': TRAIN}, hyper=TINY)['job_id']
                    r = w.call('job.cancel', job_id=jid)
                    if r['ok']:
                        with lock:
                            cancelled[jid] = r['result']['state']
                    else:  # it ended before the cancel came
                        assert r['error']['code'] == 'conflict', r
                    # a second cancel: cancelled already, or it is running, or ended
                    r2 = w.call('job.cancel', job_id=jid)
                    assert r2['ok'] or r2['error']['code'] == 'conflict', r2
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        ids = set(range(first, first + 41))
        recs = wait_final(c, ids)
        published = {a['job_id'] for a in c.ok('adapter.list')['adapters']}
        said = [j for j, s in cancelled.items() if s == 'cancelled']
        assert said, 'no cancel won against the runners: %r' % cancelled
        for j in said:
            assert recs[j]['state'] == 'cancelled', 'job %d: cancel said cancelled, it ended %r' % (j, recs[j])
            assert j not in published and recs[j]['adapter_version'] is None, 'cancelled job %d published' % j
        for j, r in recs.items():
            assert r['state'] in ('succeeded', 'cancelled'), r
            assert (r['state'] == 'succeeded') == (j in published), 'job %d %s, published %s' % (
                j, r['state'], j in published)
        d.stop()
        d = Daemon('race', db=d.db)  # what the store says is what memory said
        again = {r['job_id']: (r['state'], r['adapter_version']) for r in d.conn().ok('job.list')['jobs']}
        assert again == {j: (r['state'], r['adapter_version']) for j, r in recs.items()}, 'store and memory differ'
        print('# %d cancels answered, %d cancelled, %d ran' % (len(cancelled), len(said),
                                                            sum(r['state'] == 'succeeded' for r in recs.values())))
    finally:
        d.stop()


@case('a job submitted on one base fails on another (queued or resumed), naming both fingerprints')
def _():
    db = os.path.join(tmp, 'base.db')
    d = Daemon('base', db=db)
    c = d.conn()
    long_job = dict(TINY, steps=100000, checkpoint_every=1)
    running = c.ok('job.submit', adapter='long', data={'text': TRAIN}, hyper=long_job)['job_id']
    queued = c.ok('job.submit', adapter='next', data={'text': TRAIN}, hyper=TINY)['job_id']
    rec = c.ok('job.get', job_id=running)
    fp = rec['base']['fingerprint']
    assert rec['base']['quant'].startswith('nf4') and rec['base']['model'] == MODEL, rec['base']
    deadline = time.time() + 60
    while c.ok('job.get', job_id=running)['step'] < 2:
        assert time.time() < deadline, 'the job does not train'
        time.sleep(0.05)
    d.stop()
    d = Daemon('base', db=db, quant='int8')
    try:
        c = d.conn()
        recs = wait_final(c, {running, queued}, timeout=60)
        for j in (running, queued):
            r = recs[j]
            assert r['state'] == 'failed', r
            e = r['error']
            assert 'base changed' in e and '%016x' % fp in e and 'nf4' in e and 'int8' in e, e
        assert c.ok('adapter.list')['adapters'] == []
    finally:
        d.stop()


@case('one daemon per store: a second qlorad on the same --db refuses, naming the holder\'s pid; '
      'qlora-tool import waits for it to stop, export reads beside it; the store is 0700/0600')
def _():
    d = Daemon('one')
    try:
        c = d.conn()
        jid = c.ok('job.submit', adapter='solo', data={'text': TRAIN}, hyper=TINY)['job_id']
        assert wait_final(c, {jid})[jid]['state'] == 'succeeded'
        p = subprocess.run([QLORAD, '--model', MODEL, '--db', d.db, '--socket', os.path.join(tmp, 'two.sock')],
                           capture_output=True, timeout=60)
        assert p.returncode != 0 and b'in use by qlorad (pid %d)' % d.p.pid in p.stderr, p.stderr
        assert not os.path.exists(os.path.join(tmp, 'two.sock'))
        out = os.path.join(tmp, 'solo-export')
        rc, o, e = run(TOOL, 'export', '--db', d.db, 'solo', out)
        assert rc == 0, e
        rc, o, e = run(TOOL, 'import', '--db', d.db, '--model', MODEL, 'solo2', out)
        assert rc != 0 and 'in use by qlorad (pid %d)' % d.p.pid in e, (rc, e)
        assert [a['name'] for a in c.ok('adapter.list')['adapters']] == ['solo']
        assert stat.S_IMODE(os.stat(d.db).st_mode) == 0o700
        for f in os.listdir(d.db):
            assert stat.S_IMODE(os.stat(os.path.join(d.db, f)).st_mode) == 0o600, f
    finally:
        d.stop()
    rc, o, e = run(TOOL, 'import', '--db', d.db, '--model', MODEL, 'solo2', out)
    assert rc == 0 and 'solo2@1' in o, (rc, o, e)


shutil.rmtree(tmp, ignore_errors=True)
report()
