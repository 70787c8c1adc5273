"""Jinja2 templates for rules: subject, body and recipients, sandboxed, strict and on a budget.

A template that does not parse is refused when the rule is saved (:func:`check`, naming the field
and the line); one that cannot be rendered — a missing variable, a type error, a sandbox
violation, a render over its budget — raises :class:`TemplateRenderError`, so the notification
fails with that reason instead of going out half-rendered.

Every render is bounded twice over:

* **Size.** No value a template builds, and not the output, may exceed :data:`MAX_OUTPUT`
  characters. The output is counted while it streams (``Template.generate``), and every
  operation that can allocate in one step is checked *before* it runs: string and list
  repetition, ``+`` and ``~``, powers and products of integers (:data:`MAX_INT_BITS`),
  ``%``-formatting, ``str.format``/``format_map``, the string methods that pad, replace, join
  or translate (``ljust``, ``rjust``, ``center``, ``zfill``, ``expandtabs``, ``replace``,
  ``join``, ``translate``), ``int.to_bytes``, and the filters that grow their input
  (``format``, ``center``, ``indent``, ``wordwrap``, ``replace``, ``join``, ``urlize``,
  ``batch``, ``slice``, ``round``, ``sum``). Containers count by the text they would print as,
  so a list that repeats a long string is as large as the string repeated.
* **Time.** A render has a budget (``NOTIFIER_TEMPLATE_RENDER_BUDGET``, 50 ms by default),
  checked at every step that can repeat: each iteration of a ``for`` loop (the compiled loop
  iterates through :meth:`_Environment.budget_iter`, so empty loops count too), each call (macros,
  methods, ``loop()`` of a recursive loop) and each filter. Without those a template is
  straight-line code, as long as its source. Ranges hold at most :data:`MAX_RANGE` items and
  there is no ``lipsum``.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from jinja2 import ChainableUndefined, StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import _PassArg

from notifier.errors import InvalidNotification, NotifierError

MAX_OUTPUT = 65_536
"""Characters: the longest output, and the largest value (as text) a template may build."""
MAX_RANGE = 1_000
MAX_INT_BITS = 16_384
"""Largest integer a template may compute (Python prints at most 4,300 digits anyway)."""
MAX_ROUND_PRECISION = 100
DEFAULT_BUDGET = 0.05
"""Seconds one render may take; the composition root passes ``NOTIFIER_TEMPLATE_RENDER_BUDGET``."""

YIELD_EVERY = 0.0005
"""Seconds a render runs before it lets other threads take the GIL."""

_TEXT = (str, bytes)


class TemplateRenderError(NotifierError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class TemplateBudgetError(TemplateRenderError):
    """The render went over its time or size budget, or asked the sandbox for too much."""


class _OverBudget(Exception):
    """Raised inside a render at its first checkpoint past the deadline."""


def _limit(what: str, size: object, bound: int = MAX_OUTPUT) -> None:
    if isinstance(size, int) and size > bound:
        raise SecurityError(f"{what} is limited to {bound}")


def _weight(value: Any, limit: int = MAX_OUTPUT) -> int:
    """About how many characters ``value`` prints as; stops counting once past ``limit``."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, _TEXT):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        else:
            total += 8
    return total


def _bounded(value: Any) -> Any:
    """``value``, unless it would print as more than :data:`MAX_OUTPUT` characters."""
    if not isinstance(value, bool | float | type(None)) and _weight(value) > MAX_OUTPUT:
        raise SecurityError(f"values are limited to {MAX_OUTPUT} characters")
    return value


MAX_EMITTED = 16 * MAX_OUTPUT
"""Characters all of a render's ``{{ … }}`` may produce, into blocks and macros included."""


class _RenderState(threading.local):
    """The running render's deadline and counters, per thread (defaults: no render running)."""

    deadline = math.inf
    pause = math.inf
    emitted = 0


_render_state = _RenderState()


def _checkpoint() -> None:
    """Stop the render once past its deadline; now and then let other threads have the GIL."""
    state = _render_state
    moment = time.perf_counter()
    if moment > state.pause:
        # A render is pure Python and holds the GIL; letting go of it now and then keeps the
        # other threads (the API's event loop) answering while a long render runs.
        time.sleep(0)
        state.pause = moment + YIELD_EVERY
    if moment > state.deadline:
        raise _OverBudget


def _emit(value: Any) -> Any:
    """Every ``{{ … }}`` value: bounded on its own, and counted against :data:`MAX_EMITTED`."""
    size = _weight(_bounded(value))
    _render_state.emitted += size
    if _render_state.emitted > MAX_EMITTED:
        raise SecurityError(f"a render may produce at most {MAX_EMITTED} characters, blocks and macros included")
    return value


def _range(*args: int) -> range:
    bounded = range(*args)
    if len(bounded) > MAX_RANGE:
        raise SecurityError(f"range() is limited to {MAX_RANGE} items")
    return bounded


_PERCENT = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?(?P<flags>[#0\- +]*)(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?(?P<type>.)",
    re.DOTALL,
)


def _percent(template: str, values: Any) -> str:
    """``template % values``, one conversion at a time, each bounded and the total counted."""
    mapping = values if isinstance(values, Mapping) else None
    args = list(values) if isinstance(values, tuple) else [values]
    if mapping is not None:
        args = []
    parts: list[str] = []
    total = 0
    position = 0
    for match in _PERCENT.finditer(template):
        literal = template[position : match.start()]
        position = match.end()
        parts.append(literal)
        total += len(literal)
        if match["type"] == "%" and not (match["key"] or match["width"] or match["precision"]):
            parts.append("%")
            total += 1
            continue
        spec = "%" + (match["flags"] or "")
        for name in ("width", "precision"):
            number = match[name]
            if number == "*":
                if not args:
                    raise TypeError("not enough arguments for format string")
                number = str(args.pop(0))
            if number is not None:
                if not number.lstrip("-").isdigit():
                    raise TypeError("* wants int")
                _limit(f"a format {name}", abs(int(number)))
                spec += ("." if name == "precision" else "") + number
        spec += match["type"]
        if match["key"] is not None:
            if mapping is None:
                raise TypeError("format requires a mapping")
            value = mapping[match["key"]]
        elif mapping is not None and match["type"] != "%":
            value = mapping
        else:
            if not args:
                raise TypeError("not enough arguments for format string")
            value = args.pop(0)
        piece = spec % (_bounded(value),)
        parts.append(piece)
        total += len(piece)
        _limit("formatted text", total)
    parts.append(template[position:])
    if args and mapping is None:
        raise TypeError("not all arguments converted during string formatting")
    text = "".join(parts)
    _limit("formatted text", len(text))
    return text


class _Formatter(SandboxedFormatter):
    """``str.format`` in the sandbox, with widths and the total length bounded."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self._total = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        for number in re.findall(r"\d+", format_spec):
            _limit("a format width or precision", int(number))
        piece = format(_bounded(value), format_spec)
        self._total += len(piece)
        _limit("formatted text", self._total)
        return piece


def _check_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a call of a built-in method that would allocate more than the bound."""
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if isinstance(owner, _TEXT):
        if name in ("ljust", "rjust", "center", "zfill") and args:
            _limit(f"{name}() width", args[0])
        elif name == "expandtabs":
            tabsize = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(tabsize, int):
                _limit("expandtabs() output", len(owner) * max(tabsize, 1))
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], _TEXT) and isinstance(args[1], _TEXT):
            found = owner.count(args[0])  # type: ignore[arg-type]
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            if isinstance(count, int) and count >= 0:
                found = min(found, count)
            _limit("replace() output", len(owner) + found * (len(args[1]) - len(args[0])))
        elif name == "join" and args:
            items = list(args[0])
            size = sum(len(i) if isinstance(i, _TEXT) else 0 for i in items) + len(owner) * max(len(items) - 1, 0)
            _limit("join() output", size)
            return (items, *args[1:])
        elif name == "translate" and args and isinstance(args[0], Mapping):
            growth = max((len(v) for v in args[0].values() if isinstance(v, _TEXT)), default=1)
            _limit("translate() output", len(owner) * max(growth, 1))
    elif isinstance(owner, int) and name == "to_bytes":
        _limit("to_bytes() length", args[0] if args else kwargs.get("length", 1))
    return args


def _check_center(value: Any, width: Any = 80) -> None:
    _limit("center width", width)


def _check_indent(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    text = str(s)
    step = width if isinstance(width, int) else len(str(width))
    _limit("indent output", len(text) + (text.count("\n") + 1) * step)


def _check_wordwrap(
    s: Any, width: Any = 79, break_long_words: bool = True, wrapstring: Any = None, break_on_hyphens: bool = True
) -> None:
    text = str(s)
    if isinstance(width, int):
        lines = min(len(text) + 1, len(text) // max(width, 1) + len(text.split()) + text.count("\n") + 1)
        _limit("wordwrap output", len(text) + lines * len(str(wrapstring or "\n")))


def _check_replace(s: Any, old: Any, new: Any, count: Any = None) -> None:
    text, old_text, new_text = str(s), str(old), str(new)
    found = text.count(old_text)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    _limit("replace output", len(text) + found * (len(new_text) - len(old_text)))


def _check_urlize(
    value: Any, trim_url_limit: Any = None, nofollow: bool = False, target: Any = None, rel: Any = None, **_: Any
) -> None:
    text = str(value)
    words = len(text.split()) + 1
    _limit("urlize output", words * (len(str(target or "")) + len(str(rel or ""))))


def _check_batch(value: Any, linecount: Any, fill_with: Any = None) -> None:
    _limit("batch size", linecount)


def _check_slice(value: Any, slices: Any, fill_with: Any = None) -> None:
    _limit("slice count", slices, MAX_RANGE)


def _check_round(value: Any, precision: Any = 0, method: str = "common") -> None:
    if isinstance(precision, int):
        _limit("round precision", abs(precision), MAX_ROUND_PRECISION)


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise SecurityError("format takes positional or keyword arguments, not both")
    return _percent(str(value), kwargs or args)


def _sum_filter(iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
    if not isinstance(start, int | float):
        raise SecurityError("sum adds numbers only")
    total = start
    for item in iterable:
        value = item if attribute is None else _env.getattr(item, attribute)
        if not isinstance(value, int | float):
            raise SecurityError("sum adds numbers only")
        total += value
    return total


_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _check_center,
    "indent": _check_indent,
    "wordwrap": _check_wordwrap,
    "replace": _check_replace,
    "urlize": _check_urlize,
    "batch": _check_batch,
    "slice": _check_slice,
    "round": _check_round,
}


def _guard(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` with its input and output bounded, and its growing parameters checked."""
    skip = 1 if _PassArg.from_obj(original) is not None else 0
    check = _FILTER_CHECKS.get(name)

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _checkpoint()
        value, *params = args[skip:]
        _bounded(value)
        if check is not None:
            check(value, *params, **kwargs)
        if name == "join":
            items = [_bounded(item) for item in value]
            separator = str(params[0] if params else kwargs.get("d", ""))
            _limit("join output", sum(len(str(i)) for i in items) + len(separator) * max(len(items) - 1, 0))
            args = (*args[:skip], items, *params)
        return _bounded(original(*args, **kwargs))

    return guarded


def _budgeted(iterable: nodes.Node) -> nodes.Node:
    """``iterable`` drawn through :meth:`_Environment.budget_iter` (an environment attribute,
    so no name a template defines can stand in for it)."""
    call = nodes.Call(nodes.EnvironmentAttribute("budget_iter"), [iterable], [], None, None)
    return call.set_lineno(iterable.lineno)


def _is_budgeted(iterable: nodes.Node) -> bool:
    target = getattr(iterable, "node", None)
    return isinstance(target, nodes.EnvironmentAttribute) and target.name == "budget_iter"


class _CodeGenerator(CodeGenerator):
    def visit_For(self, node: nodes.For, frame: Frame) -> None:  # noqa: N802 (Jinja's visitor name)
        """Every loop iterates through :meth:`_Environment.budget_iter`."""
        if not _is_budgeted(node.iter):
            node.iter = _budgeted(node.iter)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802 (Jinja's visitor name)
        """``a ~ b`` goes through :meth:`_Environment.concat_values`, which bounds it."""
        self.write("environment.concat_values((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _concat(parts: Iterable[Any]) -> str:
    """What the template's buffers (macros, ``set`` blocks, ``filter`` blocks) join, bounded."""
    collected = []
    total = 0
    for part in parts:
        total += len(part)
        _limit("a block's output", total)
        collected.append(part)
    return "".join(collected)


class _Environment(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(_concat)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            _limit("a power's size in bits", max(left.bit_length() - 1, 0) * right, MAX_INT_BITS)
        elif operator == "*":
            if isinstance(left, int) and isinstance(right, int) and not isinstance(left, bool):
                _limit("a product's size in bits", left.bit_length() + right.bit_length(), MAX_INT_BITS)
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | bytes | list | tuple) and isinstance(times, int) and times > 0:
                    _limit("repetition", _weight(seq) * times)
        elif operator == "+" and isinstance(left, str | bytes | list | tuple):
            _limit("concatenation", _weight(left) + _weight(right))
        elif operator == "%" and isinstance(left, str):
            return _percent(left, right)
        return super().call_binop(context, operator, left, right)

    def budget_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """What a ``for`` loop iterates: ``iterable``, with a budget check before each item."""
        for item in iterable:
            _checkpoint()
            yield item

    def concat_values(self, values: tuple[Any, ...]) -> str:
        """``a ~ b ~ …``: each value as text, the total bounded."""
        return _concat(str(_bounded(value)) for value in values)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _checkpoint()
        args = _check_method(__obj, args, kwargs)
        return _bounded(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        source: str = value.__self__
        is_map = value.__name__ == "format_map"

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                return str(_Formatter(self).vformat(source, (), args[0]))
            return str(_Formatter(self).vformat(source, args, kwargs))

        return bounded_format

    def getattr(self, obj: Any, attribute: str) -> Any:
        # ``data.items`` means the key "items" of the event's data, not dict.items.
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


_env = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_emit)
_env.globals.pop("lipsum", None)
_env.globals["range"] = _range
_env.filters = {name: _guard(name, f) for name, f in _env.filters.items()}
_env.filters["format"] = _guard("format", _format_filter)
_env.filters["sum"] = _guard("sum", _sum_filter)


class Sample(ChainableUndefined):
    """Stands for event data the rule has not seen yet (a save-time test render): every key
    exists, reads as ``sample`` and is false; arithmetic on it fails, as on a missing value."""

    __slots__ = ()

    def __str__(self) -> str:
        return "sample"


@functools.lru_cache(maxsize=1024)
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


def _stream(template: Template, context: dict[str, Any], budget: float) -> Iterator[str]:
    """The template's output, with this thread's render state set to ``budget`` from now."""
    state = _render_state
    started = time.perf_counter()
    state.deadline, state.pause, state.emitted = started + budget, started + YIELD_EVERY, 0
    try:
        yield from template.generate(context)
    finally:
        state.deadline, state.pause = math.inf, math.inf


def render(field: str, source: str, context: dict[str, Any], *, budget: float = DEFAULT_BUDGET) -> str:
    """Render ``source`` within ``budget`` seconds and :data:`MAX_OUTPUT` characters.

    Whatever goes wrong raises :class:`TemplateRenderError` with the reason;
    :class:`TemplateBudgetError` when the render cost too much.
    """
    if "{" not in source:
        return source
    started = time.perf_counter()
    over = f"the render took longer than its budget of {budget * 1000:g} ms"
    parts: list[str] = []
    size = 0
    try:
        for chunk in _stream(_compile(source), context, budget):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise TemplateBudgetError(field, f"the rendered text is longer than {MAX_OUTPUT} characters")
            parts.append(chunk)
    except TemplateRenderError:
        raise
    except _OverBudget:
        raise TemplateBudgetError(field, over) from None
    except SecurityError as exc:
        raise TemplateBudgetError(field, f"the template asked too much of the sandbox: {exc}") from None
    except Exception as exc:  # a template can raise anything its expressions can
        if time.perf_counter() - started > budget:  # the budget's exception, caught and replaced inside
            raise TemplateBudgetError(field, over) from None
        raise TemplateRenderError(field, f"cannot render the template: {type(exc).__name__}: {exc}") from None
    return "".join(parts)
