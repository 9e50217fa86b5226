#!/usr/bin/python3
"""Compare qlorad's quantizers (via the tool) with the PyTorch reference.

Usage: tests/test_bnb_reference.py path/to/qlora-tool

Output is TAP; the exit status is 1 if any check fails.

The tool contract exercised here:
  TOOL roundtrip --format F [--block B] [--no-double-quant] --rows R --cols C
      stdin: R*C little-endian float32, row-major; stdout: same size,
      dequantize(quantize(x)).  Errors: one stderr line, exit 2, no stdout.
  TOOL dynamic-map     256 lines "%.9g"
  TOOL codes nf4|fp4   16 lines "%.9g"
"""

import os
import platform

# The reference's dynamic map (torch.linspace) and float32 means (torch.sum)
# depend on the vector width torch dispatches to.  Pin AVX2 before torch is
# imported so the expected bits are the same on AVX-512 machines; see
# tests/ref/bnb_ref.py for the emulated algorithms.
if platform.machine() in ('x86_64', 'AMD64'):
    os.environ.setdefault('ATEN_CPU_CAPABILITY', 'avx2')

import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref'))
import bnb_ref as R  # noqa: E402

TIMEOUT = 600
F32 = torch.float32

# Shapes: tiny, short last block (200 = 3*64 + 8), many short blocks, square,
# and one large enough that double quant has 128 groups of 256 absmax values.
SHAPES_4BIT = [(7, 64), (3, 200), (17, 1000), (256, 256), (512, 2048)]
BLOCKS = [32, 64, 128, 4096]
SHAPES_SCALAR = [(7, 64), (3, 200), (17, 1000), (256, 256), (64, 2048)]


# ---------------------------------------------------------------------------
# Tool plumbing
# ---------------------------------------------------------------------------

class Fail(Exception):
    """A check failed; args are the diagnostic lines."""


def run_tool(args, data=b''):
    p = subprocess.run([TOOL] + [str(a) for a in args], input=data,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=TIMEOUT)
    return p.returncode, p.stdout, p.stderr


def to_bytes(x):
    return np.ascontiguousarray(x.numpy(), dtype='<f4').tobytes()


def tool_roundtrip(x, fmt, block=None, dq=True):
    rows, cols = x.shape
    args = ['roundtrip', '--format', fmt]
    if block is not None:
        args += ['--block', block]
    if not dq:
        args += ['--no-double-quant']
    args += ['--rows', rows, '--cols', cols]
    rc, out, err = run_tool(args, to_bytes(x))
    if rc != 0 or len(out) != rows * cols * 4:
        raise Fail('tool %s: exit %d, %d bytes out (expected %d), stderr: %s'
                   % (' '.join(map(str, args)), rc, len(out), rows * cols * 4,
                      err.decode(errors='replace').strip()[:300]))
    return torch.from_numpy(np.frombuffer(out, dtype='<f4').astype(np.float32)
                            .reshape(rows, cols))


def tool_values(args, n):
    rc, out, err = run_tool(args)
    lines = out.decode(errors='replace').split()
    if rc != 0 or len(lines) != n:
        raise Fail('tool %s: exit %d, %d values (expected %d), stderr: %s'
                   % (' '.join(args), rc, len(lines), n,
                      err.decode(errors='replace').strip()[:300]))
    # "%.9g" round-trips float32 exactly through a double.
    return np.array([float(v) for v in lines], dtype=np.float32)


def bits(v):
    return struct.unpack('<I', struct.pack('<f', float(v)))[0]


def fmtf(v):
    return '%.9g (0x%08x)' % (float(v), bits(v))


def gaussian(shape, seed):
    torch.manual_seed(seed)
    return torch.randn(shape, dtype=F32)


# ---------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------

def mismatch_report(x, out, ref, limit=3):
    """Lines describing where out != ref (values; -0 == +0, NaN != NaN)."""
    bad = ~(out == ref)
    n = int(bad.sum())
    diff = (out.double() - ref.double()).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float('inf')), diff)
    lines = ['%d of %d elements differ; max |tool - ref| = %.9g'
             % (n, out.numel(), diff.max().item() if n else 0.0)]
    for r, c in torch.nonzero(bad)[:limit].tolist():
        lines.append('at (%d,%d): x=%s tool=%s ref=%s' % (
            r, c, fmtf(x[r, c]), fmtf(out[r, c]), fmtf(ref[r, c])))
    return n, lines


def ulp_distance(a, b):
    """Elementwise distance in float32 units in the last place."""
    def ordered(t):
        i = t.numpy().view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7fffffff), i)
    d = np.abs(ordered(a) - ordered(b))
    nan = np.isnan(a.numpy()) | np.isnan(b.numpy())
    d[nan] = np.iinfo(np.int64).max
    return torch.from_numpy(d)


def diagnose_offset(x, out, fmt, block):
    """When a double-quant result differs, find out whether some other float32
    offset (mean of the absmax array) would have produced the tool's output
    exactly.  This separates "summation order of the mean" from real bugs
    without loosening the check."""
    codes, absmax = R.quantize_4bit(x, fmt, block)
    torch_off = R.mean_f32(absmax)

    def matches(offset_fn):
        dq, off = R.double_quantize_absmax(absmax, offset_fn)
        y = R.dequantize_4bit(codes, dq, fmt, x.shape, block)
        return bool((y == out).all()), off

    named = [('the float64 mean rounded to float32', R.mean_f64_rounded),
             ('a sequential float32 sum / n', R.mean_sequential_f32)]
    for name, fn in named:
        ok, off = matches(fn)
        if ok and off != torch_off:
            return ['mismatch is ONLY the double-quant offset (mean of %d absmax '
                    'values): the tool matches the reference exactly if the '
                    'offset is %s = %s instead of torch\'s float32 mean %s'
                    % (absmax.numel(), name, fmtf(off), fmtf(torch_off)),
                    'i.e. a summation-order difference; torch\'s order is '
                    'emulated by bnb_ref.emulated_torch_sum_f32']
    # Any offset a few ulps away?
    o = torch_off.numpy().reshape(1)
    lo = hi = o.copy()
    for k in range(1, 65):
        lo = np.nextafter(lo, np.float32(-np.inf))
        hi = np.nextafter(hi, np.float32(np.inf))
        for cand in (lo, hi):
            ok, off = matches(lambda a, c=cand: torch.from_numpy(c.copy())[0])
            if ok:
                return ['mismatch is ONLY the double-quant offset: the tool '
                        'matches exactly with offset %s, %d ulp from torch\'s '
                        'float32 mean %s (summation-order difference; torch\'s '
                        'order is emulated by bnb_ref.emulated_torch_sum_f32)'
                        % (fmtf(off), k, fmtf(torch_off))]
    return ['no offset within 64 ulp of torch\'s mean %s reproduces the tool '
            'output, so this is not (only) a summation-order difference'
            % fmtf(torch_off)]


# ---------------------------------------------------------------------------
# Checks.  Each returns a list of info lines or raises Fail(lines...).
# ---------------------------------------------------------------------------

def check_dynamic_map():
    got = tool_values(['dynamic-map'], 256)
    ref = R.dynamic_map().numpy()
    bad = [i for i in range(256) if bits(got[i]) != bits(ref[i])]
    if bad:
        raise Fail('%d of 256 entries differ' % len(bad),
                   *['code[%d]: tool=%s ref=%s' % (i, fmtf(got[i]), fmtf(ref[i]))
                     for i in bad[:5]])
    return []


def check_codes(fmt):
    got = tool_values(['codes', fmt], 16)
    ref = R.table(fmt).numpy()
    bad = [i for i in range(16) if bits(got[i]) != bits(ref[i])]
    if bad:
        lines = ['%d of 16 entries differ' % len(bad)]
        if all(got[i] == ref[i] for i in bad):
            lines.append('only the sign of zero differs: bitsandbytes builds '
                         'fp4 entry 8 from the Python int -0, which is +0.0')
        lines += ['code[%d]: tool=%s ref=%s' % (i, fmtf(got[i]), fmtf(ref[i]))
                  for i in bad[:5]]
        raise Fail(*lines)
    return []


def check_4bit_exact(x, fmt, block, dq):
    out = tool_roundtrip(x, fmt, block, dq)
    ref = R.roundtrip_4bit(x, fmt, block, dq)
    n, lines = mismatch_report(x, out, ref)
    if n:
        if dq:
            lines += diagnose_offset(x, out, fmt, block)
        raise Fail(*lines)
    return []


def check_exact(x, fmt, block):
    """int8/int4: the formulas are written out in float32 on both sides: bit for bit."""
    out = tool_roundtrip(x, fmt, block)
    ref = R.roundtrip(x, fmt, block)
    d = ulp_distance(out, ref)
    if int(d.max()) > 0:
        _, lines = mismatch_report(x, out, ref)
        raise Fail('%d elements differ from the reference' % int((d > 0).sum()), *lines)
    return []


def check_mean_based(x, fmt):
    """bitnet1/ternary take float32 row means in PyTorch's summation order (the library
    reproduces it), so the round trip must equal the reference bit for bit."""
    out = tool_roundtrip(x, fmt, 64)
    ref = R.roundtrip(x, fmt, 64)
    bad = ~(out == ref)
    if bool(bad.any()):
        lines = ['%d of %d elements differ from the reference' % (int(bad.sum()), out.numel())]
        for r, c in torch.nonzero(bad)[:3].tolist():
            lines.append('at (%d,%d): x=%s tool=%s ref=%s' % (
                r, c, fmtf(x[r, c]), fmtf(out[r, c]), fmtf(ref[r, c])))
        raise Fail(*lines)
    return []


def check_bad_input(args, data):
    rc, out, err = run_tool(args, data)
    lines = err.decode(errors='replace').splitlines()
    problems = []
    if rc != 2:
        problems.append('exit status %d, expected 2' % rc)
    if out:
        problems.append('%d bytes on stdout, expected none' % len(out))
    if len(lines) != 1 or not lines[0].strip():
        problems.append('stderr has %d lines, expected exactly one: %r'
                        % (len(lines), err[:200]))
    if problems:
        raise Fail(*problems)
    return []


def check_identity_f32():
    x = torch.tensor([[0.0, -0.0, 1e-45, -1e-40, 3.4028234663852886e38,
                       -3.4028234663852886e38, 1.0, -2.5]], dtype=F32)
    out = tool_roundtrip(x, 'f32')
    if to_bytes(out) != to_bytes(x):
        _, lines = mismatch_report(x, out, x)
        raise Fail('f32 round trip is not the identity (bitwise)', *lines)
    return []


def check_default_block():
    x = gaussian((5, 300), 77)
    a = tool_roundtrip(x, 'nf4', None)
    b = tool_roundtrip(x, 'nf4', 64)
    if to_bytes(a) != to_bytes(b):
        raise Fail('output without --block differs from --block 64')
    return []


def constant_matrix(block):
    """Rows of constant blocks (incl. zero, tiny and huge constants) with a
    shorter constant last block."""
    vals = [3.7, -2.25, 0.0, 1e-30, -1e20, 7.0, -0.1, 0.5]
    rows = []
    for r in range(4):
        row = [torch.full((block,), vals[(r + j) % len(vals)]) for j in range(3)]
        row.append(torch.full((5,), vals[(r + 3) % len(vals)]))
        rows.append(torch.cat(row))
    return torch.stack(rows).to(F32)


def check_int4_constant(block):
    x = constant_matrix(block)
    out = tool_roundtrip(x, 'int4', block)
    n, lines = mismatch_report(x, out, x)
    if n:
        raise Fail('constant blocks do not reconstruct exactly', *lines)
    return []


def check_finite(x, fmt, dq=True, exact_ref=False):
    out = tool_roundtrip(x, fmt, 64, dq)
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        r, c = torch.nonzero(bad)[0].tolist()
        raise Fail('%d non-finite outputs; first at (%d,%d): x=%s tool=%s'
                   % (int(bad.sum()), r, c, fmtf(x[r, c]), fmtf(out[r, c])))
    if fmt == 'f32' and to_bytes(out) != to_bytes(x):
        raise Fail('f32 output is not the input')
    if exact_ref:
        ref = R.roundtrip(x, fmt, 64, dq)
        n, lines = mismatch_report(x, out, ref)
        if n:
            if dq and fmt in R.TABLES:
                lines += diagnose_offset(x, out, fmt, 64)
            raise Fail(*lines)
    return []


# ---------------------------------------------------------------------------
# Test list
# ---------------------------------------------------------------------------

def build_tests():
    tests = []

    def add(name, fn, *args):
        tests.append((name, lambda: fn(*args)))

    # (a) tables
    add('dynamic-map equals bitsandbytes create_dynamic_map (code[0]=-1) bitwise',
        check_dynamic_map)
    for fmt in ('nf4', 'fp4'):
        add('codes %s equal get_4bit_type(%r) bitwise' % (fmt, fmt),
            check_codes, fmt)

    # (b) 4-bit round trips, bit for bit
    mats = {s: gaussian(s, 1000 + i) for i, s in enumerate(SHAPES_4BIT)}
    for fmt in ('nf4', 'fp4'):
        for dq in (True, False):
            for block in BLOCKS:
                for shape in SHAPES_4BIT:
                    add('%s %s block=%d shape=%dx%d bit-exact'
                        % (fmt, 'dq' if dq else 'no-dq', block, *shape),
                        check_4bit_exact, mats[shape], fmt, block, dq)
    # double quant where every a = absmax - offset is 0 (absmax2 == 0 path)
    for fmt in ('nf4', 'fp4'):
        add('%s dq all-ones matrix (absmax2 == 0) bit-exact' % fmt,
            check_4bit_exact, torch.ones(4, 256), fmt, 64, True)
        add('%s dq all-zero matrix bit-exact' % fmt,
            check_4bit_exact, torch.zeros(3, 100), fmt, 32, True)

    # (c) scalar formats
    smats = {s: gaussian(s, 2000 + i) for i, s in enumerate(SHAPES_SCALAR)}
    for fmt in ('int8', 'int4'):
        for block in BLOCKS:
            for shape in SHAPES_SCALAR:
                add('%s block=%d shape=%dx%d exact (<= 1 ulp)'
                    % (fmt, block, *shape), check_exact, smats[shape], fmt, block)
    for fmt in ('bitnet1', 'ternary'):
        for shape in SHAPES_SCALAR:
            add('%s shape=%dx%d within 1e-6 relative' % (fmt, *shape),
                check_mean_based, smats[shape], fmt)

    # (d) bad input
    good = bytes(2 * 4 * 4)
    base = ['roundtrip', '--rows', '2', '--cols', '4']
    add('error: unknown format', check_bad_input,
        base + ['--format', 'q3_k'], good)
    add('error: block 48 (not a power of two)', check_bad_input,
        base + ['--format', 'nf4', '--block', '48'], good)
    add('error: block 8192 (too large)', check_bad_input,
        base + ['--format', 'nf4', '--block', '8192'], good)
    add('error: block 16 (too small)', check_bad_input,
        base + ['--format', 'nf4', '--block', '16'], good)
    add('error: input one byte short', check_bad_input,
        base + ['--format', 'nf4'], good[:-1])
    add('error: input one float too long', check_bad_input,
        base + ['--format', 'nf4'], good + bytes(4))
    add('error: rows 0', check_bad_input,
        ['roundtrip', '--format', 'nf4', '--rows', '0', '--cols', '4'], b'')

    # (e) edge cases
    add('f32 round trip is the identity bitwise', check_identity_f32)
    add('default block is 64', check_default_block)
    for block in (32, 64, 4096):
        add('int4 constant blocks reconstruct exactly (block=%d)' % block,
            check_int4_constant, block)
    cm = constant_matrix(64)
    for fmt in ('nf4', 'fp4'):
        for dq in (True, False):
            add('%s %s constant/zero blocks bit-exact'
                % (fmt, 'dq' if dq else 'no-dq'),
                check_finite, cm, fmt, dq, True)
    for fmt in ('int8', 'bitnet1', 'ternary'):
        add('%s constant/zero blocks finite' % fmt, check_finite, cm, fmt)
    outl = gaussian((16, 700), 3000)
    outl[3, 100] = 1e30
    outl[9, 5] = -1e30
    for fmt in R.FORMATS:
        for dq in ((True, False) if fmt in R.TABLES else (True,)):
            add('%s%s huge outlier (1e30): no NaN/Inf'
                % (fmt, '' if dq else ' no-dq'), check_finite, outl, fmt, dq)
    return tests


def main():
    global TOOL
    if len(sys.argv) != 2:
        print('usage: %s path/to/qlora-tool' % sys.argv[0], file=sys.stderr)
        return 2
    TOOL = sys.argv[1]
    if not (os.path.isfile(TOOL) and os.access(TOOL, os.X_OK)):
        print('Bail out! tool not executable: %s' % TOOL)
        return 1
    cfg = torch.__config__.show()
    cap = [line.strip() for line in cfg.splitlines() if 'CPU capability' in line]
    print('# torch %s, %s' % (torch.__version__, cap[0] if cap else 'capability unknown'))

    tests = build_tests()
    print('1..%d' % len(tests))
    failed = 0
    for k, (name, fn) in enumerate(tests, 1):
        try:
            info = fn()
            print('ok %d - %s' % (k, name))
        except Fail as e:
            failed += 1
            print('not ok %d - %s' % (k, name))
            info = list(e.args)
        except subprocess.TimeoutExpired:
            failed += 1
            print('not ok %d - %s' % (k, name))
            info = ['tool timed out after %d s' % TIMEOUT]
        except Exception as e:  # a harness problem must still show up as a failure
            failed += 1
            print('not ok %d - %s' % (k, name))
            info = ['%s: %s' % (type(e).__name__, e)]
        for line in info:
            print('# ' + line)
        sys.stdout.flush()
    if failed:
        print('# %d of %d checks failed' % (failed, len(tests)))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
