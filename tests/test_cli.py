#!/usr/bin/python3
"""The qlora CLI against a real qlorad (stories260K, nf4): every command in human and
--json modes, the live watch output, plot's SVG, and the exit statuses (1 server error,
2 usage, 3 no daemon). TAP output.

usage: test_cli.py QLORA QLORAD QLORA_TOOL SHARED_DIR"""

import atexit
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import tap
from tap import case, read_st
from qlorad_fixture import Daemon

QLORA, QLORAD, TOOL, SHARED = sys.argv[1:5]
DATA = os.path.join(SHARED, 'data')
TINY_JOB = ['--steps', '8', '--batch', '2', '--seq-len', '64', '--eval-every', '4', '--rank', '4',
            '--warmup', '2']

daemon = Daemon(QLORAD, SHARED, tcp=True)
tmp = tempfile.mkdtemp(prefix='qlora-cli-test-')
atexit.register(shutil.rmtree, tmp, ignore_errors=True)
train = os.path.join(tmp, 'train.txt')
valid = os.path.join(tmp, 'valid.txt')
with open(os.path.join(DATA, 'shakespeare_train.txt')) as f:
    open(train, 'w').write(f.read(20000))
with open(os.path.join(DATA, 'shakespeare_valid.txt')) as f:
    open(valid, 'w').write(f.read(4000))


def qlora(*args, status=0):
    """stdout of `qlora --socket S ARGS`, checking the exit status."""
    rc, out, err = tap.run(QLORA, '--socket', daemon.socket, *args)
    assert rc == status, 'qlora %s: exit %d, expected %d\nstdout: %s\nstderr: %s' % (
        ' '.join(args), rc, status, out[-2000:], err[-2000:])
    return out if status == 0 else err


def qjson(*args):
    return json.loads(qlora('--json', *args))


def qlines(*args):
    return [json.loads(line) for line in qlora('--json', *args).splitlines()]


@case('ping: version and uptime, human and JSON')
def _():
    j = qjson('ping')
    assert isinstance(j['version'], str) and j['uptime_s'] >= 0, j
    assert re.fullmatch(r'qlorad %s, up \d+ s\n' % re.escape(j['version']), qlora('ping')), qlora('ping')


@case('status: model, quant format and bits/param, memory, jobs, adapters')
def _():
    j = qjson('status')
    assert j['model']['name'] == 'stories260K' and j['model']['vocab_size'] == 512, j['model']
    assert j['quant']['format'] == 'nf4' and 4 < j['quant']['bits_per_param'] < 4.5, j['quant']
    assert set(j['jobs']) == {'queued', 'running', 'succeeded', 'failed', 'cancelled'}, j['jobs']
    out = qlora('status')
    assert 'stories260K' in out and 'nf4' in out and '%.3f bits/param' % j['quant']['bits_per_param'] in out, out
    assert 'active: none' in out, out


@case('global --json works after the command too')
def _():
    rc, out, err = tap.run(QLORA, '--socket', daemon.socket, 'ping', '--json')
    assert rc == 0 and 'uptime_s' in json.loads(out), out + err


@case('eval: the same perplexity as qlora-tool eval on the same text, human and JSON')
def _():
    j = qjson('eval', valid)
    assert abs(j['ppl'] - math.exp(j['nll_sum'] / j['n_predicted'])) < 1e-6 * j['ppl'], j
    rc, out, err = tap.run(TOOL, 'eval', '--model', os.path.join(SHARED, 'models', 'stories260K'),
                           '--quant', 'nf4', '--text', valid, '--json')
    assert rc == 0, err
    ref = json.loads(out)
    assert ref['n_predicted'] == j['n_predicted'], (ref, j)
    assert abs(ref['nll_sum'] - j['nll_sum']) < 1e-4 * abs(ref['nll_sum']), (ref, j)
    assert qlora('eval', valid).startswith('ppl %.4f ' % j['ppl']), qlora('eval', valid)


@case('generate: greedy text, identical in human, JSON and streamed forms')
def _():
    j = qjson('generate', '-n', '24', 'Once upon a time')
    assert isinstance(j['text'], str) and j['text'] and 0 < len(j['tokens']) <= 24, j
    assert qlora('generate', '-n', '24', 'Once upon a time') == j['text'] + '\n'
    assert qlora('generate', '--stream', '-n', '24', 'Once upon a time') == j['text'] + '\n'
    lines = qlines('generate', '--stream', '-n', '24', 'Once upon a time')
    events, final = lines[:-1], lines[-1]
    assert ''.join(e['text'] for e in events) == j['text'], lines
    assert [e['token'] for e in events] == final['tokens'] == j['tokens'], lines


job_events = []


@case('submit --watch (not a terminal): one plain line per event, then the outcome')
def _():
    out = qlora('submit', '--adapter', 'sh', '--data', train, '--eval-data', valid, *TINY_JOB, '--watch')
    lines = out.splitlines()
    assert re.fullmatch(r'job 1 (queued|running): adapter \'sh\', lora', lines[0]), lines[0]
    steps = [l for l in lines if l.startswith('step ')]
    assert steps and re.fullmatch(r'step 8/8 loss \d+\.\d{4} eval_loss \S+ tokens/s \d+ eta \S+', steps[-1]), out
    assert any(l.startswith('eval at step 4: eval_loss ') for l in lines), out
    assert re.fullmatch(r'job 1 succeeded: loss \d+\.\d+, eval loss \d+\.\d+, adapter sh@1', lines[-1]), out


@case('submit --json, then watch --json: events as JSON lines, the job record last')
def _():
    sub = qlines('submit', '--adapter', 'sh', '--data', train, '--eval-data', valid, *TINY_JOB)
    assert len(sub) == 1 and sub[0]['job_id'] == 2 and sub[0]['state'] in ('queued', 'running'), sub
    lines = qlines('watch', '2')
    job_events.extend(lines[:-1])
    rec = lines[-1]
    assert rec['job_id'] == 2 and rec['state'] == 'succeeded' and rec['adapter_version'] == 2, rec
    assert {e['type'] for e in job_events} <= {'progress', 'eval', 'checkpoint', 'state'}, job_events
    steps = [e['step'] for e in job_events if e['type'] == 'progress']
    assert steps and steps == sorted(steps) and steps[-1] == 8, steps
    assert any(e['type'] == 'eval' for e in job_events), job_events


@case('watch of a finished job: just the outcome')
def _():
    assert qlora('watch', '1').splitlines()[-1].startswith('job 1 succeeded: ')


@case('jobs: a table, and JSON; --state filters')
def _():
    out = qlora('jobs').splitlines()
    assert out[0].split() == ['ID', 'STATE', 'ADAPTER', 'METHOD', 'STEP', 'LOSS', 'EVAL_LOSS', 'TOK/S',
                              'CREATED'], out[0]
    assert out[1].split()[:5] == ['1', 'succeeded', 'sh@1', 'lora', '8/8'], out
    j = qjson('jobs')
    assert [r['job_id'] for r in j['jobs']] == [1, 2], j
    assert qjson('jobs', '--state', 'failed')['jobs'] == []
    assert qlora('jobs', '--state', 'failed') == 'no jobs\n'


@case('job ID: the record as fields, and JSON')
def _():
    j = qjson('job', '1')
    assert j['state'] == 'succeeded' and j['step'] == j['total_steps'] == 8 and j['hyper']['rank'] == 4, j
    out = qlora('job', '1')
    assert re.search(r'^state: +succeeded$', out, re.M) and re.search(r'^  rank: +4$', out, re.M), out
    assert re.search(r'^created_at: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$', out, re.M), out


@case('plot: an SVG of every step and eval the daemon kept, agreeing with the watched events')
def _():
    svg = os.path.join(tmp, 'job2.svg')
    j = qjson('plot', '2', '-o', svg)
    rec = qjson('job', '2')
    assert j == {'file': svg, 'job_id': 2, 'points': rec['total_steps']}, (j, rec['total_steps'])
    root = ET.parse(svg).getroot()
    ns = '{http://www.w3.org/2000/svg}'
    lines = root.findall(ns + 'polyline')
    assert len(lines) == 2, 'one curve for the loss and one for eval loss'
    loss_pts = [tuple(map(float, p.split(','))) for p in lines[0].get('points').split()]
    eval_pts = [tuple(map(float, p.split(','))) for p in lines[1].get('points').split()]
    assert len(loss_pts) == rec['total_steps'], loss_pts
    assert len(eval_pts) == len({e['step'] for e in job_events if e['type'] == 'eval'}), (eval_pts, job_events)
    xs = [x for x, _ in loss_pts]
    assert xs == sorted(xs) and xs[0] < xs[-1], xs
    # Screen y grows downwards: the order of the points' heights is the order of the losses
    # the watch saw at those steps.
    seen = {e['step']: e['loss'] for e in job_events if e['type'] == 'progress'}
    ys = {s: y for s, (_, y) in zip(range(1, len(loss_pts) + 1), loss_pts)}
    for a in seen:
        for b in seen:
            if seen[a] < seen[b] - 1e-6:
                assert ys[a] > ys[b], (seen, ys)
    assert qlora('plot', '1', '-o', os.path.join(tmp, 'job1.svg')).startswith('wrote ')


@case("plot of a job from another client, never watched: the daemon's history, the losses of its events")
def _():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'clients', 'python'))
    from qlora_client import Client
    with Client(socket=daemon.socket, timeout=60) as c:
        h = c.history(2)
    assert h['job_id'] == 2 and h['max_points'] >= 8 and h['step'] == list(range(1, 9)), h
    seen = {e['step']: e['loss'] for e in job_events if e['type'] == 'progress'}
    for step, loss in zip(h['step'], h['loss']):
        if step in seen:
            assert abs(loss - seen[step]) <= 1e-6 * abs(seen[step]), (step, loss, seen[step])
    evals = {e['step']: e['eval_loss'] for e in job_events if e['type'] == 'eval'}
    assert h['eval_step'] == sorted(evals), (h, evals)
    p = subprocess.run([QLORA, '--socket', daemon.socket, 'plot', '2', '-o', os.path.join(tmp, 'x.svg')],
                       capture_output=True, env=dict(os.environ, HOME=os.path.join(tmp, 'nohome')), text=True)
    assert p.returncode == 0 and p.stdout.startswith('wrote '), p


@case("chat: MESSAGE gets the reply the daemon's chat op gives; lines of stdin are turns of one conversation")
def _():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'clients', 'python'))
    from qlora_client import Client
    msgs = [{'role': 'system', 'content': 'Tell stories.'}, {'role': 'user', 'content': 'Once upon a time'}]
    with Client(socket=daemon.socket, timeout=60) as c:
        want = c.chat(msgs, template='chatml', max_tokens=8)
        out = qlora('chat', '--template', 'chatml', '--system', 'Tell stories.', '-n', '8', 'Once upon a time')
        assert out == want['text'] + '\n', (out, want)
        first = c.chat(msgs[1:], template='chatml', max_tokens=6)
        second = c.chat(msgs[1:] + [{'role': 'assistant', 'content': first['text']},
                                    {'role': 'user', 'content': 'The end.'}], template='chatml', max_tokens=6)
    p = subprocess.run([QLORA, '--socket', daemon.socket, '--json', 'chat', '--template', 'chatml', '-n', '6'],
                       input='Once upon a time\n\nThe end.\n', capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    results = [json.loads(line) for line in p.stdout.splitlines() if 'tokens_per_s' in line]
    assert [r['tokens'] for r in results] == [first['tokens'], second['tokens']], (results, first, second)


@case('adapters: a table, and JSON')
def _():
    j = qjson('adapters')['adapters']
    assert [(a['name'], a['version']) for a in j] == [('sh', 1), ('sh', 2)], j
    assert all(a['rank'] == 4 and a['metrics']['ppl_adapter'] > 0 for a in j), j
    out = qlora('adapters').splitlines()
    assert out[0].split()[:4] == ['NAME', 'VERSION', 'RANK', 'ALPHA'], out
    assert [l.split()[:3] for l in out[1:]] == [['sh', '1', '4'], ['sh', '2', '4']], out


@case('adapter NAME[@V]: the latest or the named version')
def _():
    assert qjson('adapter', 'sh')['version'] == 2
    assert qjson('adapter', 'sh@1')['version'] == 1
    assert re.search(r'^version: +1$', qlora('adapter', 'sh@1'), re.M), qlora('adapter', 'sh@1')


@case('eval and generate with an adapter: different from the base')
def _():
    base = qjson('eval', valid)['ppl']
    tuned = qjson('eval', '--adapter', 'sh', valid)['ppl']
    assert tuned != base, (base, tuned)


@case('activate NAME / --none, human and JSON')
def _():
    assert qjson('activate', 'sh@1') == {'active': 'sh', 'version': 1}
    assert qjson('status')['adapters']['active'] is not None
    assert qlora('activate', '--none') == 'active: none (the base model)\n'
    assert qjson('activate', '--none')['active'] is None
    assert qlora('activate', 'sh') == 'active: sh@2\n'
    qlora('activate', '--none')


export_dir = os.path.join(tmp, 'peft')


@case('export NAME DIR: a PEFT directory with the adapter\'s rank')
def _():
    out = qlora('export', 'sh', export_dir)
    assert 'adapter_config.json' in out and 'adapter_model.safetensors' in out, out
    cfg = json.load(open(os.path.join(export_dir, 'adapter_config.json')))
    assert cfg['r'] == 4 and cfg.get('peft_type', 'LORA') == 'LORA', cfg
    header, _ = read_st(os.path.join(export_dir, 'adapter_model.safetensors'))
    names = [k for k in header if k != '__metadata__']
    assert names and all('lora_A' in k or 'lora_B' in k for k in names), names
    j = qjson('export', 'sh@1', os.path.join(tmp, 'peft1'))
    assert set(j['files']) == {'adapter_config.json', 'adapter_model.safetensors'}, j.keys()


@case('import NAME DIR: the same weights under a new name evaluate the same')
def _():
    j = qjson('import', 'copy', export_dir)
    assert j['name'] == 'copy' and j['version'] == 1 and j['rank'] == 4, j
    a = qjson('eval', '--adapter', 'sh', valid)
    b = qjson('eval', '--adapter', 'copy', valid)
    assert abs(a['nll_sum'] - b['nll_sum']) < 1e-3, (a, b)
    assert re.search(r'^name: +copy$', qlora('import', 'copy', export_dir), re.M)


@case('rm NAME[@V]: deletes, then the adapter is not found (exit 1)')
def _():
    assert qjson('rm', 'copy@2')['deleted'] == 1
    assert qlora('rm', 'copy') == 'deleted 1 adapter version(s)\n'
    err = qlora('adapter', 'copy', status=1)
    assert 'not_found' in err, err


@case('cancel: a long job ends cancelled, human and JSON')
def _():
    a = qjson('submit', '--adapter', 'long', '--data', train, '--steps', '100000', '--batch', '2',
              '--seq-len', '64', '--rslora', '--recompute')['job_id']
    hyper = qjson('job', str(a))['hyper']
    assert hyper['rslora'] is True and hyper['recompute'] is True and hyper['batch_size'] == 2, hyper
    b = qjson('submit', '--adapter', 'long', '--data', train, '--steps', '100000', '--batch', '2',
              '--seq-len', '64')['job_id']
    assert qjson('cancel', str(b))['state'] == 'cancelled'   # the queued one, at once
    assert re.fullmatch(r'job %d: (cancelled|running)\n' % a, qlora('cancel', str(a)))
    rc, out, err = tap.run(QLORA, '--socket', daemon.socket, 'watch', str(a))
    assert rc == 1 and 'cancelled' in err, (rc, out, err)


@case('submit --data uploads the files; upload, files, file-rm, job-rm')
def _():
    ids = {}
    for path in (train, valid):
        with open(path, 'rb') as f:
            ids[path] = 'file-' + hashlib.sha256(f.read()).hexdigest()
    rec = qjson('job', '1')
    assert rec['data']['file_id'] == ids[train] and rec['eval_data']['file_id'] == ids[valid], rec
    assert qjson('upload', train)['file_id'] == ids[train]
    assert re.fullmatch(r'%s \d+ bytes train.txt\n' % ids[train], qlora('upload', train))
    table = qlora('files')
    assert ids[train] in table and ids[valid] in table and 'train.txt' in table, table
    assert qlora('file-rm', ids[valid]) == 'deleted 1 file(s)\n'
    assert ids[valid] not in qlora('files')
    assert qlora('job-rm', '1') == 'deleted\n'
    assert 'not_found' in qlora('job', '1', status=1)
    assert 'not_found' in qlora('job-rm', '99999', status=1)


@case('exit 1 on server errors, with the code and message on stderr')
def _():
    assert 'not_found' in qlora('job', '99999', status=1)
    err = qlora('submit', '--adapter', 'x', '--data', train, '--rank', '0', status=1)
    assert 'invalid_argument' in err, err
    err = qlora('submit', '--adapter', 'bad name!', '--data', train, status=1)
    assert 'invalid_argument' in err or 'bad_request' in err, err


@case('exit 2 on bad usage, before connecting')
def _():
    for args in (['jobs', '--bogus'], ['job'], ['job', 'abc'], ['submit', '--adapter', 'x'],
                 ['generate'], ['activate'], ['activate', 'x', '--none'], ['nosuchcommand'],
                 ['adapter', 'x@y'], ['plot', '1'], ['generate', '-n', 'ten', 'hi']):
        rc, out, err = tap.run(QLORA, '--socket', '/nonexistent/qlorad.sock', *args)
        assert rc == 2 and err.startswith('qlora'), (args, rc, err)
    rc, out, err = tap.run(QLORA)
    assert rc == 2 and 'usage' in err, err


@case('exit 3 when no daemon listens, naming the socket or address')
def _():
    rc, out, err = tap.run(QLORA, '--socket', '/nonexistent/qlorad.sock', 'ping')
    assert rc == 3 and '/nonexistent/qlorad.sock' in err, (rc, err)
    rc, out, err = tap.run(QLORA, '--host', '127.0.0.1:1', '--token-file', daemon.token_file, 'ping')
    assert rc == 3 and '127.0.0.1:1' in err, (rc, err)


@case('TCP with the token file works; a wrong token cannot connect (exit 3)')
def _():
    rc, out, err = tap.run(QLORA, '--host', daemon.host, '--token-file', daemon.token_file, '--json', 'ping')
    assert rc == 0 and 'version' in json.loads(out), (rc, out, err)
    bad = os.path.join(tmp, 'bad-token')
    open(bad, 'w').write('wrong\n')
    rc, out, err = tap.run(QLORA, '--host', daemon.host, '--token-file', bad, 'ping')
    assert rc == 3 and 'unauthorized' in err, (rc, err)


@case('--help on every command: exit 0 and its usage')
def _():
    rc, out, err = tap.run(QLORA, '--help')
    assert rc == 0
    names = [l.split()[0] for l in out.splitlines() if l.startswith('  ')]
    assert len(names) == 21, names
    for name in names:
        for argv in ([name, '--help'], ['help', name]):
            rc, out, err = tap.run(QLORA, *argv)
            assert rc == 0 and out.startswith('usage: qlora [global options] %s' % name), (argv, out, err)


@case('the daemon stops cleanly on SIGTERM')
def _():
    assert daemon.stop() == 0, daemon.log_text()[-2000:]


daemon.cleanup()
tap.report()
