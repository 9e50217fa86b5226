"""chat_ref.py: chat templates rendered as transformers' apply_chat_template renders them
(python3-jinja2: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
extensions=[loopcontrols]), transformers' tojson, raise_exception and strftime_now), the
reference of the chat template and SFT tests."""

import json
from datetime import datetime, timezone

NOW = 1722000000  # 26 Jul 2024, 13:20 UTC: strftime_now's time on both sides

try:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    IMPORT_ERROR = None
except ImportError as e:
    jinja2 = None
    IMPORT_ERROR = str(e)


def reference(template, messages, add_generation_prompt, bos, eos, extra):
    """transformers' render: ('ok', text) or ('err', message)."""
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.fromtimestamp(NOW, timezone.utc).strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters['tojson'] = tojson
    env.globals['raise_exception'] = raise_exception
    env.globals['strftime_now'] = strftime_now
    kwargs = {}
    if bos is not None:
        kwargs['bos_token'] = bos
    if eos is not None:
        kwargs['eos_token'] = eos
    kwargs.update(extra or {})
    try:
        out = env.from_string(template).render(
            messages=messages, tools=kwargs.pop('tools', None), documents=kwargs.pop('documents', None),
            add_generation_prompt=add_generation_prompt, **kwargs)
        return 'ok', out
    except Exception as e:  # noqa: BLE001 (TemplateError, and TypeError for bad operands)
        return 'err', str(e)
