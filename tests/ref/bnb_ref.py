"""Independent PyTorch reference for qlorad's weight quantizers.

The 4-bit part reimplements bitsandbytes' NF4/FP4 quantization with double
quantization (8-bit "dynamic" map, blocks of 256 absmax values) the way its
CPU path does it, so that the C implementation can be compared bit for bit.
The other formats (int8, int4, bitnet1, ternary) are plain scalar formulas.

Everything is float32: every arithmetic step below is a single IEEE float32
operation (torch's CPU kernels for +, -, *, / and round are correctly rounded
float32 ops), so a C port that performs the same operations in the same order
with float (not double, no FMA contraction) gets the same bits.  The only
places where torch internals leak into the numbers are:

  * torch.linspace inside create_dynamic_map (vectorised kernel, see
    emulated_torch_linspace_f32 below), and
  * the float32 mean used for the double-quant offset and for bitnet1 /
    ternary (cascade summation, see emulated_torch_sum_f32 below).

Both depend on torch's CPU dispatch level (vector width); the test script pins
ATEN_CPU_CAPABILITY=avx2 on x86-64 so the expected values do not change with
the machine.  The emulations are here as executable documentation for the C
side and are checked against torch in selftest().

Blocking convention (qlorad, not bitsandbytes): blocks restart at every row.
A row of length C with C % block != 0 ends with a shorter block that has its
own absmax.  Blocks are numbered row-major (row 0's blocks, then row 1's ...),
and that is the order of the absmax array fed to double quantization.

Run this file directly for a self-test of the reference itself.
"""

import contextlib
from fractions import Fraction

import numpy as np
import torch

F32 = torch.float32

# ---------------------------------------------------------------------------
# Code tables
# ---------------------------------------------------------------------------

# bitsandbytes get_4bit_type('nf4'): quantiles of N(0,1), normalised to [-1,1].
NF4_TABLE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
    0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=F32)


def _fp4_table():
    # Verbatim bitsandbytes get_4bit_type('fp4').  Note the literal `-0` in the
    # bitsandbytes source is a Python *int*, i.e. plain 0, so entry 8 is +0.0,
    # not -0.0.  (It never matters for round trips: argmin ties go to entry 0.)
    data = [0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
            -0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]
    data = torch.tensor(data, dtype=F32)
    data.div_(data.abs().max())
    return data


FP4_TABLE = _fp4_table()

TABLES = {'nf4': NF4_TABLE, 'fp4': FP4_TABLE}


def table(fmt):
    """The 16-entry 4-bit code table for 'nf4' or 'fp4' (a copy)."""
    return TABLES[fmt].clone()


def zero_index(tab):
    """Index of the first +/-0.0 entry: the code an all-zero block gets (the
    argmin over |0 - table| picks the first zero, so -0.0 is never chosen)."""
    return int(torch.nonzero(tab == 0)[0, 0])


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes.functional.create_dynamic_map, same logic line by line.

    Precision notes: torch.linspace is float32; `10 ** k` is a Python float
    that torch rounds to float32 before the float32 multiply; .tolist() and
    torch.tensor() round-trip float32 values exactly.
    """
    data = []
    # bitsandbytes literally writes `total_bits - (1 if signed else 1)`.
    non_sign_bits = total_bits - (1 if signed else 1)
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(
            2 ** (i + non_sign_bits - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=F32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()

    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=F32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()

    data.append(0)
    data.append(1.0)

    assert len(data) == 2 ** total_bits

    gap = 256 - len(data)
    for _ in range(gap):
        data.append(0)

    data.sort()
    return torch.tensor(data, dtype=F32)


def dynamic_map():
    """The 256-entry map used for double quantization.

    bitsandbytes' CPU quantize_cpu() overwrites code[0] with -1.0 in place
    (the generated map starts at about -0.99, which breaks its binary search
    for inputs of exactly -1).  The same, modified tensor is then used for
    dequantization, so we do the same here.
    """
    code = create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)
    code[0] = -1.0
    return code


# ---------------------------------------------------------------------------
# Float32 mean
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def _single_thread():
    # torch splits large reductions across threads, which changes the
    # summation order with the thread count; pin it so the reference is a
    # deterministic function of the input.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def mean_f32(t):
    """torch float32 mean of a 1-D tensor (float32 sum, then float32 / n)."""
    with _single_thread():
        return t.to(F32).contiguous().mean()


# Alternative offsets, used only for diagnostics when the tool disagrees.
def mean_f64_rounded(t):
    """float64 mean rounded to float32 (what a careful C port might do)."""
    return torch.tensor(t.double().mean().item(), dtype=F32)


def mean_sequential_f32(t):
    """Naive left-to-right float32 sum, then float32 division by n."""
    s = np.float32(0)
    for v in t.numpy().astype(np.float32):
        s = np.float32(s + v)
    return torch.tensor(np.float32(s / np.float32(t.numel())), dtype=F32)


# ---------------------------------------------------------------------------
# Per-row blocking helpers
# ---------------------------------------------------------------------------

def _check_input(x2d, block):
    if not (isinstance(x2d, torch.Tensor) and x2d.dim() == 2):
        raise ValueError('expected a 2-D tensor')
    if x2d.dtype != F32:
        raise ValueError('expected float32 input')
    if block <= 0:
        raise ValueError('block must be positive')


def _blocks(x2d, block):
    """Split each row into blocks of `block`, zero-padding the last one.

    Returns (padded [R*nbr, block], valid mask of the same shape, nbr).
    Zero padding does not change max|x|; formats that need min/max use the
    mask instead.
    """
    R, C = x2d.shape
    nbr = -(-C // block)
    padded = torch.zeros(R, nbr * block, dtype=F32)
    padded[:, :C] = x2d
    valid = torch.zeros(R, nbr * block, dtype=torch.bool)
    valid[:, :C] = True
    return padded.reshape(R * nbr, block), valid.reshape(R * nbr, block), nbr


def _unblock(y, R, C, nbr, block):
    return y.reshape(R, nbr * block)[:, :C].contiguous()


# ---------------------------------------------------------------------------
# 4-bit (NF4 / FP4) with optional double quantization
# ---------------------------------------------------------------------------

def quantize_4bit(x2d, fmt, block):
    """Returns (codes [nblocks, block] int64 incl. padding, absmax [nblocks]).

    Mirrors bitsandbytes' torch CPU path: reciprocal first, then multiply,
    clamp to [-1, 1], nearest table entry with the first (lowest index)
    minimum winning ties.
    """
    _check_input(x2d, block)
    tab = TABLES[fmt]
    xb, _, _ = _blocks(x2d, block)
    absmax = xb.abs().amax(dim=1)
    scaled = torch.clamp(xb * (1.0 / absmax)[:, None], -1, 1)
    flat = scaled.reshape(-1)
    codes = torch.empty(flat.numel(), dtype=torch.int64)
    # Chunked so the [n, 16] distance matrix stays small for big inputs.
    step = 1 << 18
    for s in range(0, flat.numel(), step):
        d = torch.abs(flat[s:s + step, None] - tab)
        codes[s:s + step] = torch.argmin(d, dim=-1)
    codes = codes.reshape(xb.shape)
    # absmax == 0 gives 0 * inf = NaN above; such a block is all zeros.
    codes[absmax == 0] = zero_index(tab)
    return codes, absmax


def quantize_blockwise_8bit(a, code, group=256):
    """bitsandbytes CPU C++ quantize_block() over consecutive groups of
    `group` values.  Returns (q8 int64 [n], absmax2 [ngroups])."""
    n = a.numel()
    ng = -(-n // group)
    q = torch.empty(n, dtype=torch.int64)
    absmax2 = torch.empty(ng, dtype=F32)
    zi = int(torch.nonzero(code == 0)[0, 0])
    for g in range(ng):
        seg = a[g * group:(g + 1) * group]
        m = seg.abs().max()
        if m == 0:
            # Real bitsandbytes would divide 0/0 here; qlorad's contract is
            # "code of 0.0, absmax2 = 0".
            q[g * group:(g + 1) * group] = zi
            absmax2[g] = 0.0
            continue
        absmax2[g] = m
        normed = seg / m                      # float32 division, not *1/m
        # Binary search "left": largest i with code[i] <= normed.
        idx = torch.searchsorted(code, normed, right=True) - 1
        idx = idx.clamp(0, 255)
        # Then move right if the right neighbour is strictly closer.
        nxt = (idx + 1).clamp(max=255)
        dl = torch.abs(normed - code[idx])
        dr = torch.abs(normed - code[nxt])
        idx = torch.where((idx < 255) & (dr < dl), idx + 1, idx)
        q[g * group:(g + 1) * group] = idx
    return q, absmax2


def double_quantize_absmax(absmax, offset_fn=None, group=256):
    """Quantize the float32 absmax array with the dynamic map and return the
    dequantized absmax the 4-bit dequantizer sees, plus the offset used.

    offset_fn(absmax) -> float32 scalar tensor; default is torch's float32
    mean.  Alternatives exist only to diagnose summation-order mismatches.
    """
    code = dynamic_map()
    offset = (offset_fn or mean_f32)(absmax).to(F32).reshape(())
    a = absmax - offset
    q, absmax2 = quantize_blockwise_8bit(a, code, group)
    scale = absmax2.repeat_interleave(group)[:absmax.numel()]
    # Two separate float32 roundings (multiply, then add) - no FMA.
    return code[q] * scale + offset, offset


def roundtrip_4bit(x2d, fmt, block, double_quant=True, offset_fn=None):
    """dequantize(quantize(x)) for NF4/FP4, float32 [R, C] -> [R, C]."""
    R, C = x2d.shape
    codes, absmax = quantize_4bit(x2d, fmt, block)
    if double_quant:
        absmax_dq, _ = double_quantize_absmax(absmax, offset_fn)
    else:
        absmax_dq = absmax
    return dequantize_4bit(codes, absmax_dq, fmt, (R, C), block)


def dequantize_4bit(codes, absmax, fmt, shape, block):
    """table[code] * absmax per block (one float32 multiply), cut back to
    shape = (R, C).  absmax is either the raw or the double-quantized one."""
    R, C = shape
    y = TABLES[fmt][codes] * absmax[:, None]
    return _unblock(y, R, C, absmax.numel() // R if R else 0, block)



# ---------------------------------------------------------------------------
# Scalar-formula formats
# ---------------------------------------------------------------------------

def roundtrip_int8(x2d, block):
    """Symmetric absmax int8 per block: scale = absmax/127, q = rint(x/scale)."""
    _check_input(x2d, block)
    R, C = x2d.shape
    xb, _, nbr = _blocks(x2d, block)
    scale = xb.abs().amax(dim=1) / 127
    q = torch.round(xb / scale[:, None])          # round half to even
    y = q * scale[:, None]
    y[scale == 0] = 0.0                           # all-zero block (0/0)
    return _unblock(y, R, C, nbr, block)


def roundtrip_int4(x2d, block):
    """Asymmetric min/max int4 per block with an integer zero point."""
    _check_input(x2d, block)
    R, C = x2d.shape
    xb, valid, nbr = _blocks(x2d, block)
    inf = torch.tensor(float('inf'), dtype=F32)
    mn = torch.where(valid, xb, inf).amin(dim=1)
    mx = torch.where(valid, xb, -inf).amax(dim=1)
    S = (mx - mn) / 15
    # Constant block: S = |c| makes Z = -sign(c) and q = 0, so S*(q-Z) = c
    # exactly; only c == 0 leaves S == 0.
    S = torch.where(mx == mn, mx.abs(), S)
    zero = S == 0
    Ssafe = torch.where(zero, torch.ones_like(S), S)
    Z = torch.round(-mn / Ssafe)
    q = torch.clamp(torch.round(xb / Ssafe[:, None]) + Z[:, None], 0, 15)
    y = Ssafe[:, None] * (q - Z[:, None])
    y[zero] = 0.0
    return _unblock(y, R, C, nbr, block)


def roundtrip_bitnet1(x2d):
    """1-bit per row: sign around the row mean, magnitude mean|W|."""
    y = torch.empty_like(x2d)
    for r in range(x2d.shape[0]):
        w = x2d[r]
        alpha = mean_f32(w)
        beta = mean_f32(w.abs())
        y[r] = torch.where(w - alpha > 0, beta, -beta)
    return y


def roundtrip_ternary(x2d):
    """BitNet b1.58 absmean ternary per row."""
    y = torch.empty_like(x2d)
    for r in range(x2d.shape[0]):
        w = x2d[r]
        s = 1.0 / torch.clamp(mean_f32(w.abs()), min=1e-5)
        q = torch.clamp(torch.round(w * s), -1, 1)
        y[r] = q / s
    return y


def ternary_scale(row):
    """The per-row s of roundtrip_ternary (exposed for tolerance checks)."""
    return 1.0 / torch.clamp(mean_f32(row.abs()), min=1e-5)


FORMATS = ('f32', 'nf4', 'fp4', 'int8', 'int4', 'bitnet1', 'ternary')


def roundtrip(x2d, fmt, block=64, double_quant=True, offset_fn=None):
    """Dispatch on the tool's --format names."""
    if fmt == 'f32':
        return x2d.clone()
    if fmt in TABLES:
        return roundtrip_4bit(x2d, fmt, block, double_quant, offset_fn)
    if fmt == 'int8':
        return roundtrip_int8(x2d, block)
    if fmt == 'int4':
        return roundtrip_int4(x2d, block)
    if fmt == 'bitnet1':
        return roundtrip_bitnet1(x2d)
    if fmt == 'ternary':
        return roundtrip_ternary(x2d)
    raise ValueError('unknown format %r' % fmt)


# ---------------------------------------------------------------------------
# Emulations of torch internals (documentation for the C port; checked
# against torch in selftest()).  Valid for torch 1.13 with AVX2 dispatch
# (vector width 8 floats).
# ---------------------------------------------------------------------------

def _fma_f32(a, b, c):
    """float32 fma(a, b, c) with a single rounding."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    d = np.float32(float(exact))
    best = None
    for y in (np.nextafter(d, np.float32(-np.inf)), d,
              np.nextafter(d, np.float32(np.inf))):
        key = (abs(Fraction(float(y)) - exact),
               int(np.array(y, np.float32).view(np.uint32)) & 1)
        if best is None or key < best[0]:
            best = (key, y)
    return np.float32(best[1])


def emulated_torch_linspace_f32(start, end, steps, vec=8):
    """torch.linspace (CPU, float32).  step = (end-start)/(steps-1) in float;
    the first half is start + step*i, the second end - step*(steps-1-i).
    Elements are produced 2*vec at a time by a vector lambda that computes a
    base value for the first lane as above and the other lanes as
    base + lane*step (unfused); the scalar tail and every base are computed
    with a fused multiply-add (GCC contracts them in the AVX2 build)."""
    f = np.float32
    start, end = f(start), f(end)
    step = f((end - start) / f(steps - 1))
    half = steps // 2

    def base(i):
        if i < half:
            return _fma_f32(step, f(i), start)
        return _fma_f32(-step, f(steps - i - 1), end)

    out = np.zeros(steps, f)
    i = 0
    while i + 2 * vec <= steps:
        for _ in range(2):
            b = base(i)
            out[i:i + vec] = [f(b + f(f(k) * step)) for k in range(vec)]
            i += vec
    while i < steps:
        out[i] = base(i)
        i += 1
    return out


def _multi_row_sum(X):
    # at::native multi_row_sum: cascade of 4 accumulator levels.
    f = np.float32
    size = X.shape[0]
    num_levels = 4
    ceil_log2 = 0 if size <= 1 else int(size - 1).bit_length()
    level_power = max(4, ceil_log2 // num_levels)
    level_step = 1 << level_power
    level_mask = level_step - 1
    acc = np.zeros((num_levels,) + X.shape[1:], f)
    i = 0
    while i + level_step <= size:
        for _ in range(level_step):
            acc[0] = acc[0] + X[i]
            i += 1
        for j in range(1, num_levels):
            acc[j] = acc[j] + acc[j - 1]
            acc[j - 1] = 0
            if (i & (level_mask << (j * level_power))) != 0:
                break
    while i < size:
        acc[0] = acc[0] + X[i]
        i += 1
    for j in range(1, num_levels):
        acc[0] = acc[0] + acc[j]
    return acc[0]


def _row_sum(X):
    # at::native row_sum: 4 interleaved partial sums ("ilp"), tail into the
    # first, then the partials added left to right.
    ilp = 4
    n_ilp = X.shape[0] // ilp
    ps = _multi_row_sum(X[:n_ilp * ilp].reshape((n_ilp, ilp) + X.shape[1:]))
    ps = [ps[k].copy() for k in range(ilp)]
    for i in range(n_ilp * ilp, X.shape[0]):
        ps[0] = ps[0] + X[i]
    for k in range(1, ilp):
        ps[0] = ps[0] + ps[k]
    return ps[0]


def emulated_torch_sum_f32(a, vec=8):
    """torch.sum of a contiguous 1-D float32 array, single thread.

    n < vec: scalar _row_sum.  Otherwise the first n//vec*vec elements are
    summed as vec-wide vectors with _row_sum (lane-wise), the remaining
    tail is summed left to right starting from 0, and then the vec lanes are
    added to that tail sum in lane order.  torch.mean = float32(sum / n).
    """
    f = np.float32
    a = np.ascontiguousarray(a, dtype=f)
    n = a.shape[0]
    if n < vec:
        return f(_row_sum(a)) if n else f(0)
    nv = n // vec
    lanes = _row_sum(a[:nv * vec].reshape(nv, vec))
    acc = f(0)
    for v in a[nv * vec:]:
        acc = f(acc + v)
    for k in range(vec):
        acc = f(acc + lanes[k])
    return acc


# ---------------------------------------------------------------------------
# Self-test of the reference (no tool involved)
# ---------------------------------------------------------------------------

def selftest():
    ok = True

    def check(cond, msg):
        nonlocal ok
        print(('ok     ' if cond else 'FAILED ') + msg)
        ok = ok and bool(cond)

    code = dynamic_map()
    check(code.numel() == 256, 'dynamic map has 256 entries')
    check(bool((code[1:] > code[:-1]).all()), 'dynamic map strictly increasing')
    check(code[0].item() == -1.0 and code[-1].item() == 1.0,
          'dynamic map spans [-1, 1] (code[0] forced to -1)')
    check(int((code == 0).sum()) == 1, 'dynamic map contains 0 exactly once')
    check(FP4_TABLE.abs().max().item() == 1.0 and
          not torch.signbit(FP4_TABLE[8]).item(), 'fp4 table: max 1, entry 8 is +0.0')
    check(zero_index(NF4_TABLE) == 7 and zero_index(FP4_TABLE) == 0,
          'zero indices nf4=7 fp4=0')

    # Emulations of torch internals agree with this torch build.
    lin_ok = all(np.array_equal(torch.linspace(0.1, 1, n, dtype=F32).numpy(),
                                emulated_torch_linspace_f32(0.1, 1, n))
                 for n in (2, 3, 5, 9, 17, 33, 65, 129, 1000))
    check(lin_ok, 'emulated linspace == torch.linspace (needs AVX2 dispatch)')
    rng = np.random.default_rng(0)
    sum_ok = True
    for n in list(range(1, 80)) + [255, 256, 257, 1000, 4096, 32768]:
        a = np.abs(rng.standard_normal(n)).astype(np.float32)
        with _single_thread():
            t = torch.from_numpy(a).sum().numpy()
        sum_ok &= bool(t == emulated_torch_sum_f32(a))
    check(sum_ok, 'emulated float32 sum == torch.sum (needs AVX2 dispatch)')
    a = torch.from_numpy(np.abs(rng.standard_normal(777)).astype(np.float32))
    check(mean_f32(a).item() == np.float32(emulated_torch_sum_f32(a.numpy())
                                           / np.float32(777)),
          'torch mean == float32(sum) / n')

    torch.manual_seed(0)
    x = torch.randn(33, 300)
    for fmt, lim in (('nf4', 0.12), ('fp4', 0.2)):
        for dq in (False, True):
            y = roundtrip_4bit(x, fmt, 64, dq)
            rel = ((y - x).norm() / x.norm()).item()
            check(y.shape == x.shape and torch.isfinite(y).all() and rel < lim,
                  '%s dq=%s relative error %.4f < %g' % (fmt, dq, rel, lim))
    y = roundtrip_4bit(x, 'nf4', 64, True)
    y2 = roundtrip_4bit(x, 'nf4', 64, False)
    check(((y - y2).abs().max() <= 0.02 * x.abs().max()).item(),
          'double quant changes nf4 output only slightly')

    # Short last block gets its own absmax: a row [big..., tiny tail] keeps
    # the tail's resolution.
    r = torch.cat([torch.full((64,), 100.0), torch.tensor([0.5, -0.25])])[None]
    y = roundtrip_4bit(r, 'nf4', 64, False)
    check(y[0, 64].item() == 0.5, 'short last block has its own absmax')
    z = roundtrip_4bit(torch.zeros(3, 70), 'nf4', 32, True)
    check(bool((z == 0).all()), 'all-zero matrix -> zeros (nf4, dq)')

    for fmt, lim in (('int8', 0.01), ('int4', 0.15), ('bitnet1', 0.8),
                     ('ternary', 0.8)):
        y = roundtrip(x, fmt, 64)
        rel = ((y - x).norm() / x.norm()).item()
        check(torch.isfinite(y).all() and rel < lim,
              '%s relative error %.4f < %g' % (fmt, rel, lim))

    # int4 constant blocks reconstruct exactly, zero block gives zeros.
    vals = [3.7, -2.25, 0.0, 1e-30, -1e20, 7.0]
    c = torch.cat([torch.full((1, 64), v) for v in vals], dim=1)
    c = torch.cat([c, torch.full((1, 5), -0.1)], dim=1)   # short const block
    y = roundtrip_int4(c, 64)
    check(torch.equal(y, c), 'int4 constant blocks reconstruct exactly')
    y = roundtrip_int8(c, 64)
    check(bool(torch.isfinite(y).all()), 'int8 constant/zero blocks finite')

    t = roundtrip_ternary(torch.tensor([[0.9, -0.2, 0.1, -1.3]]))
    check(set(torch.unique(torch.round(t * ternary_scale(
        torch.tensor([0.9, -0.2, 0.1, -1.3])))).tolist()) <= {-1.0, 0.0, 1.0},
          'ternary values are {-1,0,1}/s')
    return ok


if __name__ == '__main__':
    import sys
    sys.exit(0 if selftest() else 1)
