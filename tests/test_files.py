#!/usr/bin/python3
"""Stored data files and what jobs hold: file.upload / list / get / delete, job.submit's
data by file id, {path} refused without --data-dir and confined to it with it, jobs pinned
to the bytes they were given, small job records, job.delete, and resumed jobs verifying
their data. Each case runs its own qlorad (stories260K nf4) on a temporary store. TAP.

usage: test_files.py QLORAD STORE_PEEK SHARED_DIR CLIENT_PYTHON_DIR"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

QLORAD, STORE_PEEK, SHARED, CLIENT_DIR = sys.argv[1:5]
sys.path.insert(0, CLIENT_DIR)

from qlora_client import Client, QloraError  # noqa: E402
from qlorad_fixture import Daemon  # noqa: E402
from tap import case, report  # noqa: E402

TRAIN = open(os.path.join(SHARED, 'data/tinystories_train.txt'), encoding='utf-8').read(60000)
VALID = open(os.path.join(SHARED, 'data/tinystories_valid.txt'), encoding='utf-8').read(6000)
SMALL = {'steps': 12, 'batch_size': 2, 'seq_len': 64, 'eval_every': 6, 'checkpoint_every': 4, 'rank': 4,
         'alpha': 8, 'warmup': 2}
LONG = dict(SMALL, steps=100000, checkpoint_every=2)


def sha_id(b):
    return 'file-' + hashlib.sha256(b).hexdigest()


def error_of(fn):
    try:
        fn()
    except QloraError as e:
        return e
    raise AssertionError('no error from the call')


def expect(fn, code, *needles):
    e = error_of(fn)
    assert e.code == code, 'expected %s, got %s: %s' % (code, e.code, e.message)
    for n in needles:
        assert n in e.message, '%r not in %r' % (n, e.message)
    return e.message


def ping_within(d, seconds=1.0):
    """A fresh connection's ping, answered within `seconds`."""
    t = time.time()
    with Client(socket=d.socket, timeout=seconds + 4) as c:
        c.ping()
    took = time.time() - t
    assert took < seconds, 'ping took %.2f s' % took


def adapter_bytes(c, name):
    v = c.adapter(name)['version']
    return c.export_adapter(name, v)['adapter_model.safetensors']


def train(c, name, data, **hyper):
    job = c.submit(name, data, **dict(SMALL, **hyper))
    rec = c.watch(job['job_id']).wait()
    assert rec['state'] == 'succeeded', rec
    return rec


def wait_step(c, job_id, kind='checkpoint'):
    for ev in c.watch(job_id):
        if ev.get('type') == kind:
            return ev
    raise AssertionError('job %d ended before a %s' % (job_id, kind))


HOSTILE = ['/etc/shadow', '/proc/self/environ', '/dev/zero', '/', '/nonexistent/file', '../x', 'a/../../b']


@case('without --data-dir every path is refused with one message that says nothing of the file')
def _():
    tmp = tempfile.mkdtemp(prefix='qlora-files-')
    fifo = os.path.join(tmp, 'fifo')
    os.mkfifo(fifo)
    link = os.path.join(tmp, 'link')
    os.symlink('/etc/passwd', link)
    try:
        with Daemon(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=30) as c:
            messages = set()
            for p in HOSTILE + [fifo, link]:
                m = expect(lambda: c.submit('x', {'path': p}), 'invalid_argument', 'data.path', '--data-dir')
                messages.add(m)
                ping_within(d)
            assert len(messages) == 1, messages
            expect(lambda: c.submit('x', {'text': TRAIN}, eval_data={'path': '/etc/passwd'}), 'invalid_argument',
                   'eval_data.path', '--data-dir')
            assert c.jobs() == [], 'a refused submit left a job'
    finally:
        shutil.rmtree(tmp)


@case('with --data-dir: only regular files inside it, no .., no links, no FIFO blocking the loop')
def _():
    root = tempfile.mkdtemp(prefix='qlora-files-')
    data = os.path.join(root, 'data')
    os.makedirs(os.path.join(data, 'sub'))
    with open(os.path.join(data, 'sub', 'good.txt'), 'w') as f:
        f.write(TRAIN)
    with open(os.path.join(root, 'outside.txt'), 'w') as f:
        f.write('secret outside text')
    os.mkfifo(os.path.join(data, 'fifo'))
    os.symlink('/etc/passwd', os.path.join(data, 'to_passwd'))
    os.symlink('/nonexistent/x', os.path.join(data, 'dangling'))
    os.symlink('../outside.txt', os.path.join(data, 'up'))
    os.symlink('/etc', os.path.join(data, 'etcdir'))
    os.symlink('/dev/zero', os.path.join(data, 'zero'))
    try:
        with Daemon(QLORAD, SHARED, extra=['--data-dir', data]) as d, Client(socket=d.socket, timeout=30) as c:
            # a FIFO without a writer: the submit must neither hang nor stall the loop
            slow = Client(socket=d.socket, timeout=30)
            rid = slow.send('job.submit', {'adapter': 'x', 'data': {'path': 'fifo'}})
            ping_within(d)
            e = error_of(lambda: slow.wait(rid))
            assert e.code == 'invalid_argument' and e.message.startswith('data.path: '), e
            assert 'regular' in e.message, e.message
            slow.close()
            refusals = {}
            for p in ['/etc/shadow', '/proc/self/environ', '/', '/nonexistent', '../outside.txt', 'sub/../../outside.txt',
                      'to_passwd', 'dangling', 'up', 'etcdir/passwd', 'zero', 'sub', 'missing.txt', '']:
                e = error_of(lambda: c.submit('x', {'path': p}))
                assert e.code == 'invalid_argument' and e.message.startswith('data.path: '), (p, e)
                for leak in ('/etc', 'passwd', 'outside', 'secret', 'nonexistent', 'zero'):
                    assert leak not in e.message, (p, e.message)
                refusals[p] = e.message
                ping_within(d)
            # absolute paths alike, whether they exist or not; links alike wherever they point
            assert refusals['/etc/shadow'] == refusals['/nonexistent'] == refusals['/'], refusals
            assert refusals['to_passwd'] == refusals['dangling'] == refusals['up'] == refusals['zero'], refusals
            assert refusals['../outside.txt'] == refusals['sub/../../outside.txt'], refusals
            assert c.jobs() == []
            job = c.submit('x', {'path': 'sub/good.txt'}, **SMALL)
            rec = c.job(job['job_id'])
            assert rec['data']['file_id'] == sha_id(TRAIN.encode()), rec['data']
            assert rec['data']['bytes'] == len(TRAIN.encode())
            f = c.file(rec['data']['file_id'])
            assert f['filename'] == 'good.txt', f
    finally:
        shutil.rmtree(root)


@case('a data-dir file over max_frame is refused naming the cap')
def _():
    data = tempfile.mkdtemp(prefix='qlora-files-')
    with open(os.path.join(data, 'big.txt'), 'w') as f:
        f.write('x' * 70000)
    try:
        with Daemon(QLORAD, SHARED, extra=['--data-dir', data, '--max-frame', '65536']) as d, \
                Client(socket=d.socket, timeout=30) as c:
            expect(lambda: c.submit('x', {'path': 'big.txt'}), 'invalid_argument', 'data.path', 'max_frame')
    finally:
        shutil.rmtree(data)


@case('file.upload / list / get / delete round trip; the same bytes get the same id and are stored once')
def _():
    with Daemon(QLORAD, SHARED) as d, Client(socket=d.socket, timeout=60) as c:
        body = TRAIN.encode()
        f = c.upload_file(body, filename='../../etc/pass\x01wd.txt')
        assert f['file_id'] == sha_id(body), f
        assert f['bytes'] == len(body) and f['purpose'] == 'fine-tune', f
        assert f['filename'] == 'pass_wd.txt', f
        again = c.call('file.upload', data=TRAIN, filename='other.txt')  # str instead of bin
        assert again['file_id'] == f['file_id'] and again['filename'] == 'pass_wd.txt', again
        other = c.upload_file(VALID.encode(), purpose='eval')
        files = c.list_files()
        assert sorted(x['file_id'] for x in files) == sorted([f['file_id'], other['file_id']]), files
        assert c.file(other['file_id'])['purpose'] == 'eval'
        expect(lambda: c.call('file.upload', data=b'x', purpose='Bad Purpose'), 'invalid_argument', 'purpose')
        expect(lambda: c.call('file.upload', data=b''), 'invalid_argument', 'data')
        expect(lambda: c.call('file.upload'), 'bad_request', 'data')
        expect(lambda: c.file('file-' + '0' * 64), 'not_found', 'file-' + '0' * 64)
        expect(lambda: c.file('../etc'), 'invalid_argument', 'file_id')
        expect(lambda: c.submit('x', {'file_id': 'file-' + '1' * 64}), 'not_found', 'data.file_id')
        expect(lambda: c.submit('x', {'file_id': 'nope'}), 'invalid_argument', 'data.file_id')
        assert c.delete_file(other['file_id']) == 1
        assert c.delete_file(other['file_id']) == 0
        expect(lambda: c.file(other['file_id']), 'not_found')
        assert [x['file_id'] for x in c.list_files()] == [f['file_id']]
        # the CLI path: a local file path is uploaded by the client
        tmp = tempfile.NamedTemporaryFile('wb', suffix='.txt', delete=False)
        tmp.write(VALID.encode())
        tmp.close()
        job = c.submit('py', tmp.name, **SMALL)
        os.unlink(tmp.name)
        assert c.job(job['job_id'])['data']['file_id'] == sha_id(VALID.encode())
        assert c.file(sha_id(VALID.encode()))['filename'] == os.path.basename(tmp.name)


@case('a full store answers busy to an upload and keeps serving')
def _():
    with Daemon(QLORAD, SHARED, extra=['--db-max-mb', '2']) as d, Client(socket=d.socket, timeout=60) as c:
        expect(lambda: c.upload_file(os.urandom(3 << 20)), 'busy', 'full')
        assert c.list_files() == []
        assert c.upload_file(b'small')['bytes'] == 5
        ping_within(d)


@case('file.delete is refused while a queued or running job uses the file; job.delete only for finished jobs')
def _():
    root = tempfile.mkdtemp(prefix='qlora-files-')
    db = os.path.join(root, 'db')
    with Daemon(QLORAD, SHARED, db=db) as d, Client(socket=d.socket, timeout=120) as c:
        fa = c.upload_file(TRAIN.encode())['file_id']
        fb = c.upload_file((TRAIN + ' more').encode())['file_id']
        a = c.submit('a', fa, **LONG)['job_id']
        wait_step(c, a, 'progress')
        b = c.submit('b', {'file_id': fb}, eval_data={'file_id': fa}, **SMALL)['job_id']
        assert c.job(b)['state'] == 'queued'
        expect(lambda: c.delete_file(fb), 'conflict', fb, 'job %d' % b)
        expect(lambda: c.delete_file(fa), 'conflict', fa)
        expect(lambda: c.delete_job(a), 'conflict', 'running')
        expect(lambda: c.delete_job(b), 'conflict', 'queued')
        c.cancel(b)
        assert c.delete_file(fb) == 1, 'the file of a cancelled job stays locked'
        expect(lambda: c.delete_file(fa), 'conflict', 'job %d' % a)
        c.cancel(a)
        rec = c.watch(a).wait()
        assert rec['state'] == 'cancelled', rec
        assert c.delete_job(a) == 1
        expect(lambda: c.job(a), 'not_found')
        assert [j['job_id'] for j in c.jobs()] == [b]
        expect(lambda: c.delete_job(a), 'not_found')
        assert c.file(fa)['file_id'] == fa, 'job.delete took the file with it'
        assert d.stop() == 0
    # a deleted job stays deleted across a restart
    with Daemon(QLORAD, SHARED, db=db) as d2, Client(socket=d2.socket, timeout=60) as c:
        assert [j['job_id'] for j in c.jobs()] == [b]
        assert c.delete_file(fa) == 1
    shutil.rmtree(root)


@case('a job from a file id, from inline text and from --data-dir trains the same adapter; the path is pinned')
def _():
    data = tempfile.mkdtemp(prefix='qlora-files-')
    path = os.path.join(data, 'train.txt')
    with open(path, 'w') as f:
        f.write(TRAIN)
    try:
        with Daemon(QLORAD, SHARED, extra=['--data-dir', data]) as d, Client(socket=d.socket, timeout=300) as c:
            fid = c.upload_file(TRAIN.encode())['file_id']
            train(c, 'by-id', {'file_id': fid}, seed=3)
            train(c, 'inline', {'text': TRAIN}, seed=3)
            ref = adapter_bytes(c, 'by-id')
            assert adapter_bytes(c, 'inline') == ref, 'inline text and its file id trained differently'
            # inline tokens are stored as a token file and give the same stream as the text
            rec = train(c, 'tokens', {'tokens': [c.tokenize(TRAIN)]}, seed=3)
            assert rec['data']['format'] == 'tokens' and c.file(rec['data']['file_id'])['purpose'] == 'tokens', rec
            assert adapter_bytes(c, 'tokens') == ref, 'inline tokens trained differently from their text'
            expect(lambda: c.submit('x', {'tokens': [[]]}), 'invalid_argument', 'data.tokens')
            # the path is read at submit: changing the file afterwards changes nothing
            blocker = c.submit('blocker', {'text': VALID}, **LONG)['job_id']
            wait_step(c, blocker, 'progress')
            pinned = c.submit('pinned', {'path': 'train.txt'}, **dict(SMALL, seed=3))['job_id']
            assert c.job(pinned)['state'] == 'queued'
            with open(path, 'w') as f:
                f.write(VALID * 10)
            c.cancel(blocker)
            rec = c.watch(pinned).wait()
            assert rec['state'] == 'succeeded', rec
            assert rec['data']['file_id'] == fid, rec['data']
            assert adapter_bytes(c, 'pinned') == ref, 'the job trained on the changed file'
            train(c, 'changed', {'path': 'train.txt'}, seed=3)
            assert adapter_bytes(c, 'changed') != ref, 'the comparison cannot tell data apart'
    finally:
        shutil.rmtree(data)


def peek(db, *args):
    p = subprocess.run([STORE_PEEK, db, *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, 'store_peek %s: %s' % (' '.join(args), p.stderr)
    return p.stdout.strip()


@case('a job over 8 MiB of data keeps a record of a few hundred bytes, checkpoints included')
def _():
    big = (TRAIN * (8 * (1 << 20) // len(TRAIN) + 1)).encode()
    with Daemon(QLORAD, SHARED) as d:
        with Client(socket=d.socket, timeout=300) as c:
            job = c.submit('big', {'text': big.decode()}, **dict(SMALL, checkpoint_every=1))
            wait_step(c, job['job_id'])
            rec = c.watch(job['job_id']).wait()
            assert rec['state'] == 'succeeded', rec
            assert rec['data'] == {'file_id': sha_id(big), 'bytes': len(big), 'format': 'text'}, rec['data']
            assert rec['eval_data'] is None, rec['eval_data']
            assert c.file(sha_id(big))['bytes'] == len(big)
        assert d.stop() == 0
        n = int(peek(os.path.join(d.dir, 'db'), 'job-bytes', str(job['job_id'])))
        assert n < 2048, 'the stored job record is %d bytes' % n


@case('a resumed job loads its data by id and fails naming the file when it was deleted or corrupted')
def _():
    root = tempfile.mkdtemp(prefix='qlora-files-')
    db = os.path.join(root, 'db')
    try:
        with Daemon(QLORAD, SHARED, db=db) as d:
            with Client(socket=d.socket, timeout=300) as c:
                fa = c.upload_file(TRAIN.encode())['file_id']
                fb = c.upload_file(VALID.encode() * 4)['file_id']
                # long enough to be stopped mid-way, short enough to end if it wrongly resumes
                a = c.submit('a', fa, **dict(LONG, steps=300))['job_id']
                b = c.submit('b', fb, **SMALL)['job_id']
                wait_step(c, a)
            assert d.stop() == 0
        peek(db, 'file-corrupt', fa)
        peek(db, 'file-rm', fb)
        with Daemon(QLORAD, SHARED, db=db) as d, Client(socket=d.socket, timeout=300) as c:
            ra = c.watch(a).wait()
            assert ra['state'] == 'failed' and fa in ra['error'] and 'corrupt' in ra['error'], ra
            rb = c.watch(b).wait()
            assert rb['state'] == 'failed' and fb in rb['error'] and 'not found' in rb['error'], rb
            assert c.adapters() == []
    finally:
        shutil.rmtree(root)



def old_record(jid, state, **changes):
    """A job record as the first daemon with stored files wrote it (git 1f72e13): no starts,
    crashes, base or clean_stop, which later daemons added."""
    rec = {'job_id': jid, 'adapter': 'old%d' % jid, 'adapter_version': None, 'method': 'lora', 'state': state,
           'created_at': 1.75e9, 'started_at': None, 'finished_at': None, 'step': 0, 'total_steps': 12,
           'loss': None, 'eval_loss': None, 'tokens_per_s': None, 'error': None,
           'hyper': {'rank': 4, 'alpha': 8.0, 'steps': 12, 'batch_size': 2, 'seq_len': 64, 'seed': 5,
                     'targets': ['q', 'v'], 'schedule': 'constant', 'init': 'default'},
           'resumed': 0, 'metrics': {'ppl_base': None, 'ppl_adapter': None},
           'data': {'file_id': sha_id(b'gone'), 'bytes': 4, 'format': 'text'}, 'eval_data': None}
    rec.update(changes)
    return rec


@case('job records of an earlier layout load, and are stored again in this one')
def _():
    import msgpack
    root = tempfile.mkdtemp(prefix='qlora-files-')
    db = os.path.join(root, 'db')
    done = dict(adapter_version=3, started_at=1.75e9 + 1, finished_at=1.75e9 + 60, step=12, loss=2.5, eval_loss=2.25,
                tokens_per_s=1000.0, metrics={'ppl_base': 11.5, 'ppl_adapter': 9.5},
                eval_data={'file_id': sha_id(b'eval'), 'bytes': 4, 'format': 'tokens'})
    records = {1: old_record(1, 'succeeded', **done), 2: old_record(2, 'paused'), 3: old_record(3, 'failed'),
               4: old_record(4, 'queued')}
    del records[3]['data']  # unreadable: left in the store as it is, and not listed
    try:
        os.makedirs(db)
        for jid, rec in records.items():
            p = subprocess.run([STORE_PEEK, db, 'job-put', str(jid)], input=msgpack.packb(rec, use_bin_type=True),
                               capture_output=True, timeout=60)
            assert p.returncode == 0, p.stderr
        with Daemon(QLORAD, SHARED, db=db) as d:
            with Client(socket=d.socket, timeout=60) as c:
                r = c.job(1)
                for key, value in records[1].items():
                    if key != 'hyper':
                        assert r[key] == value, (key, r[key], value)
                h = r['hyper']
                assert (h['rank'], h['alpha'], h['seed'], h['targets'], h['schedule']) == (4, 8.0, 5, ['q', 'v'],
                                                                                           'constant'), h
                assert (r['starts'], r['crashes'], r['base']) == (0, 0, {'fingerprint': 0, 'quant': '', 'model': None})
                assert c.job(2)['state'] == 'failed', 'a state it does not know is read as failed'
                expect(lambda: c.job(3), 'not_found', 'no job 3')
                # queued: it runs, and fails for its data, which was never stored here
                r = c.watch(4).wait()
                assert r['state'] == 'failed' and sha_id(b'gone') in r['error'] and r['starts'] == 1, r
                assert [j['job_id'] for j in c.jobs()] == [1, 2, 4]
            assert d.stop() == 0
            assert 'job 3: unreadable record (data: missing)' in d.log_text(), d.log_text()
        stored = msgpack.unpackb(subprocess.run([STORE_PEEK, db, 'job-get', '4'], capture_output=True,
                                                timeout=60).stdout, raw=False)
        assert list(stored) == list(r) + ['clean_stop', 'history'], list(stored)
        assert stored['state'] == 'failed' and stored['clean_stop'] is False, stored
    finally:
        shutil.rmtree(root)


report()
