#!/usr/bin/python3
"""recovery.py: how much of the quantization loss a LoRA adapter wins back.

Drives `qlora-tool eval` and `qlora-tool train` on one model: the perplexity of f32, of
each quantized format, and of each format plus an adapter trained with `--method lora`
(next-token loss on the training text) and `--method recovery` (KL to the f32 model on
the same text); gap recovered = (ppl_q - ppl_q+lora) / (ppl_q - ppl_f32). Then a domain
fine-tune: the nf4 perplexity on Shakespeare before and after a LoRA on its training text.
Every row is evaluated on the same text. Prints markdown tables (docs/performance.md).

usage: bench/recovery.py [--tool build/tool/qlora-tool] [--model DIR] [--steps 300]
       [--batch 4] [--seq-len 256] [--eval-chars 100000] [--formats nf4,fp4,...] [--no-shakespeare]
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, '..', 'shared')
FORMATS = ['nf4', 'fp4', 'int8', 'int4', 'bitnet1', 'ternary']


def run(cmd):
    print('$ ' + ' '.join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return out


def evaluate(args, fmt, text, adapter=None):
    cmd = [args.tool, 'eval', '--model', args.model, '--quant', fmt, '--text', text, '--json']
    if adapter:
        cmd += ['--adapter', adapter]
    return json.loads(run(cmd))['ppl']


def train(args, fmt, method, data, out):
    t0 = time.time()
    log = run([args.tool, 'train', '--model', args.model, '--quant', fmt, '--data', data,
               '--method', method, '--rank', '16', '--steps', str(args.steps), '--batch',
               str(args.batch), '--seq-len', str(args.seq_len), '--warmup', str(min(10, args.steps)), '--seed', '1', '--init', args.init,
               '--checkpoint-every', '0', '--out', out])
    last = [l for l in log.splitlines() if ' loss ' in l and 'eval' not in l][-1]
    print('  %s %s: %s (%.0f s)' % (fmt, method, last, time.time() - t0), file=sys.stderr, flush=True)


def head_chars(src, n, dst):
    """The first n characters of src (all of it when n <= 0) into dst."""
    with open(src, encoding='utf-8') as f:
        text = f.read()
    with open(dst, 'w', encoding='utf-8') as f:
        f.write(text[:n] if n > 0 else text)
    return len(text[:n] if n > 0 else text)


def gap(ppl_q, ppl_a, ppl_f):
    return (ppl_q - ppl_a) / (ppl_q - ppl_f) if ppl_q != ppl_f else math.nan


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--tool', default=os.path.join(ROOT, 'build', 'tool', 'qlora-tool'))
    ap.add_argument('--model', default=os.path.join(SHARED, 'models', 'tinystories6M'))
    ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--seq-len', type=int, default=256)
    ap.add_argument('--init', default='default')
    ap.add_argument('--eval-chars', type=int, default=100000)
    ap.add_argument('--formats', default=','.join(FORMATS))
    ap.add_argument('--no-shakespeare', action='store_true')
    args = ap.parse_args()
    data = os.path.join(SHARED, 'data')
    tmp = tempfile.mkdtemp(prefix='qlora-recovery-')
    try:
        valid = os.path.join(tmp, 'valid.txt')
        nchars = head_chars(os.path.join(data, 'tinystories_valid.txt'), args.eval_chars, valid)
        train_text = os.path.join(data, 'tinystories_train.txt')
        print('## Accuracy recovery (bench/recovery.py, %s)\n' % time.strftime('%Y-%m-%d'))
        print('%s; eval: the first %d characters of tinystories_valid.txt; adapters r=16, alpha 32, '
              'all-linear, init %s, %d steps of batch %d x seq %d on tinystories_train.txt, default lr, '
              'seed 1\n' % (os.path.basename(os.path.normpath(args.model)), nchars, args.init,
                            args.steps, args.batch, args.seq_len))
        ppl_f = evaluate(args, 'f32', valid)
        print('| format | ppl | + lora | recovered | + recovery | recovered |')
        print('|---|---|---|---|---|---|')
        print('| f32 | %.4f | | | | |' % ppl_f, flush=True)
        for fmt in filter(None, args.formats.split(',')):
            ppl_q = evaluate(args, fmt, valid)
            row = [ppl_q]
            for method in ('lora', 'recovery'):
                adapter = os.path.join(tmp, '%s-%s.safetensors' % (fmt, method))
                train(args, fmt, method, train_text, adapter)
                ppl_a = evaluate(args, fmt, valid, adapter)
                row += [ppl_a, gap(ppl_q, ppl_a, ppl_f)]
                os.remove(adapter)
            print('| %s | %.4f | %.4f | %.0f%% | %.4f | %.0f%% |' %
                  (fmt, row[0], row[1], 100 * row[2], row[3], 100 * row[4]), flush=True)
        if not args.no_shakespeare:
            sv = os.path.join(data, 'shakespeare_valid.txt')
            adapter = os.path.join(tmp, 'shakespeare.safetensors')
            before = evaluate(args, 'nf4', sv)
            train(args, 'nf4', 'lora', os.path.join(data, 'shakespeare_train.txt'), adapter)
            after = evaluate(args, 'nf4', sv, adapter)
            print('\nShakespeare (all of shakespeare_valid.txt; LoRA as above on shakespeare_train.txt):\n')
            print('| model | ppl before | ppl after | ratio |')
            print('|---|---|---|---|')
            print('| nf4 | %.4f | %.4f | %.3fx |' % (before, after, after / before), flush=True)
    finally:
        shutil.rmtree(tmp)


if __name__ == '__main__':
    main()
