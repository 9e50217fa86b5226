// hf_tokenize.js: Hugging Face tokenizers itself (its Rust library, the npm binding
// @anush008/tokenizers) as the tokenizer tests' reference.
//
// usage: node hf_tokenize.js NODE_MODULES TOKENIZER_JSON < request.json > answer.json
// request: {"texts": [string...], "decode": [[id...]...]}; answer: for each text, ids of
// encode() with add_special_tokens true and false ("ids", "plain"), and both again with
// special tokens read as text ("split", "split_plain"); for each id list, decode() with
// special tokens shown and skipped ("shown", "skipped").
//
// The binding has no set_encode_special_tokens: special tokens are read as text by a
// second tokenizer whose special added tokens are respelled as private-use text that no
// test text holds (removing them would renumber the ones after: the loader gives added
// tokens that the model lacks the next free ids in order). Hugging Face skips their
// matches instead, which differs only where a special token's match would have hidden a
// non-special one overlapping it; the tests' files have no such pair (the test checks).
'use strict';
const fs = require('fs');
const path = require('path');
const [modules, file] = process.argv.slice(2);
const { Tokenizer } = require(path.join(modules, '@anush008/tokenizers'));

async function main() {
  const req = JSON.parse(fs.readFileSync(0, 'utf8'));
  const json = JSON.parse(fs.readFileSync(file, 'utf8'));
  const full = Tokenizer.fromFile(file);
  for (const t of json.added_tokens)
    if (t.special) t.content = '\uE000qlorad-special-' + t.id + '\uE001';
  const split = Tokenizer.fromString(JSON.stringify(json));
  const out = { texts: [], decode: [] };
  const ids = async (t, texts, add) =>
    (await t.encodeBatch(texts, { addSpecialTokens: add })).map((e) => e.getIds());
  const [a, b, c, d] = await Promise.all([
    ids(full, req.texts, true), ids(full, req.texts, false),
    ids(split, req.texts, true), ids(split, req.texts, false)]);
  for (let i = 0; i < req.texts.length; i++)
    out.texts.push({ ids: a[i], plain: b[i], split: c[i], split_plain: d[i] });
  const shown = await full.decodeBatch(req.decode, false);
  const skipped = await full.decodeBatch(req.decode, true);
  for (let i = 0; i < req.decode.length; i++) out.decode.push({ shown: shown[i], skipped: skipped[i] });
  process.stdout.write(JSON.stringify(out));
}
main().catch((e) => { console.error(e); process.exit(1); });
