"""tok_helper.py: the C tokenizer through tests/tokenize_helper, for the Python tests."""

import subprocess


def run(helper, path, vocab, texts, flags=1):
    """For each text (bytes), (ids, decode after the leading specials, decode of all, decode
    of the non-special ids) by tokenize_helper with tok_encode FLAGS (1: TOK_ADD_SPECIAL)."""
    p = subprocess.run([helper, path, str(vocab), str(flags)], capture_output=True, timeout=900,
                       input=b''.join(b'%d\n' % len(t) + t for t in texts))
    assert p.returncode == 0, 'tokenize_helper %s: %s' % (path, p.stderr.decode(errors='replace'))
    lines = p.stdout.split(b'\n')[:-1]
    assert len(lines) == len(texts), (len(lines), len(texts))
    out = []
    for line in lines:
        cols = line.split(b'\t')
        out.append(([int(i) for i in cols[0].split()],) + tuple(bytes.fromhex(c.decode()) for c in cols[1:]))
    return out
