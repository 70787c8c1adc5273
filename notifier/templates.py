"""Jinja2 templates for rules: subject, body and recipients, sandboxed and strict.

A template that does not parse is refused when the rule is saved (:func:`check`, naming the field
and the line); one that cannot be rendered — a missing variable, a type error, a sandbox
violation, output too large — raises :class:`TemplateRenderError`, so the notification fails with
that reason instead of going out half-rendered. The sandbox also bounds what a template can cost:
no string or list repetition beyond :data:`MAX_OUTPUT`, no powers beyond small exponents, ranges
of at most :data:`MAX_RANGE` items, and no ``lipsum``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notifier.errors import InvalidNotification, NotifierError

MAX_OUTPUT = 65_536
MAX_RANGE = 1_000
MAX_EXPONENT = 64


class TemplateRenderError(NotifierError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _range(*args: int) -> range:
    bounded = range(*args)
    if len(bounded) > MAX_RANGE:
        raise SecurityError(f"range() is limited to {MAX_RANGE} items")
    return bounded


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponents are limited to {MAX_EXPONENT}")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and len(seq) * times > MAX_OUTPUT:
                    raise SecurityError(f"repetition is limited to {MAX_OUTPUT} items")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # ``data.items`` means the key "items" of the event's data, not dict.items.
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


_env = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_env.globals.pop("lipsum", None)
_env.globals["range"] = _range


@lru_cache(maxsize=1024)
def _compile(source: str) -> Template:
    return _env.from_string(source)


def check(field: str, source: str) -> None:
    """Refuse a template that does not parse, naming ``field`` and the line."""
    try:
        _compile(source)
    except TemplateSyntaxError as exc:
        raise InvalidNotification(field, f"template error at line {exc.lineno}: {exc.message}") from None
    except SecurityError as exc:
        raise InvalidNotification(field, f"template refused: {exc}") from None


def render(field: str, source: str, context: dict[str, Any]) -> str:
    """Render ``source``; whatever goes wrong raises :class:`TemplateRenderError` with the reason."""
    if "{" not in source:
        return source
    try:
        output = _compile(source).render(context)
    except Exception as exc:  # a template can raise anything its expressions can
        raise TemplateRenderError(field, f"cannot render the template: {type(exc).__name__}: {exc}") from None
    if len(output) > MAX_OUTPUT:
        raise TemplateRenderError(field, f"the rendered text is longer than {MAX_OUTPUT} characters")
    return output
