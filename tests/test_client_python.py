#!/usr/bin/python3
"""clients/python/qlora_client.py against a real qlorad (stories260K, nf4): every op as a
method, streaming as iterators, pipelining, error codes as exceptions, TCP with a token,
and the example script. Reference numbers come from ../shared/models/README.md. TAP output.

usage: test_client_python.py QLORAD SHARED_DIR CLIENT_DIR"""

import os
import socket
import struct
import subprocess
import sys
import tempfile

import msgpack

import tap
from tap import case
from qlorad_fixture import Daemon

QLORAD, SHARED, CLIENT_DIR = sys.argv[1:4]
sys.path.insert(0, CLIENT_DIR)
from qlora_client import Client, QloraConnectionError, QloraError, Stream  # noqa: E402

DATA = os.path.join(SHARED, 'data')
TINY = dict(steps=6, batch_size=2, seq_len=64, warmup=1, eval_every=3, rank=4)

daemon = Daemon(QLORAD, SHARED, tcp=True)
c = Client(socket=daemon.socket, timeout=300)
with open(os.path.join(DATA, 'shakespeare_train.txt')) as f:
    train = f.read(20000)
with open(os.path.join(DATA, 'shakespeare_valid.txt')) as f:
    valid = f.read(4000)


def expect_error(code, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except QloraError as e:
        assert e.code == code, 'expected %s, got %s: %s' % (code, e.code, e.message)
        assert e.message, 'an error names what is at fault'
        return e
    raise AssertionError('expected a %s error' % code)


@case('ping and status')
def _():
    assert isinstance(c.ping()['version'], str)
    s = c.status()
    assert s['model']['name'] == 'stories260K' and s['quant']['format'] == 'nf4', s


@case('tokenize: the reference token ids')
def _():
    assert c.tokenize('hello world') == [1, 281, 306, 414, 263, 304, 341]
    assert c.tokenize('Once upon a time, there was a little girl named Lily.') == [
        1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426]


@case('eval on token lists: the reference nf4 perplexity of stories260K')
def _():
    with open(os.path.join(DATA, 'tinystories_valid.txt')) as f:
        paras = [p.strip() for p in f.read().split('\n\n') if len(p.strip()) > 300][:16]
    seqs = [c.tokenize(p)[:128] for p in paras]
    assert seqs[0][:8] == [1, 272, 420, 287, 351, 328, 353, 432], seqs[0][:8]
    r = c.eval(tokens=seqs)
    assert r['n_predicted'] == 2032, r
    assert abs(r['nll_sum'] - 5384.8466) < 5384.8466 * 2e-4, r
    assert abs(r['ppl'] - 14.15436) < 14.15436 * 2e-4, r
    assert abs(c.eval(tokens=seqs, adapter=None)['nll_sum'] - r['nll_sum']) < 1e-6


@case('generate: the streamed events add up to the final result')
def _():
    r = c.generate('Once upon a time', max_tokens=20, temperature=0)
    s = c.generate('Once upon a time', max_tokens=20, temperature=0, stream=True)
    events = list(s)
    assert [e['token'] for e in events] == s.result['tokens'] == r['tokens'], (events, s.result, r)
    assert ''.join(e['text'] for e in events) == s.result['text'] == r['text']


@case('pipelining: replies matched by id whatever order they are awaited in')
def _():
    a = c.send('tokenize', {'text': 'hello world'})
    b = c.send('generate', {'prompt': 'Once', 'max_tokens': 12, 'stream': True})
    d = c.send('ping')
    pong = c.wait(d)
    assert 'uptime_s' in pong, pong
    tokens = c.wait(a)
    assert tokens['tokens'] == [1, 281, 306, 414, 263, 304, 341], tokens
    s = Stream(c, b)
    events = list(s)
    assert len(events) == len(s.result['tokens']) > 0, (events, s.result)


job_id = None


@case('submit and watch: progress, eval and state events, then the record; an adapter results')
def _():
    global job_id
    job = c.submit('py', {'text': train}, eval_data={'text': valid}, **TINY)
    job_id = job['job_id']
    assert job['state'] in ('queued', 'running'), job
    w = c.watch(job_id)
    events = list(w)
    kinds = {e['type'] for e in events}
    assert {'progress', 'eval', 'state'} <= kinds <= {'progress', 'eval', 'checkpoint', 'state'}, kinds
    steps = [e['step'] for e in events if e['type'] == 'progress']
    assert steps == sorted(steps) and steps[-1] == 6, steps
    assert w.result['state'] == 'succeeded' and w.result['step'] == 6, w.result
    assert c.job(job_id)['state'] == 'succeeded'
    assert [j['job_id'] for j in c.jobs(state='succeeded')] == [job_id]
    a = c.adapter('py')
    assert a['version'] == 1 and a['rank'] == 4 and a['job_id'] == job_id, a
    assert a['metrics']['ppl_adapter'] > 0 and a['metrics']['ppl_base'] > 0, a
    assert [x['name'] for x in c.adapters()] == ['py']


@case('adapters in inference; activate; export and import round trip')
def _():
    base = c.eval(text=valid)
    tuned = c.eval(text=valid, adapter='py')
    assert tuned['nll_sum'] != base['nll_sum'], (base, tuned)
    assert c.activate('py') == {'active': 'py', 'version': 1}
    assert abs(c.eval(text=valid)['nll_sum'] - tuned['nll_sum']) < 1e-6, 'the active adapter is the default'
    assert c.activate(None)['active'] is None
    files = c.export_adapter('py', 1)
    assert isinstance(files['adapter_config.json'], str), type(files['adapter_config.json'])
    assert isinstance(files['adapter_model.safetensors'], bytes)
    rec = c.import_adapter('py2', files)
    assert rec['name'] == 'py2' and rec['rank'] == 4, rec
    assert abs(c.eval(text=valid, adapter='py2')['nll_sum'] - tuned['nll_sum']) < 1e-3
    assert c.delete_adapter('py2') == 1
    expect_error('not_found', c.adapter, 'py2')


@case('cancel a queued job')
def _():
    long = dict(TINY, steps=100000)
    first = c.submit('long', {'text': train}, **long)['job_id']
    second = c.submit('long', {'text': train}, **long)['job_id']
    assert c.cancel(second)['state'] == 'cancelled'
    c.cancel(first)
    assert c.watch(first).wait()['state'] == 'cancelled'


@case('errors arrive as QloraError with the protocol code')
def _():
    expect_error('not_found', c.job, 999999)
    expect_error('unknown_op', c.call, 'no.such.op')
    expect_error('bad_request', c.call, 'job.get')
    expect_error('bad_request', c.call, 'job.get', job_id='one')
    expect_error('invalid_argument', c.eval, tokens=[[1]])
    expect_error('invalid_argument', c.submit, 'x', {'text': train}, rank=0)
    expect_error('bad_request', c.submit, 'x', {'text': train}, no_such_hyper=1)
    assert c.ping()['version'], 'the connection still serves after errors'


@case('a bad frame closes the connection: a pending wait raises QloraConnectionError naming bad_frame')
def _():
    k = Client(socket=daemon.socket)
    ping = msgpack.packb({'id': 1, 'op': 'ping'})
    # 0xc1 is never valid msgpack; the ping behind it in the same write is never answered.
    k._sock.sendall(struct.pack('>I', 3) + b'\xc1\xc1\xc1' + struct.pack('>I', len(ping)) + ping)
    try:
        k.wait(1)
        raise AssertionError('the daemon answered on a connection that sent garbage')
    except QloraConnectionError as e:
        assert 'bad_frame' in str(e), e
    k.close()


@case('TCP: the token authenticates; a wrong one is unauthorized; no daemon cannot connect')
def _():
    with Client(host=daemon.host, token=daemon.token) as t:
        assert 'version' in t.ping()
    expect_error('unauthorized', Client, host=daemon.host, token='x' * 20)
    host, port = daemon.host.rsplit(':', 1)
    with socket.create_connection((host, int(port))) as raw:  # ping before auth
        body = msgpack.packb({'id': 7, 'op': 'ping'})
        raw.sendall(struct.pack('>I', len(body)) + body)
        n = raw.recv(4, socket.MSG_WAITALL)
        reply = msgpack.unpackb(raw.recv(struct.unpack('>I', n)[0], socket.MSG_WAITALL), raw=False)
    assert reply['ok'] is False and reply['error']['code'] == 'unauthorized', reply
    try:
        Client(socket='/nonexistent/qlorad.sock')
        raise AssertionError('connected to nothing')
    except QloraConnectionError as e:
        assert '/nonexistent/qlorad.sock' in str(e), e


@case('example_submit.py trains a job and prints its progress')
def _():
    with tempfile.NamedTemporaryFile('w', suffix='.txt') as f:
        f.write(train)
        f.flush()
        p = subprocess.run([sys.executable, os.path.join(CLIENT_DIR, 'example_submit.py'), '--socket',
                            daemon.socket, '--adapter', 'example', '--data', f.name, '--steps', '5',
                            '--batch', '2', '--seq-len', '64'], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith('job ') and any(l.startswith('step 5/5 loss ') for l in lines), lines
    assert lines[-1].endswith('succeeded: adapter example@1'), lines


c.close()


@case('the daemon stops cleanly on SIGTERM')
def _():
    assert daemon.stop() == 0, daemon.log_text()[-2000:]


daemon.cleanup()
tap.report()
