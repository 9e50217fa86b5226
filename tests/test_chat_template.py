"""test_chat_template.py: model/chat_template*.c against python3-jinja2 configured as
transformers' apply_chat_template configures it (utils/chat_template_utils.py:
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]),
its tojson, raise_exception and strftime_now), byte for byte, on the real templates of
shared/tokenizers, tests/fixtures/chat_templates (their sources: SOURCES.md there) and the
built-ins, over many conversations; plus the errors.

usage: test_chat_template.py HELPER FIXTURES_DIR SHARED_DIR"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import case, report  # noqa: E402

HELPER, FIXTURES, SHARED = sys.argv[1:4]
ENV = dict(os.environ, TZ='UTC')

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ref'))
from chat_ref import IMPORT_ERROR, NOW, jinja2, reference  # noqa: E402


def helper(source, cases):
    """Runs the helper on cases: a list of ('ok'|'err', text), or raises with its stderr."""
    with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False, encoding='utf-8') as f:
        json.dump(cases, f, ensure_ascii=False)
        path = f.name
    try:
        rc, out, err = run_bytes(HELPER, source, path)
    finally:
        os.unlink(path)
    assert rc == 0, 'helper %s: exit %d: %s' % (source, rc, err)
    results, i = [], 0
    while i < len(out):
        nl = out.index(b'\n', i)
        tag, n = out[i:nl].decode().split()
        n = int(n)
        results.append((tag, out[nl + 1:nl + 1 + n].decode('utf-8')))
        i = nl + 1 + n + 1
    assert len(results) == len(cases), '%d results for %d cases' % (len(results), len(cases))
    return results


def run_bytes(*argv):
    import subprocess
    p = subprocess.run(list(argv), capture_output=True, timeout=300, env=ENV)
    return p.returncode, p.stdout, p.stderr.decode(errors='replace')


SYS = {'role': 'system', 'content': 'You are a helpful assistant.'}
U1 = {'role': 'user', 'content': 'Hello!'}
A1 = {'role': 'assistant', 'content': 'Hi there. How can I help?'}
U2 = {'role': 'user', 'content': 'Who are you?'}
A2 = {'role': 'assistant', 'content': '   I am an assistant   '}
U3 = {'role': 'user', 'content': 'Another question'}
TOOLS = [{'type': 'function', 'function': {
    'name': 'get_weather', 'description': 'Weather of a city, in °C',
    'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'},
                                                    'days': {'type': 'integer'}},
                   'required': ['city']}}}]
CALL = {'role': 'assistant', 'content': '', 'tool_calls': [
    {'type': 'function', 'function': {'name': 'get_weather',
                                      'arguments': {'city': 'Zürich', 'days': 2}}}]}
TOOL_ANSWER = {'role': 'tool', 'content': '{"temp": 21.5, "sky": "clear"}'}

CONVERSATIONS = {
    'one user turn': [U1],
    'system and user': [SYS, U1],
    'multi-turn with system': [SYS, U1, A1, U2, A2, U3],
    'multi-turn without system': [U1, A1, U2, A2, U3],
    'ends with assistant': [U1, A1],
    'unicode': [{'role': 'system', 'content': 'Réponds en français, 用中文也可以 🙂'},
                {'role': 'user', 'content': '  Ça va ? ñ — «quotes» \'single\' "double" \\ back  '},
                {'role': 'assistant', 'content': 'Très bien\n\n  merci ✓'},
                {'role': 'user', 'content': '\u2003em space and\ttab\n'}],
    'empty content': [{'role': 'user', 'content': ''}, {'role': 'assistant', 'content': ''},
                      {'role': 'user', 'content': 'x'}],
    'template-like text': [{'role': 'user', 'content': '{{ 1 + 1 }} {% if %} {# no #} </s>'}],
    'non-alternating roles': [U1, U2],
    'system only': [SYS],
    'thinking in history': [U1, {'role': 'assistant',
                                 'content': '<think>\nThe user greets.\n</think>\n\nHello!'},
                            U2, {'role': 'assistant', 'content': '<think>\n\n</think>\n\nI help.'},
                            U3],
    'reasoning_content field': [U1, {'role': 'assistant', 'content': 'Hello!',
                                     'reasoning_content': 'greet back'}, U2],
}
TOOL_CONVERSATIONS = {
    'tool call and answer': [SYS, {'role': 'user', 'content': 'Weather in Zürich?'}, CALL,
                             TOOL_ANSWER],
    'tool call, answer, reply': [{'role': 'user', 'content': 'Weather in Zürich?'}, CALL,
                                 TOOL_ANSWER, {'role': 'assistant', 'content': 'It is 21.5 °C.'}, U2],
}

# templates that read tools, and the families' special tokens
FAMILIES = {
    # name: (source for the helper, template text, bos, eos, extra variables to try, tools?)
}


def add_family(name, source, text, bos, eos, extras=({},), tools=False):
    FAMILIES[name] = (source, text, bos, eos, extras, tools)


def config_template(d):
    with open(os.path.join(d, 'tokenizer_config.json'), encoding='utf-8') as f:
        cfg = json.load(f)
    tok = lambda v: v.get('content') if isinstance(v, dict) else v  # noqa: E731
    return cfg.get('chat_template'), tok(cfg.get('bos_token')), tok(cfg.get('eos_token'))


for model in ('llama3', 'qwen3', 'mistral-32k'):
    d = os.path.join(SHARED, 'tokenizers', model)
    text, bos, eos = config_template(d)
    if text is None:
        continue  # mistral-32k ships none: the loader's refusal is a case below
    extras = ({}, {'enable_thinking': False}, {'enable_thinking': True}) if model == 'qwen3' else ({},)
    add_family('shared ' + model, 'dir:' + d, text, bos, eos, extras, tools=model == 'qwen3')

FIXTURE_TOKENS = {
    'qwen2.5.jinja': (None, '<|im_end|>', True),
    'llama3.2.jinja': ('<|begin_of_text|>', '<|eot_id|>', True),
    'smollm2.jinja': ('<|im_start|>', '<|im_end|>', False),
    'phi3.5.jinja': ('<s>', '<|endoftext|>', False),
    'gemma3.jinja': ('<bos>', '<end_of_turn>', False),
}
for fname, (bos, eos, tools) in FIXTURE_TOKENS.items():
    path = os.path.join(FIXTURES, fname)
    with open(path, encoding='utf-8') as f:
        text = f.read()
    extras = ({}, {'date_string': '01 Jan 2025'}) if fname.startswith('llama') else ({},)
    add_family('fixture ' + fname, 'file:' + path, text, bos, eos, extras, tools)

BUILTIN_TOKENS = {'chatml': (None, '<|im_end|>'), 'llama2': ('<s>', '</s>'),
                  'llama3': ('<|begin_of_text|>', '<|eot_id|>'), 'mistral': ('<s>', '</s>'),
                  'zephyr': ('<s>', '</s>'), 'gemma': ('<bos>', '<eos>'), 'phi3': ('<s>', '<|endoftext|>')}


@case('python3-jinja2 is installed (the reference)')
def _():
    assert jinja2 is not None, ('python3-jinja2 is missing (%s): apt-get install python3-jinja2, '
                                'or run scripts/setup.sh' % IMPORT_ERROR)


TOTALS = {'renders': 0, 'matched': 0, 'errors agreed': 0}


def check_family(name, source, text, bos, eos, extras, tools):
    convs = dict(CONVERSATIONS)
    if tools:
        convs.update(TOOL_CONVERSATIONS)
    cases, labels = [], []
    for cname, msgs in convs.items():
        for extra in extras:
            for agp in (False, True):
                for with_tools in ((False, True) if tools else (False,)):
                    ex = dict(extra)
                    if with_tools:
                        ex['tools'] = TOOLS
                    cases.append({'messages': msgs, 'add_generation_prompt': agp,
                                  'bos_token': bos, 'eos_token': eos, 'extra': ex, 'now': NOW})
                    labels.append('%s %s agp=%s tools=%s' % (cname, json.dumps(extra), agp, with_tools))
    got = helper(source, cases)
    bad = []
    for label, cs, (tag, out) in zip(labels, cases, got):
        want_tag, want = reference(text, cs['messages'], cs['add_generation_prompt'], bos, eos,
                                   cs['extra'])
        TOTALS['renders'] += 1
        if want_tag == 'ok' and tag == 'ok' and out == want:
            TOTALS['matched'] += 1
        elif want_tag == 'err' and tag == 'err' and want in out:
            TOTALS['errors agreed'] += 1
        else:
            bad.append('%s: jinja2 %s %r, ours %s %r' % (label, want_tag, want[:300], tag, out[:300]))
    assert not bad, '%d of %d differ:\n%s' % (len(bad), len(cases), '\n'.join(bad[:6]))


for fam, args in FAMILIES.items():
    case('%s renders as jinja2 does' % fam)(lambda args=args, fam=fam: check_family(fam, *args))


@case('built-in templates render as jinja2 does')
def _():
    # the reference reads each built-in's text from the C source (a C string literal)
    import ast
    import re
    src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'model',
                            'chat_template_load.c'), encoding='utf-8').read()
    table = src[src.index('builtins[] = {'):src.index('};', src.index('builtins[] = {'))]
    found = {}
    for m in re.finditer(r'\{"(\w+)",\s*((?:"(?:[^"\\]|\\.)*"\s*)+)\}', table):
        found[m.group(1)] = ''.join(ast.literal_eval(s) for s in
                                    re.findall(r'"(?:[^"\\]|\\.)*"', m.group(2)))
    assert sorted(found) == sorted(BUILTIN_TOKENS), sorted(found)
    for name, text in found.items():
        bos, eos = BUILTIN_TOKENS[name]
        check_family('builtin ' + name, 'builtin:' + name, text, bos, eos, ({},), False)


def helper_one(template, messages, **kw):
    """One render of a template given as text: ('ok'|'err', text) or ('compile', stderr)."""
    with tempfile.NamedTemporaryFile('w', suffix='.jinja', delete=False, encoding='utf-8') as f:
        f.write(template)
        path = f.name
    with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False, encoding='utf-8') as f:
        json.dump([dict(messages=messages, **kw)], f)
        cpath = f.name
    try:
        rc, out, err = run_bytes(HELPER, 'file:' + path, cpath)
    finally:
        os.unlink(path)
        os.unlink(cpath)
    if rc == 2:
        return 'compile', err
    assert rc == 0, 'exit %d: %s' % (rc, err)
    nl = out.index(b'\n')
    return out[:nl].split()[0].decode(), out[nl + 1:-1].decode()


SNIPPETS = [
    # whitespace control, trim_blocks and lstrip_blocks
    'a\n  {% if true %}\n    b\n  {% endif %}\nc\n',
    'a  {%- if true -%}  b  {%- endif -%}  c',
    'x\n  {# comment #}\ny{#- c -#}  z',
    '{{ 1 }}\n  {% if 1 %}x{% endif %}\n\n',
    'x{% if 1 +%}\ny{% endif %}|\n  {%+ if 1 %}w{% endif %}',
    '{% for m in [1, 2, 3] %}{{ loop.index0 }}{{ loop.index }}{{ loop.first }}{{ loop.last }}'
    '{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.revindex }};{% endfor %}',
    '{% for k, v in {"a": 1, "b": [1, 2.5, none, true]}.items() %}{{ k }}={{ v }} {% endfor %}',
    '{% for k, v in {"a": 1}|items %}{{ k ~ v }}{% endfor %}{% for x in [] %}1{% else %}empty{% endfor %}',
    '{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}{% break %}'
    '{% endif %}{{ i }}{% endfor %}',
    '{% set ns = namespace(l=none) %}{% for x in "ab" %}{% set ns.l = loop %}{% endfor %}'
    '{{ ns.l.index }}{{ ns.l.last }}',
    '{% set ns = namespace(n=0, s="") %}{% for i in range(3) %}{% set ns.n = ns.n + i %}'
    '{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}',
    '{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}'
    '{% if true %}{% set y = 3 %}{% endif %}{{ y }}',
    '{{ "abc"[::-1] }} {{ [1, 2, 3][1:] }} {{ "héllo"[1:3] }} {{ [1,2,3,4][::-2] }} {{ "x"[5:] }}',
    '{{ 7 % 3 }} {{ -7 % 3 }} {{ 7 // -2 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 - 4 }} '
    '{{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.0 }} {{ 1e-5 }} {{ 3 * "ab" }} {{ [1] + [2] }}',
    '{{ "a" ~ 1 ~ none ~ true ~ undefined_thing }} {{ "a" + "b" }} {{ "x" in "xyz" }} '
    '{{ 3 not in [1, 2] }} {{ "k" in {"k": 1} }}',
    '{{ x is defined }} {{ none is none }} {{ "s" is string }} {{ {} is mapping }} '
    '{{ [] is iterable }} {{ 3 is number }} {{ 3 is integer }} {{ 3.5 is float }} '
    '{{ true is boolean }} {{ false is false }} {{ 4 is even }} {{ 3 is odd }} '
    '{{ 9 is divisibleby 3 }} {{ x is undefined }} {{ "a" is sequence }} {{ 1 is equalto 1 }}',
    '{{ "  pad  " | trim }}|{{ "xxhixx" | trim("x") }}|{{ [1, 2] | length }}|{{ "héé" | length }}|'
    '{{ 5 | string }}|{{ "Ab" | upper }}{{ "Ab" | lower }}|{{ "a-b-c" | replace("-", "+") }}|'
    '{{ [3, 4] | first }}{{ [3, 4] | last }}|{{ nothing | default("dflt") }}|'
    '{{ "" | default("e", true) }}|{{ [1, 2, 3] | join(", ") }}|{{ "ab" | list }}|'
    '{{ "hello world" | title }}|{{ "hello" | capitalize }}',
    '{{ {"a": "é", "b": [1, 2.0, none, true], "c": {"d": "\\n\\"q\\""}} | tojson }}|'
    '{{ {"z": 1, "a": {"b": []}} | tojson(indent=2) }}|{{ [] | tojson(indent=4) }}|'
    '{{ {"b": 1, "a": 2} | tojson(sort_keys=true) }}|{{ "\\u0001" | tojson }}',
    '{{ [{"n": "a", "x": 1}, {"n": "b"}, {"n": "c", "x": 0}] | selectattr("x") | map(attribute="n") '
    '| join }} {{ [{"n": "a", "x": 1}, {"n": "b"}] | rejectattr("x", "defined") | map(attribute="n") '
    '| list }} {{ ["a", "code", "b"] | reject("equalto", "code") | join(",") }} '
    '{{ [1, 2, 3, 4] | select("odd") | list }}',
    '{{ " a b ".strip() }}|{{ "xay".lstrip("x") }}|{{ "xay".rstrip("y") }}|{{ "a,b,,c".split(",") }}|'
    '{{ " a  b ".split() }}|{{ "a b c".split(" ", 1) }}|{{ "abc".startswith("ab") }}'
    '{{ "abc".endswith("bc") }}|{{ "Ab".upper() }}{{ "Ab".lower() }}|{{ "aaa".replace("a", "b", 2) }}|'
    '{{ {"k": 1}.get("k") }}{{ {"k": 1}.get("z", 5) }}{{ {"k": 1}.get("z") }}|'
    '{{ {"a": 1, "b": 2}.keys() | list }}{{ {"a": 1, "b": 2}.values() | list }}',
    '{{ 1 if true else 2 }} {{ 1 if false else 2 }} {{ (1 if false) is defined }} '
    '{{ not true or false and true }} {{ 1 < 2 }} {{ "a" < "b" }} {{ [1, 2] == [1, 2] }} '
    '{{ 1 == 1.0 }} {{ none == false }} {{ 2 >= 2 }} {{ "b" != "a" }} {{ -3 }} {{ +3 }}',
    '{{ strftime_now("%d %b %Y %H:%M") }} {{ [1, "a", none] }} {{ {"a": "it\'s"} }} {{ "q" }}',
    '{{ messages[0].content }} {{ messages[0]["role"] }} {{ messages[5] }} {{ messages[-1].role }} '
    '{{ messages[0].missing }} {{ messages|length }} {{ add_generation_prompt }} {{ tools }}',
    '{{ raise_exception("stop here: " ~ messages[0].role) }}',
    '{{ undefined_value.attribute }}',
    '{{ "a" + 1 }}',
    '{{ nothing + "x" }}',
    '{% for x in none %}{% endfor %}',
]


@case('language constructs render as jinja2 does (%d snippets)' % len(SNIPPETS))
def _():
    bad = []
    msgs = [SYS, U1]
    for s in SNIPPETS:
        want_tag, want = reference(s, msgs, True, '<s>', '</s>', {})
        tag, out = helper_one(s, msgs, add_generation_prompt=True, bos_token='<s>', eos_token='</s>',
                              now=NOW)
        if want_tag == 'ok':
            ok = tag == 'ok' and out == want
        else:
            ok = tag == 'err' and ('raise_exception' not in s or want in out)
        if not ok:
            bad.append('%r:\n  jinja2 %s %r\n  ours   %s %r' % (s, want_tag, want, tag, out))
    assert not bad, '\n'.join(bad)


def compile_error(template):
    tag, msg = helper_one(template, [U1])
    assert tag == 'compile', 'compiled, rendering %s %r' % (tag, msg)
    return msg


@case('unsupported constructs are refused by name with line:column')
def _():
    cases = [
        ('{% macro m() %}x{% endmacro %}', "1:4: the 'macro' tag is not supported"),
        ('a\n  {% include "x" %}', "2:6: the 'include' tag is not supported"),
        ('{{ x }}\n{% set a, b = 1, 2 %}', '2:9: set with several targets'),
        ('{% for x in y if x %}{% endfor %}', '1:15: loop filters'),
        ('{{ (1, 2) }}', '1:6: tuples are not supported'),
        ('{% raw %}x{% endraw %}', "the 'raw' tag is not supported"),
        ('{% set x %}y{% endset %}', 'block set'),
        ('{{ 1 < 2 < 3 }}', 'chained comparisons'),
    ]
    for t, want in cases:
        msg = compile_error(t)
        assert want in msg, '%r: %r lacks %r' % (t, msg, want)
    # reached at render time: a filter, a test, a method
    for t, want in [('{{ "x" | wordcount }}', "1:10: filter 'wordcount' is not supported"),
                    ('\n{{ 1 is prime }}', "2:6: test 'prime' is not supported"),
                    ('{{ "a".zfill(3) }}', "string method 'zfill' is not supported"),
                    ('{{ "%s" % 1 }}', "string formatting with '%' is not supported"),
                    ('{{ loop.cycle }}', "'loop' is undefined")]:
        tag, msg = helper_one(t, [U1])
        assert tag == 'err' and want in msg, '%r: %s %r lacks %r' % (t, tag, msg, want)


@case('malformed templates are refused with line:column')
def _():
    for t, want in [('{% if x %}a', 'missing {% endif %}'),
                    ('{% for x in y %}', 'missing {% endfor %}'),
                    ("{{ 'abc }}", '1:4: unterminated string literal'),
                    ('{{ 1 + }}', "1:8: unexpected 'end of tag'"),
                    ('x\n{# never closed', '2:1: unterminated comment'),
                    ('{% endif %}', "unknown tag 'endif'"),
                    ('{% if x %}{% endfor %}', "unexpected 'endfor' tag"),
                    ('{{ a ! b }}', "unexpected '!'"),
                    ('{% %}', 'expected a tag name')]:
        msg = compile_error(t)
        assert want in msg and msg.startswith('file:'), '%r: %r lacks %r' % (t, msg, want)


@case('hostile templates hit bounds, not the stack or memory')
def _():
    msg = compile_error('{{ ' + '(' * 500 + '1' + ')' * 500 + ' }}')
    assert 'nested more than 64 deep' in msg, msg
    msg = compile_error('{% if 1 %}' * 200 + '{% endif %}' * 200)
    assert 'nested more than 64 deep' in msg, msg
    tag, msg = helper_one('{% for i in range(100000) %}{{ "x" * 1000 }}{% endfor %}', [U1])
    assert tag == 'err' and 'output longer than' in msg, (tag, msg[:200])
    tag, msg = helper_one('{% set r = range(10000) %}{% for i in r %}{% for j in r %}{% endfor %}'
                          '{% endfor %}', [U1])
    assert tag == 'err' and 'steps' in msg, (tag, msg[:200])
    tag, msg = helper_one('{{ x' + ' + x' * 5000 + ' }}', [U1], extra={'x': 1})
    assert tag == 'err' and 'nested more than' in msg, (tag, msg[:200])
    tag, msg = helper_one('{{ range(100001) | length }}', [U1])
    assert tag == 'err' and 'Range too big' in msg, (tag, msg[:200])


@case('bad messages and variables are refused by name')
def _():
    t = '{{ messages }}'
    for messages, want in [({'role': 'user'}, 'messages: not a JSON array'),
                           ([U1, 'text'], 'messages[1]: not a JSON object'),
                           (None, 'messages: not a JSON array')]:
        tag, msg = helper_one(t, messages)
        assert tag == 'err' and want in msg, (tag, msg)
    tag, msg = helper_one(t, [U1], extra=[1])
    assert tag == 'err' and 'extra variables: not a JSON object' in msg, (tag, msg)


@case('loader: chat_template.jinja first, a list picks "default", none refused by file')
def _():
    with tempfile.TemporaryDirectory() as d:
        cfg = {'bos_token': {'content': '<B>'}, 'eos_token': '<E>',
               'chat_template': [{'name': 'tool_use', 'template': 'T{{ bos_token }}'},
                                 {'name': 'default', 'template': 'D{{ bos_token }}{{ eos_token }}'}]}
        with open(os.path.join(d, 'tokenizer_config.json'), 'w') as f:
            json.dump(cfg, f)
        cases = os.path.join(d, 'cases.json')
        with open(cases, 'w') as f:
            json.dump([{'messages': [U1]}], f)
        rc, out, err = run_bytes(HELPER, 'dir:' + d, cases)
        assert rc == 0 and out == b'ok 7\nD<B><E>\n', (rc, out, err)
        with open(os.path.join(d, 'chat_template.jinja'), 'w') as f:
            f.write('J{{ messages[0].content }}\n')
        rc, out, err = run_bytes(HELPER, 'dir:' + d, cases)
        assert rc == 0 and out == b'ok 7\nJHello!\n', (rc, out, err)
        os.unlink(os.path.join(d, 'chat_template.jinja'))
        cfg['chat_template'] = [{'name': 'tool_use', 'template': 'T'}]
        with open(os.path.join(d, 'tokenizer_config.json'), 'w') as f:
            json.dump(cfg, f)
        rc, out, err = run_bytes(HELPER, 'dir:' + d, cases)
        assert rc == 2 and 'tokenizer_config.json: chat_template: a list without a "default"' in err, err
    mistral = os.path.join(SHARED, 'tokenizers', 'mistral-32k')
    rc, out, err = run_bytes(HELPER, 'dir:' + mistral, '/dev/null')
    assert rc == 2 and 'tokenizer_config.json: chat_template: missing' in err, (rc, err)
    rc, out, err = run_bytes(HELPER, 'builtin:nosuch', '/dev/null')
    assert rc == 2 and 'no such built-in' in err, err


@case('totals')
def _():
    print('# %d template x conversation renders: %d identical to jinja2, %d refused by both '
          '(raise_exception with the same message)' % (TOTALS['renders'], TOTALS['matched'],
                                                       TOTALS['errors agreed']))
    assert TOTALS['renders'] > 0 and TOTALS['matched'] + TOTALS['errors agreed'] == TOTALS['renders']


report()
