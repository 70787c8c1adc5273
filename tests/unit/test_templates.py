from __future__ import annotations

import threading
import time
import tracemalloc
from typing import Any

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


NESTED = (
    "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(20) %}{% endfor %}{% endfor %}{% endfor %}"
)


def _cost(source: str, context: dict[str, Any] | None = None, bound: float = 2.0) -> tuple[BaseException | str, int]:
    """Render in a thread; (the error or output, peak bytes allocated). Fails if not done in ``bound`` s."""
    result: list[BaseException | str] = []

    def run() -> None:
        try:
            result.append(templates.render("body", source, context or {}))
        except BaseException as exc:
            result.append(exc)

    tracemalloc.start()
    try:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(bound)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not thread.is_alive(), f"the render did not finish within {bound} s"
    return result[0], peak


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x'.ljust(50000000) }}",
        "{{ 'x'.rjust(50000000) }}",
        "{{ 'x'.center(50000000) }}",
        "{{ 'x'.zfill(50000000) }}",
        "{{ ('\t' * 60000).expandtabs(1000) }}",
        "{{ 'x'|center(50000000) }}",
        "{{ '%*s'|format(30000000, 'x') }}",
        "{{ '%*s' % (30000000, 'x') }}",
        "{{ ('%s' * 1000) % ((('x' * 60000),) * 1000) }}",
        "{{ '{:>50000000}'.format('x') }}",
        "{{ '{a:>50000000}'.format_map({'a': 'x'}) }}",
        "{{ ('x' * 60000).replace('x', 'y' * 1000) }}",
        "{{ ('x' * 60000)|replace('x', 'y' * 1000) }}",
        "{{ ('y' * 60000).join(range(1000)|map('string')) }}",
        "{{ range(1000)|join('y' * 60000) }}",
        "{{ ('x' * 60000).translate({120: 'y' * 1000}) }}",
        "{{ ((((9**64)**64)**64)**16) }}",
        "{{ (9**4000) * (9**4000) * (9**4000) * (9**4000) * (9**4000) }}",
        "{{ [['x' * 60000]] * 1000 }}",
        "{{ ('x' * 60000) + ('x' * 60000) }}",
        "{% set ns = namespace(x='ab') %}{% for i in range(30) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x }}",
        "{% set s %}{% for i in range(1000) %}{{ 'x' * 60000 }}{% endfor %}{% endset %}{{ s|length }}",
        "{{ (1).to_bytes(100000000, 'big')|length }}",
        "{{ 1.5|round(100000000, 'ceil') }}",
        "{{ [1]|batch(100000000, 'x')|list|length }}",
        "{{ ('x\n' * 30000)|indent(100000) }}",
        "{{ ('x ' * 30000)|wordwrap(1, wrapstring='y' * 1000) }}",
        "{{ ([['x' * 60000]] * 1000)|sum(start=[]) }}",
    ],
)
def test_costly_templates_are_refused_before_they_allocate(source: str) -> None:
    outcome, peak = _cost(source)
    assert peak < 8_000_000, f"{peak:,} bytes allocated before the refusal"
    assert isinstance(outcome, templates.TemplateRenderError), outcome
    assert isinstance(outcome, templates.TemplateBudgetError), outcome


@pytest.mark.parametrize(
    "source",
    [
        NESTED,
        "{% for a in range(1000) %}{% for b in range(1000) %}{{ '' }}{% endfor %}{% endfor %}",
        "{% macro m(n) %}{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}{% endmacro %}"
        "{{ m(1) }}",
    ],
)
def test_a_render_stops_at_its_budget(source: str) -> None:
    started = time.perf_counter()
    outcome, _ = _cost(source)
    assert time.perf_counter() - started < 1.0
    assert isinstance(outcome, templates.TemplateRenderError), outcome
    assert "budget of 50 ms" in outcome.reason
    assert isinstance(outcome, templates.TemplateBudgetError), outcome


def test_the_budget_is_the_callers() -> None:
    with pytest.raises(templates.TemplateBudgetError, match="budget of 1 ms"):
        templates.render("body", NESTED, {}, budget=0.001)
    loop = "{% for a in range(1000) %}{% for b in range(100) %}{% endfor %}{% endfor %}done"
    assert templates.render("body", loop, {}, budget=5) == "done"


def test_templates_within_bounds_render_as_before() -> None:
    context = {"data": {"items": [{"name": f"item{i}", "qty": i} for i in range(20)], "text": "a\tb"}}
    source = (
        "{% for i in data['items'] %}{{ i.name|upper }} x{{ i.qty }}{% if not loop.last %}, {% endif %}{% endfor %}"
        "|{{ 'ab'.ljust(4, '.') }}|{{ '%05.1f' % 3.14159 }}|{{ '{:>4}'.format(7) }}|{{ 'a-b'.replace('-', '+') }}"
        "|{{ '%s=%s'|format('k', 'v') }}|{{ [1, 2]|join(',') }}|{{ 'x' ~ 1 ~ none }}|{{ 2 ** 10 }}|{{ [1, 2]|sum }}"
        "|{{ data.text.expandtabs(4) }}|{{ 'hello world'|wordwrap(5) }}|{{ 'x' * 3 }}|{{ [1] + [2] }}"
    )
    out = templates.render("body", source, context)
    assert out.startswith("ITEM0 x0, ITEM1 x1")
    assert out.endswith("|ab..|003.1|   7|a+b|k=v|1,2|x1None|1024|3|a   b|hello\nworld|xxx|[1, 2]")


def test_a_budget_ends_with_its_render() -> None:
    with pytest.raises(templates.TemplateBudgetError):
        templates.render("body", NESTED, {}, budget=0.01)
    loop = "{% for a in range(1000) %}{% for b in range(300) %}{% endfor %}{% endfor %}done"
    assert templates.render("body", loop, {}, budget=10) == "done"
    assert templates._render_state.deadline == float("inf")  # nothing left armed for this thread


@pytest.mark.parametrize(
    "source",
    [
        # an exponential call tree with no loop in it
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        # loops over long strings rather than ranges
        "{% set s = 'x' * 60000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
        # a filter's own iteration, nested in loops
        "{% for a in range(1000) %}{% for b in range(1000) %}{{ range(1000)|select('odd')|list|length }}"
        "{% endfor %}{% endfor %}",
    ],
)
def test_every_repeating_step_counts_against_the_budget(source: str) -> None:
    started = time.perf_counter()
    outcome, _ = _cost(source)
    assert time.perf_counter() - started < 1.0
    assert isinstance(outcome, templates.TemplateBudgetError), outcome
