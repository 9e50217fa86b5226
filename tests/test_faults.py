#!/usr/bin/python3
"""Fault injection against a real qlorad (stories260K nf4): the store on a small tmpfs that
fills up under checkpoints and publishes (and the --db-max-mb cap), SIGKILL at random
moments of checkpoints and publishes, and a job that kills the daemon three times. After
each: every record parses, every published adapter is whole and none is lost, every job is
in a true state, and a job ends with the adapter of an uninterrupted run. Needs root (to
mount a tmpfs); without it the tmpfs case fails. TAP output.

usage: test_faults.py QLORAD SHARED_DIR"""

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

from qlorad_fixture import Qlorad
from tap import case, report

QLORAD, SHARED = sys.argv[1], sys.argv[2]
MODEL = os.path.join(SHARED, 'models/stories260K')
TRAIN = open(os.path.join(SHARED, 'data/tinystories_train.txt'), encoding='utf-8').read(40000)
VALID = open(os.path.join(SHARED, 'data/tinystories_valid.txt'), encoding='utf-8').read(3000)
tmp = tempfile.mkdtemp(prefix='qlorad-faults-test-')
rng = random.Random(int(os.environ.get('QLORA_FAULTS_SEED', '15')))
print('# seed %s' % os.environ.get('QLORA_FAULTS_SEED', '15'))
# rank 16 on every linear: a checkpoint of ~1.2 MB, large beside the tmpfs below
HYPER = {'steps': 40, 'batch_size': 2, 'seq_len': 32, 'eval_every': 20, 'checkpoint_every': 2, 'rank': 16,
         'alpha': 32, 'warmup': 2, 'seed': 7}
FINAL = ('succeeded', 'failed', 'cancelled')


def Daemon(db, *extra, name='d'):
    return Qlorad(QLORAD, MODEL, db, tmp, name, '--threads', '2', *extra)


def tensors(c, name, version=None):
    """The exported adapter's tensors: {tensor name: bytes}."""
    args = {'name': name} if version is None else {'name': name, 'version': version}
    st = c.ok('adapter.export', **args)['files']['adapter_model.safetensors']
    n = struct.unpack('<Q', st[:8])[0]
    header, body = json.loads(st[8:8 + n]), st[8 + n:]
    return {k: body[v['data_offsets'][0]:v['data_offsets'][1]] for k, v in header.items() if k != '__metadata__'}


def submit(c, name, **hyper):
    return c.ok('job.submit', adapter=name, data={'text': TRAIN}, eval_data={'text': VALID},
                hyper=dict(HYPER, **hyper))['job_id']


def wait_state(c, jid, states, timeout=120, step=None):
    deadline = time.time() + timeout
    while True:
        r = c.ok('job.get', job_id=jid)
        if r['state'] in states and (step is None or r['step'] >= step):
            return r
        assert time.time() < deadline, 'job %d stays %s at step %d (%s)' % (jid, r['state'], r['step'], r['error'])
        time.sleep(0.02)


reference = {}


def reference_run(**hyper):
    """The adapter of an uninterrupted run of HYPER + hyper, on a store of its own."""
    key = json.dumps(hyper, sort_keys=True)
    if key not in reference:
        d = Daemon(os.path.join(tmp, 'ref-%d.db' % len(reference)), name='ref')
        try:
            c = d.conn()
            jid = submit(c, 'ref', **hyper)
            assert wait_state(c, jid, FINAL)['state'] == 'succeeded'
            reference[key] = tensors(c, 'ref')
        finally:
            d.stop()
    return reference[key]


def mount_tmpfs(path, mb):
    os.makedirs(path, exist_ok=True)
    p = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%dm,mode=0700' % mb, 'tmpfs', path],
                       capture_output=True)
    assert p.returncode == 0, 'cannot mount a tmpfs (this test needs root): %s' % p.stderr.decode()


def fill(path):
    """Writes a file until the file system is full; returns its name."""
    name = os.path.join(path, 'filler')
    with open(name, 'wb') as f:
        try:
            while True:
                f.write(b'\0' * 65536)
                f.flush()
        except OSError:
            pass
    return name


@case('store on a full tmpfs: failed checkpoints warn and training goes on, a failed publish leaves the job '
      'running and is retried; then the --db-max-mb cap, a stop while the publish waits, and a resume; '
      'both end with the uninterrupted run\'s adapter')
def _():
    t0 = time.time()
    want = reference_run(steps=60, checkpoint_every=10)
    mnt = os.path.join(tmp, 'tmpfs')
    mount_tmpfs(mnt, 8)
    d = None
    try:
        db = os.path.join(mnt, 'db')
        d = Daemon(db, '--db-max-mb', '64', name='full')
        c = d.conn()
        jid = submit(c, 'full', steps=60, checkpoint_every=10)
        # started (its record stored), before its first checkpoint: the disk is full from
        # here on, and the store's file has no free pages inside for a checkpoint (LMDB
        # reuses the pages of an old one, so a full disk after two would not be felt)
        r = wait_state(c, jid, ('running',))
        assert r['step'] < 6, 'too late for the test: %r' % r
        filler = fill(mnt)
        w = d.conn()
        wid = w.send('job.watch', job_id=jid)
        warnings, kinds = [], []
        while True:
            m = w.recv()
            assert m['id'] == wid, m
            if 'event' not in m:
                break
            kinds.append(m['event']['type'])
            if m['event']['type'] == 'warning':
                warnings.append(m['event']['message'])
            if any('could not be published' in x for x in warnings):
                break
        assert any('checkpoint at step' in x and 'not saved' in x for x in warnings), warnings
        r = c.ok('job.get', job_id=jid)
        assert r['state'] == 'running' and r['step'] == 60 and 'could not be published' in r['error'], r
        assert c.ok('adapter.list')['adapters'] == []
        os.unlink(filler)  # room again: the next retry publishes
        r = wait_state(c, jid, FINAL, timeout=120)
        assert r['state'] == 'succeeded' and r['adapter_version'] == 1 and r['error'] is None, r
        assert tensors(c, 'full') == want, 'the adapter differs from the uninterrupted run'
        n_warn = len(warnings)
        d.stop()
        d = Daemon(db, name='full')  # the store says what memory said
        c = d.conn()
        assert c.ok('job.get', job_id=jid)['state'] == 'succeeded'
        assert tensors(c, 'full') == want
        d.stop()

        # the cap: neither a checkpoint nor the adapter of rank 64 (1.5 MB) fits in 1 MiB
        want = reference_run(steps=20, rank=64)
        db2 = os.path.join(tmp, 'capped.db')
        d = Daemon(db2, '--db-max-mb', '1', name='cap')
        c = d.conn()
        jid = submit(c, 'capped', steps=20, rank=64)
        r = wait_state(c, jid, ('running',), step=20, timeout=120)
        deadline = time.time() + 60
        while 'could not be published' not in (r['error'] or ''):
            assert time.time() < deadline and r['state'] == 'running', r
            time.sleep(0.05)
            r = c.ok('job.get', job_id=jid)
        assert 'store full' in r['error'], r
        d.stop()  # while the publish waits for its retry: a clean stop, resumed at the next start
        d = Daemon(db2, '--db-max-mb', '64', name='cap')
        c = d.conn()
        r = wait_state(c, jid, FINAL, timeout=120)
        assert r['state'] == 'succeeded' and r['resumed'] == 0 and r['crashes'] == 0, r
        assert tensors(c, 'capped') == want, 'the resumed adapter differs from the uninterrupted run'
        d.stop()
        d = None
        print('# tmpfs 8 MiB: %d warnings; cap 1 MiB then 64 MiB; %.1f s' % (n_warn, time.time() - t0))
    finally:
        if d and d.p.poll() is None:
            d.kill()
        subprocess.run(['umount', mnt], capture_output=True)


@case('SIGKILL at 20 random moments of checkpoints and publishes: records parse, nothing partial or lost, '
      'the job ends with the uninterrupted run\'s adapter')
def _():
    t0 = time.time()
    hyper = {'steps': 30, 'checkpoint_every': 1, 'eval_every': 0}
    want = reference_run(**hyper)
    db = os.path.join(tmp, 'kill.db')
    d = Daemon(db, '--max-job-crashes', '1000', name='kill')
    c = d.conn()
    job_ids = [submit(c, 'kill', **hyper)]
    seen = {}  # version -> job id, of every version seen published
    kills = restarts = 0
    while kills < 20:
        # alternately a short and a longer wait: the resume and first checkpoints, or the
        # later checkpoints and the publish
        time.sleep(rng.uniform(0, 0.15) if kills % 2 else rng.uniform(0.05, 0.6))
        d.kill()
        kills += 1
        d = Daemon(db, '--max-job-crashes', '1000', name='kill')
        restarts += 1
        c = d.conn()
        assert 'unreadable record' not in d.tail(), d.tail()
        recs = {j: c.ok('job.get', job_id=j) for j in job_ids}
        ads = {a['version']: a['job_id'] for a in c.ok('adapter.list')['adapters']}
        for v, j in seen.items():
            assert ads.get(v) == j, 'version %d of job %d lost: %r' % (v, j, ads)
        for j, r in recs.items():
            mine = [v for v, o in ads.items() if o == j]
            assert r['state'] in ('queued', 'running', 'succeeded'), r
            assert mine == ([r['adapter_version']] if r['state'] == 'succeeded' else []), (r, ads)
        for v in sorted(set(ads) - set(seen)):
            assert tensors(c, 'kill', v) == want, 'version %d is not the uninterrupted run\'s' % v
            seen[v] = ads[v]
        if recs[job_ids[-1]]['state'] == 'succeeded':  # the next kills at moments of another job
            job_ids.append(submit(c, 'kill', **hyper))
    r = wait_state(c, job_ids[-1], FINAL, timeout=120)
    assert r['state'] == 'succeeded', r
    got = {a['version']: a['job_id'] for a in c.ok('adapter.list')['adapters']}
    assert sorted(got.values()) == job_ids, (got, job_ids)
    for v in got:
        assert tensors(c, 'kill', v) == want, 'version %d differs' % v
    d.stop()
    print('# %d kills, %d restarts, %d jobs published (each once, each the uninterrupted adapter); %.1f s' % (
        kills, restarts, len(got), time.time() - t0))


@case('a job that kills the daemon three times is failed with the reason, and the queued job runs')
def _():
    t0 = time.time()
    db = os.path.join(tmp, 'poison.db')
    d = Daemon(db, name='poison')
    c = d.conn()
    # checkpoint_every 0: no progress between the deaths
    poison = submit(c, 'poison', steps=100000, checkpoint_every=0, eval_every=0)
    after = submit(c, 'after', steps=4, eval_every=0)
    for n in range(3):
        r = wait_state(c, poison, ('running',), step=1)
        assert r['starts'] == n + 1 and r['crashes'] == n, r
        d.kill()
        d = Daemon(db, name='poison')
        c = d.conn()
    r = c.ok('job.get', job_id=poison)
    assert r['state'] == 'failed' and 'died 3 times' in r['error'] and 'not resumed again' in r['error'], r
    assert wait_state(c, after, FINAL)['state'] == 'succeeded'
    d.stop()
    d = Daemon(db, name='poison')  # and it stays failed
    assert d.conn().ok('job.get', job_id=poison)['state'] == 'failed'
    d.stop()
    print('# 3 kills, 4 restarts; %.1f s' % (time.time() - t0))


@case('a clean stop (SIGTERM) is no crash: the job resumes however often the daemon is stopped')
def _():
    db = os.path.join(tmp, 'clean.db')
    d = Daemon(db, name='clean')
    c = d.conn()
    jid = submit(c, 'clean', steps=100000, checkpoint_every=0, eval_every=0)

    def claimed(n):
        """The record once this daemon's runner has claimed the job (its nth start): a
        restarted daemon answers before that, with the record of the last run."""
        deadline = time.time() + 60
        r = wait_state(c, jid, ('running',), step=1)
        while r['starts'] < n and time.time() < deadline:
            time.sleep(0.02)
            r = c.ok('job.get', job_id=jid)
        return r

    for n in range(4):
        claimed(n + 1)
        d.stop()
        d = Daemon(db, name='clean')
        c = d.conn()
    r = claimed(5)
    assert r['state'] == 'running' and r['crashes'] == 0 and r['starts'] == 5, r
    c.ok('job.cancel', job_id=jid)
    assert wait_state(c, jid, FINAL)['state'] == 'cancelled'
    d.stop()


shutil.rmtree(tmp, ignore_errors=True)
report()
