"""tap.py: what the Python tests share: named cases collected into TAP output, running a
command, and reading and writing safetensors files."""

import json
import os
import struct
import subprocess
import sys
import traceback

_results = []


def case(name):
    """Decorator: runs the function now; a failed assert fails the case with its message.
    With TAP_ONLY=TEXT in the environment, only the cases whose name contains TEXT run
    (while debugging one; the suite never sets it)."""
    def wrap(fn):
        only = os.environ.get('TAP_ONLY')
        if only and only not in name:
            return fn
        try:
            fn()
            _results.append((True, name, ''))
        except AssertionError as e:
            where = traceback.extract_tb(e.__traceback__)[-1]
            _results.append((False, name, '%s (at %s:%d)' % (e, os.path.basename(where.filename), where.lineno)))
        except Exception as e:  # noqa: BLE001 (a crash fails the case, not the run)
            frames = traceback.extract_tb(e.__traceback__)
            where = ', '.join('%s:%d' % (os.path.basename(f.filename), f.lineno) for f in frames[1:])
            _results.append((False, name, '%s: %s (at %s)' % (type(e).__name__, e, where)))
        return fn
    return wrap


def report():
    """Prints the TAP lines and exits with the verdict."""
    for i, (ok, name, why) in enumerate(_results, 1):
        print('%sok %d - %s' % ('' if ok else 'not ', i, name))
        for line in why.splitlines():
            print('# ' + line)
    print('1..%d' % len(_results))
    sys.exit(0 if all(ok for ok, _, _ in _results) else 1)


def run(*argv, stdin=None, timeout=600):
    """(exit status, stdout, stderr) of a command."""
    p = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(errors='replace'), p.stderr.decode(errors='replace')


def read_st(path):
    """A safetensors file as (header dict, data bytes)."""
    with open(path, 'rb') as f:
        data = f.read()
    n = struct.unpack('<Q', data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_st(path, header, body):
    h = json.dumps(header).encode()
    h += b' ' * (-len(h) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + body)
