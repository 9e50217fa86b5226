// hf_tokenizer.js: bench_tokenizer's measurements for Hugging Face tokenizers (the npm
// binding of its Rust library): Tokenizer.fromFile, one encode() of the whole text, and
// encodeBatch() of its non-empty lines, best of ROUNDS. Run with RAYON_NUM_THREADS=1 and
// TOKENIZERS_PARALLELISM=false (bench_tokenizer.py does): one thread.
// usage: node hf_tokenizer.js NODE_MODULES TOKENIZER_JSON TEXT_FILE ROUNDS
'use strict';
const fs = require('fs');
const path = require('path');
const [modules, file, textFile, rounds] = process.argv.slice(2);
const { Tokenizer } = require(path.join(modules, '@anush008/tokenizers'));

async function main() {
  const text = fs.readFileSync(textFile, 'utf8');
  const lines = text.split('\n').filter((l) => l.length > 0);
  let load = 1e9, encode = 1e9, batch = 1e9, ids = 0, lineIds = 0;
  for (let r = 0; r < Number(rounds); r++) {
    const t0 = process.hrtime.bigint();
    const t = Tokenizer.fromFile(file);
    const t1 = process.hrtime.bigint();
    const e = await t.encode(text);
    const t2 = process.hrtime.bigint();
    const all = await t.encodeBatch(lines);
    const t3 = process.hrtime.bigint();
    ids = e.getLength();
    lineIds = all.reduce((s, x) => s + x.getLength(), 0);
    load = Math.min(load, Number(t1 - t0) / 1e9);
    encode = Math.min(encode, Number(t2 - t1) / 1e9);
    batch = Math.min(batch, Number(t3 - t2) / 1e9);
  }
  console.log(JSON.stringify({ load_s: load, encode_s: encode, lines_s: batch, bytes: Buffer.byteLength(text),
    ids, line_ids: lineIds }));
}
main().catch((e) => { console.error(e); process.exit(1); });
