#!/usr/bin/python3
"""The tokenizer's load time and encode throughput beside Hugging Face tokenizers' (its Rust
library through the npm binding in .deps/node), both single-threaded, on the same files
and text in the same run: a markdown table for docs/performance.md. Each figure is the
best of ROUNDS rounds; the two run one after the other, never at once.

usage: bench_tokenizer.py BUILD_DIR SHARED_DIR [ROUNDS]"""

import json
import os
import subprocess
import sys

BUILD, SHARED = sys.argv[1], sys.argv[2]
ROUNDS = sys.argv[3] if len(sys.argv) > 3 else '5'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = os.path.join(ROOT, '.deps', 'node', 'node_modules')
TEXT = os.path.join(SHARED, 'data', 'tinystories_valid.txt')
FILES = [('mistral-32k', 32000), ('llama3', 128256), ('qwen3', 151669)]


def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        sys.exit('%s: %s' % (cmd[0], p.stderr))
    return json.loads(p.stdout)


env = dict(os.environ, RAYON_NUM_THREADS='1', TOKENIZERS_PARALLELISM='false')
print('### %s (%d bytes), one thread, best of %s' % (os.path.basename(TEXT), os.path.getsize(TEXT), ROUNDS))
print()
print('| tokenizer.json | size | load: ours | HF | ratio | whole text MB/s: ours | HF | ratio | '
      'line by line MB/s: ours | HF | ratio | same id counts |')
print('|---|---|---|---|---|---|---|---|---|---|---|---|')
for name, vocab in FILES:
    path = os.path.join(SHARED, 'tokenizers', name, 'tokenizer.json')
    ours = run([os.path.join(BUILD, 'bench', 'bench_tokenizer'), path, str(vocab), TEXT, ROUNDS])
    hf = run(['node', os.path.join(ROOT, 'bench', 'hf_tokenizer.js'), MODULES, path, TEXT, ROUNDS], env)
    mb = lambda r, k: r['bytes'] / r[k] / 1e6  # noqa: E731
    same = ours['ids'] == hf['ids'] and ours['line_ids'] == hf['line_ids']
    print('| %s | %.1f MB | %.0f ms | %.0f ms | %.2fx | %.2f | %.2f | %.2fx | %.2f | %.2f | %.2fx | %s |' % (
        name, os.path.getsize(path) / 1e6, ours['load_s'] * 1e3, hf['load_s'] * 1e3,
        hf['load_s'] / ours['load_s'], mb(ours, 'encode_s'), mb(hf, 'encode_s'),
        mb(ours, 'encode_s') / mb(hf, 'encode_s'), mb(ours, 'lines_s'), mb(hf, 'lines_s'),
        mb(ours, 'lines_s') / mb(hf, 'lines_s'),
        'yes' if same else 'NO (%s vs %s)' % (ours, hf)))
