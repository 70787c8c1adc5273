"""Jinja2 templates for rules: subject, body and recipients, sandboxed and strict.

A template that does not parse is refused when the rule is saved (:func:`check`, naming the field
and the line); a variable missing when it is rendered raises :class:`TemplateRenderError` so the
notification fails with that reason instead of going out half-rendered.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notifier.errors import InvalidNotification, NotifierError

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class TemplateRenderError(NotifierError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@lru_cache(maxsize=1024)
def _compile(source: str) -> Template:
    return _env.from_string(source)


def check(field: str, source: str) -> None:
    """Refuse a template that does not parse, naming ``field`` and the line."""
    try:
        _compile(source)
    except TemplateSyntaxError as exc:
        raise InvalidNotification(field, f"template error at line {exc.lineno}: {exc.message}") from None


def render(field: str, source: str, context: dict[str, Any]) -> str:
    """Render ``source``; a missing variable or a sandbox violation raises :class:`TemplateRenderError`."""
    if "{" not in source:
        return source
    try:
        return _compile(source).render(context)
    except TemplateError as exc:
        raise TemplateRenderError(field, f"cannot render the template: {exc}") from None
