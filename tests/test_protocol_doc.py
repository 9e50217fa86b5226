#!/usr/bin/python3
"""docs/protocol.md against the lists the daemon declares in daemon/protocol.h: the error
codes, the ops and their arguments, the argument types op.list names, each in the same
order. TAP output.

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
    m = re.search(r'^#define %s\([\w, ]+\)((?:.*\\\n)*.*)$' % name, HEADER, re.M)
    assert m, '%s is not in daemon/protocol.h' % name
    return m.group(1)


def arg_names(list_macro):
    """The argument names of an op's list (lists may include other lists)."""
    names = []
    for item in re.finditer(r'A\(OP, \w+, "(\w+)"|(\w+_ARGS)\(A, OP\)', macro(list_macro)):
        names += [item.group(1)] if item.group(1) else arg_names(item.group(2))
    return names


def table(heading, column=0):
    """A column of the markdown table whose header row starts with heading."""
    lines = DOC.splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith(heading)), None)
    assert start is not None, 'no table "%s" in docs/protocol.md' % heading
    out = []
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        out.append(line.split('|')[1 + column].strip())
    return out


OPS = re.findall(r'X\(\w+, "([\w.]+)", \w+, \w+, (\w+)\)', macro('QD_OPS'))


@case('the error codes of docs/protocol.md are QD_ERRORS, in its order')
def _():
    declared = re.findall(r'XX\(\w+, "(\w+)"\)', macro('QD_ERRORS'))
    assert len(declared) >= 9, declared
    documented = [c.strip('`') for c in table('| code | when |')]
    assert documented == declared, 'docs: %s\ndaemon/protocol.h: %s' % (documented, declared)


@case('the ops of docs/protocol.md are QD_OPS, in its order')
def _():
    assert len(OPS) >= 23, OPS
    documented = [c.strip('`') for c in table('| op | args | result |')]
    assert documented == [name for name, _ in OPS], 'docs: %s\ndaemon/protocol.h: %s' % (documented, OPS)


@case('each op\'s arguments in docs/protocol.md are those of its list, in its order')
def _():
    args = dict(zip([c.strip('`') for c in table('| op | args | result |')], table('| op | args | result |', 1)))
    for name, list_macro in OPS:
        assert name in args, '%s is not in the ops table of docs/protocol.md' % name
        # what is in parentheses tells defaults and values, not arguments
        documented = re.findall(r'`(\w+)[^`]*`', re.sub(r'\([^)]*\)', '', args[name]))
        assert documented == arg_names(list_macro), '%s: docs %s, %s %s' % (name, documented, list_macro,
                                                                             arg_names(list_macro))


@case('the argument types that op.list names are ARG_TYPES')
def _():
    row = dict(zip([c.strip('`') for c in table('| op | args | result |')], table('| op | args | result |', 2)))
    documented = re.findall(r'`(\w+)`', row['op.list'].split('`types` are some of')[1])
    declared = re.findall(r'T\(\w+, "(\w+)"', macro('ARG_TYPES'))
    assert documented == declared, 'docs %s, ARG_TYPES %s' % (documented, declared)


report()
