"""The forms of an HTML page, read as a browser reads them (``html.parser``, no JavaScript)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[str] = field(default_factory=list)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._open: Form | None = None
        self._in_button = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._open = Form(attributes.get("action", ""), attributes.get("method", "GET").upper())
            self.forms.append(self._open)
        elif tag == "input" and self._open is not None and "name" in attributes:
            self._open.fields[attributes["name"]] = attributes.get("value", "")
        elif tag == "button" and self._open is not None:
            self._in_button = True
            self._open.buttons.append("")

    def handle_data(self, data: str) -> None:
        if self._in_button and self._open is not None:
            self._open.buttons[-1] += data.strip()

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None
        elif tag == "button":
            self._in_button = False


def forms(html: str) -> list[Form]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def form_with_button(html: str, label: str, **fields: str) -> Form:
    """The one form whose button reads ``label`` and whose fields include ``fields``."""
    found = [f for f in forms(html) if label in f.buttons and fields.items() <= f.fields.items()]
    assert len(found) == 1, f"{len(found)} forms with a {label!r} button and {fields} in:\n{html}"
    return found[0]
