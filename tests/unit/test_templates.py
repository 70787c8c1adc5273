from __future__ import annotations

import pytest

from notifier import templates
from notifier.errors import InvalidNotification


def test_renders_event_data() -> None:
    context = {"data": {"customer": {"email": "ada@example.com", "name": "Ada"}}}
    assert templates.render("recipient", "{{ data.customer.email }}", context) == "ada@example.com"
    assert templates.render("body", "Hi {{ data.customer.name }}!", context) == "Hi Ada!"


def test_plain_text_is_returned_as_is() -> None:
    assert templates.render("body", "no variables here", {}) == "no variables here"


def test_a_syntax_error_names_the_field_and_line() -> None:
    with pytest.raises(InvalidNotification) as caught:
        templates.check("body", "line one\nHello {{ data.name ")
    assert caught.value.field == "body"
    assert "line 2" in caught.value.reason


def test_a_missing_variable_fails_instead_of_rendering_half() -> None:
    with pytest.raises(templates.TemplateRenderError) as caught:
        templates.render("subject", "Order {{ data.order.id }} shipped", {"data": {}})
    assert caught.value.field == "subject"
    assert "order" in caught.value.reason


def test_the_sandbox_refuses_unsafe_access() -> None:
    with pytest.raises(templates.TemplateRenderError):
        templates.render("body", "{{ data.__class__.__mro__ }}", {"data": {}})
    with pytest.raises(templates.TemplateRenderError):
        templates.render("body", "{{ data.update({'x': 1}) }}", {"data": {}})


@pytest.mark.parametrize(
    "source",
    [
        "{{ 1 // data.n }}",
        "{{ data.s + 1 }}",
        "{{ 'a' * 10**8 }}",
        "{{ 2 ** 100000 }}",
        "{% for i in range(10**6) %}x{% endfor %}",
        "{{ lipsum(n=100000) }}",
    ],
)
def test_runtime_errors_and_costly_templates_fail_cleanly(source: str) -> None:
    with pytest.raises(templates.TemplateRenderError):
        templates.render("body", source, {"data": {"n": 0, "s": "x"}})


def test_costly_constants_are_not_evaluated_at_save_time() -> None:
    templates.check("body", "{{ 'a' * 10**8 }}")  # returns at once: nothing is folded at compile time


def test_data_keys_win_over_dict_methods() -> None:
    context = {"data": {"items": ["pen", "ink"]}}
    assert templates.render("body", "{% for i in data.items %}{{ i }};{% endfor %}", context) == "pen;ink;"
