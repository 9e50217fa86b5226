#!/usr/bin/python3
"""docs/protocol.md against the lists the daemon declares in daemon/protocol.h: the error
codes, in the same order. TAP output.

usage: test_protocol_doc.py SOURCE_ROOT"""

import os
import re
import sys

from tap import case, report

ROOT = sys.argv[1]
HEADER = open(os.path.join(ROOT, 'daemon', 'protocol.h')).read()
DOC = open(os.path.join(ROOT, 'docs', 'protocol.md')).read()


def macro(name):
    """The body of #define NAME(...) in daemon/protocol.h, its lines joined."""
    m = re.search(r'^#define %s\(\w+\)((?:.*\\\n)*.*)$' % name, HEADER, re.M)
    assert m, '%s is not in daemon/protocol.h' % name
    return m.group(1)


def table(heading):
    """The first column of the markdown table whose header row starts with heading."""
    lines = DOC.splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith(heading)), None)
    assert start is not None, 'no table "%s" in docs/protocol.md' % heading
    out = []
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        out.append(line.split('|')[1].strip().strip('`'))
    return out


@case('the error codes of docs/protocol.md are QD_ERRORS, in its order')
def _():
    declared = re.findall(r'XX\(\w+, "(\w+)"\)', macro('QD_ERRORS'))
    assert len(declared) >= 9, declared
    documented = table('| code | when |')
    assert documented == declared, 'docs: %s\ndaemon/protocol.h: %s' % (documented, declared)


report()
