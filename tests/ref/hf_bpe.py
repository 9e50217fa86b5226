"""hf_bpe.py: Hugging Face tokenizers' BPE for a Llama-flavoured tokenizer.json, written
plainly from its definition and independently of the C code: the added tokens found in
the text first (at each position the longest that starts there, the leftmost first), then
for each stretch between them Llama's normalizer (prepend "\u2581" to a non-empty
stretch, every " " becomes "\u2581"), one symbol per character, byte
fallback to <0xXX> for a character not in the vocab, then the naive quadratic loop: merge
the listed pair of lowest rank (its position in model.merges; the leftmost among equal),
until no adjacent pair is listed. A pair listed twice keeps its last rank (HF's loader
collects the merges into a map)."""

SPACE = '\u2581'


class Tokenizer:
    def __init__(self, tok):
        model = tok['model']
        self.vocab = model['vocab']
        self.merges = {}
        for rank, m in enumerate(model['merges']):
            a, b = m.split(' ') if isinstance(m, str) else m
            self.merges[(self.vocab[a], self.vocab[b])] = (rank, self.vocab[a + b])
        self.bos = next(t['id'] for t in tok['added_tokens'] if t['content'] == '<s>')
        self.piece = {i: p for p, i in self.vocab.items()}
        self.added = {t['content']: t['id'] for t in tok['added_tokens']}
        for t in tok['added_tokens']:
            self.piece.setdefault(t['id'], t['content'])

    def encode(self, text, bos=True):
        ids = [self.bos] if bos else []
        start = i = 0
        while i < len(text):
            hit = max((c for c in self.added if text.startswith(c, i)), key=len, default=None)
            if hit is None:
                i += 1
                continue
            ids += self.stretch(text[start:i]) + [self.added[hit]]
            i = start = i + len(hit)
        return ids + self.stretch(text[start:])

    def stretch(self, text):
        if not text:
            return []
        syms = []
        for ch in SPACE + text.replace(' ', SPACE):
            if ch in self.vocab:
                syms.append(self.vocab[ch])
            else:
                syms += [self.vocab['<0x%02X>' % b] for b in ch.encode('utf-8')]
        while True:
            best = None
            for i in range(len(syms) - 1):
                m = self.merges.get((syms[i], syms[i + 1]))
                if m and (best is None or m[0] < best[0]):
                    best = (m[0], i, m[1])
            if best is None:
                return syms
            _, i, merged = best
            syms[i:i + 2] = [merged]

    def decode(self, ids):
        """Llama's decoder: "\u2581" -> " ", byte tokens fused into UTF-8, one leading space
        stripped."""
        out = b''
        for i in ids:
            p = self.piece[i]
            if len(p) == 6 and p.startswith('<0x') and p.endswith('>'):
                out += bytes([int(p[3:5], 16)])
            else:
                out += p.replace(SPACE, ' ').encode('utf-8')
        return out[1:] if out.startswith(b' ') else out
