"""Chat templates rendered under bounds: no value, output or amount of work beyond fixed limits.

A router file carries its chat template, and Jinja2's sandbox (llama-cpp-python's
`ImmutableSandboxedEnvironment`) stops attribute tricks but not size: `{{ 'x' * 10**10 }}`, a loop
that doubles a string, `'{:>999999999}'.format(1)` or a macro that calls itself twice allocate or
spin without limit. `BoundedChatFormatter` is llama-cpp-python's `Jinja2ChatFormatter` (same
environment options, extensions, globals and `tojson`, so a template within the bounds renders
byte for byte the same) on an environment where:

- every step that can make a value larger than its inputs is measured before it runs: the
  `*`, `**`, `%` and `+` operators, `~`, the string methods and filters that take a width, a
  count or a separator, and any container about to become text (`{{ list }}`, `|tojson`,
  `|string`...); nothing may exceed `MAX_TEXT` characters (`MAX_INT_BITS` for integers);
- every step spends from one budget per render (`WORK_BUDGET`): loop iterations, calls,
  operators and attribute look-ups cost `STEP`, and every character written or built costs one,
  so the total work of a render is bounded whatever the loops and macros do.

A bound that is hit raises `TemplateLimitError` at once. Jinja also folds constant expressions
while compiling, with no sandbox (`{{ 'x' * 10**10 }}` allocates in `from_string`), and
llama-cpp-python compiles a GGUF's `tokenizer.chat_template*` in `Llama(...)`; `folding_hazard`
finds such expressions so that a router file carrying one is refused before llama.cpp opens it.

Not bounded: the time of comparisons (`==`, `in`, `|sort`) over large structures built in the
template; they allocate nothing.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, _PassArg
from jinja2.visitor import NodeTransformer
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from markupsafe import Markup

MAX_TEXT = 1 << 22  # characters: any string or container-as-text, and the rendered prompt (4 Mi)
MAX_INT_BITS = 1 << 14  # Python will not print an int past 4,300 digits (~14,300 bits) anyway
STEP = 64  # the cost of one loop iteration, call, operator or look-up, in characters
WORK_BUDGET = 1 << 24  # per render: 256k steps or 16 Mi characters (4x the largest prompt)

_END = object()
_LOOP_FILTER = "toolroute_loop_step"  # names the instrumented template calls; not for templates
_TEXT_FILTER = "toolroute_template_text"
_CONCAT_FILTER = "toolroute_concat"


class TemplateLimitError(ValueError):
    """A chat template went past a bound while compiling or rendering."""


# -- the per-render budget ---------------------------------------------------------------------


class _Budget:
    def __init__(self, units: int) -> None:
        self.left = units


_BUDGET: ContextVar[_Budget | None] = ContextVar("toolroute_template_budget", default=None)


def _spend(units: int) -> None:
    budget = _BUDGET.get()
    if budget is None:  # compiling (constant folding): sizes are still checked, work is the template's
        return
    budget.left -= units
    if budget.left < 0:
        raise TemplateLimitError(
            f"the chat template does more work than a prompt needs (over {WORK_BUDGET:,} units: "
            f"{STEP} per loop step, call or operator, one per character)"
        )


def _check(size: int, what: str) -> None:
    if size > MAX_TEXT:
        raise TemplateLimitError(
            f"the chat template would build {what} of {size:,} characters (the limit is {MAX_TEXT:,})"
        )


# -- sizes ---------------------------------------------------------------------------------------


def _text_size(value: Any, per_item: int = 2, limit: int = MAX_TEXT) -> int:
    """About how many characters `str`, `repr` or JSON would write for `value` (at least that many,
    give or take quotes), counting shared parts each time they appear. Depth-first over iterators
    (memory grows with nesting, not size), one budget unit per part, and stops once past `limit`."""
    if isinstance(value, str):
        return len(value)
    total = 0
    stack: list[tuple[Iterator[Any], int]] = [(iter((value,)), 0)]
    while stack and total <= limit:
        parts, depth = stack[-1]
        item = next(parts, _END)
        if item is _END:
            stack.pop()
            continue
        _spend(1)
        total += (2 + per_item * depth) if depth else 0  # a separator and indentation per part
        children: Iterable[Any] | None = None
        if isinstance(item, str | bytes | bytearray):
            total += len(item) + 3
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, float):
            total += 24
        elif isinstance(item, Mapping):
            children = (part for pair in item.items() for part in pair)
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        elif isinstance(item, Namespace):  # its repr writes its attributes
            children = (object.__getattribute__(item, "_Namespace__attrs"),)
        else:
            total += 64  # Undefined, a macro, a loop: a short fixed repr
        if children is not None:
            total += 2
            stack.append((iter(children), depth + 1))
    return total


def _largest_int(values: Iterable[Any]) -> int:
    return max((abs(v) for v in values if isinstance(v, int) and not isinstance(v, bool)), default=0)


def _check_numbers(args: Iterable[Any], kwargs: Mapping[str, Any], what: str) -> None:
    """A width, count or length argument past MAX_TEXT can only be meant to exhaust memory."""
    if (largest := _largest_int([*args, *kwargs.values()])) > MAX_TEXT:
        raise TemplateLimitError(
            f"the chat template passes {largest:,} to {what} (the limit is {MAX_TEXT:,})"
        )


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 9 else MAX_TEXT + 1


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_BRACE_DIGITS = re.compile(r"\{[^{}]*\}")


def _percent_size(template: str, args: Any) -> int:
    """An upper bound on `template % args`: the text, the widths, and every spec writing all args."""
    specs = _PERCENT_SPEC.findall(template)
    widths = sum(_number(part) for spec in specs for part in spec if part and part != "*")
    star = any("*" in spec for spec in specs)
    values = args if isinstance(args, tuple) else (args,)
    return len(template) + widths + len(specs) * (_text_size(args) + (_largest_int(values) if star else 0))


def _format_size(template: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """An upper bound on `template.format(*args, **kwargs)` (nested `{:{}}` widths come from args)."""
    fields = _BRACE_DIGITS.findall(template)
    widths = sum(_number(d) for field in fields for d in re.findall(r"\d+", field))
    nested = _largest_int([*args, *kwargs.values()])
    return len(template) + widths + len(fields) * (_text_size(args) + _text_size(dict(kwargs)) + nested)


def _repeat_size(left: Any, right: Any) -> int | None:
    """The size of `left * right` when it repeats a sequence, else None."""
    for sequence, count in ((left, right), (right, left)):
        if isinstance(count, int) and isinstance(sequence, str | list | tuple):
            return _text_size(sequence) * max(count, 0)
    return None


def _charge_result(value: Any, what: str) -> Any:
    if isinstance(value, str):
        _check(len(value), what)
        _spend(len(value))
    elif isinstance(value, list | tuple | dict):
        _spend(len(value))
    return value


# -- operators and method calls ----------------------------------------------------------------


def _check_binop(operator: str, left: Any, right: Any) -> None:
    integers = isinstance(left, int) and isinstance(right, int)
    sequences = isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple)
    if operator == "*" and integers and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise TemplateLimitError(f"the chat template multiplies integers past {MAX_INT_BITS} bits")
    if operator == "**" and integers and right > 0 and max(left.bit_length(), 1) * right > MAX_INT_BITS:
        raise TemplateLimitError(f"the chat template raises an integer past {MAX_INT_BITS} bits")
    size = None
    if operator == "*" and not integers:
        size = _repeat_size(left, right)
    elif operator == "%" and isinstance(left, str):
        size = _percent_size(left, right)
    elif operator == "+" and sequences:
        size = len(left) + len(right)
    if size is not None:
        _check(size, f"a value with `{operator}`")
        _spend(size)


def _check_str_method(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Measure a string method call before it runs; returns its arguments (a joined iterable as a list)."""
    if name == "join" and args:
        items = list(args[0])  # a generator is read once, here, so it can be measured
        _check(sum(_text_size(i) for i in items) + len(text) * len(items), "a joined string")
        return (items, *args[1:])
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        _check(max(len(text), width if isinstance(width, int) else 0), f"a string from .{name}()")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        _check(len(text) + text.count("\t") * max(size if isinstance(size, int) else 8, 0), "a string")
    elif name == "replace" and len(args) >= 2:
        _check(_replace_size(text, *args[:3]), "a string from .replace()")
    elif name in ("format", "format_map"):
        mapping = args[0] if name == "format_map" and args and isinstance(args[0], Mapping) else kwargs
        _check(_format_size(text, args if name == "format" else (), mapping), "a formatted string")
    return args


def _replace_size(text: Any, old: Any, new: Any, count: Any = None) -> int:
    size = _text_size(text)
    if not isinstance(text, str) or not isinstance(old, str) or not isinstance(new, str):
        return size * (1 + _text_size(new))
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return size + found * max(len(new) - len(old), 0)


# -- filters -------------------------------------------------------------------------------------

# Filters that write their input as text: a container input is measured first.
_STRINGIFYING = frozenset(
    [
        "capitalize",
        "center",
        "e",
        "escape",
        "forceescape",
        "format",
        "indent",
        "join",
        "lower",
        "pprint",
        "replace",
        "safe",
        "string",
        "striptags",
        "title",
        "tojson",
        "trim",
        "truncate",
        "upper",
        "urlencode",
        "urlize",
        "wordcount",
        "wordwrap",
        "xmlattr",
    ]
)


def _indent_size(s: Any, width: Any = 4, *_: Any, **__: Any) -> int:
    unit = width if isinstance(width, int) else len(str(width))
    lines = s.count("\n") + 1 if isinstance(s, str) else _text_size(s)
    return _text_size(s) + lines * max(unit, 0)


def _json_size(
    value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, **_: Any
) -> int:
    unit = indent if isinstance(indent, int) else len(indent) if isinstance(indent, str) else 0
    separator = (
        sum(len(s) for s in separators if isinstance(s, str)) if isinstance(separators, tuple | list) else 2
    )
    return _text_size(value, per_item=max(unit, 0) + separator + 2) * (6 if ensure_ascii else 1)


def _batch_size(value: Any, count: Any, fill_with: Any) -> int:
    fill = 0 if fill_with is None else _text_size(fill_with)
    return _text_size(value) + max(count if isinstance(count, int) else 0, 0) * (2 + fill)


# Output size bounds for the filters whose output can outgrow their input (arguments as given).
_FILTER_SIZES: dict[str, Callable[..., int]] = {
    "center": lambda value, width=80, **_: max(_text_size(value), width if isinstance(width, int) else 0),
    "indent": _indent_size,
    "format": lambda value, *args, **kwargs: _percent_size(str(value), kwargs or args),
    "replace": lambda s, old="", new="", count=None, **_: _replace_size(s, old, new, count),
    "wordwrap": lambda s, width=79, break_long_words=True, wrapstring=None, *_, **__: (
        _text_size(s) * (1 + len(str(wrapstring or "\n")))
    ),
    "batch": lambda value, linecount=1, fill_with=None, **_: _batch_size(value, linecount, fill_with),
    "slice": lambda value, slices=1, fill_with=None, **_: _batch_size(value, slices, fill_with),
    "tojson": _json_size,
    "pprint": lambda value, *_, **__: _text_size(value, per_item=4),
}


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """The filter, measured: its arguments and predicted output before it runs, its output after."""
    passes_first = hasattr(function, "jinja_pass_arg")  # a context / eval context / environment first
    predict = _FILTER_SIZES.get(name)

    @functools.wraps(function)  # keeps `jinja_pass_arg`, so Jinja passes the same first argument
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _spend(STEP)
        first, values = (args[:1], list(args[1:])) if passes_first else ((), list(args))
        _check_numbers(values[1:], kwargs, f"|{name}")
        if name == "join" and values:
            values[0] = list(values[0])  # measured below, then joined: a generator is read once
        if name in _STRINGIFYING and values and not isinstance(values[0], str):
            _check(_text_size(values[0]), f"the text of the input of |{name}")
        if predict is not None and values:
            _check(predict(*values, **kwargs), f"the output of |{name}")
        return _charge_result(function(*first, *values, **kwargs), f"the output of |{name}")

    return bounded


def _steps(iterable: Any) -> Iterator[Any]:
    for item in iterable:
        _spend(STEP)
        yield item


class _SizedSteps:
    """A sized iterable stays sized, so that `loop.length` and `loop.last` work as without this."""

    def __init__(self, iterable: Any) -> None:
        self.iterable = iterable

    def __len__(self) -> int:
        return len(self.iterable)

    def __iter__(self) -> Iterator[Any]:
        return _steps(self.iterable)


# The three filters the instrumented template calls take the context so that Jinja never runs
# them while compiling (it folds constant filter calls otherwise): they charge at render time.


@jinja2.pass_context
def _loop_filter(_: Any, iterable: Any) -> Iterable[Any]:
    """What a `for` loop iterates over: each step charged."""
    return _SizedSteps(iterable) if hasattr(iterable, "__len__") else _steps(iterable)


@jinja2.pass_context
def _text_filter(context: Any, text: str) -> str:
    """Literal template text, charged as it is written (a loop or macro may write it many times)."""
    _spend(len(text))
    return Markup(text) if context.eval_ctx.autoescape else text


@jinja2.pass_context
def _concat_filter(context: Any, parts: tuple[Any, ...]) -> str:
    """`a ~ b`, measured before the parts are joined (as Jinja joins them)."""
    size = sum(_text_size(part) for part in parts)
    _check(size, "a ~ concatenation")
    _spend(size)
    return markup_join(parts) if context.eval_ctx.autoescape else str_join(parts)


def _finalize(value: Any) -> Any:
    """What `{{ value }}` writes, measured before it becomes text."""
    size = _text_size(value)
    _check(size, "an output value")
    _spend(size)
    return value


# -- the environment -----------------------------------------------------------------------------


class _Instrument(NodeTransformer):
    """Rewrites a parsed template so that loops, literal text and `~` pass through the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_TemplateData(self, node: nodes.TemplateData) -> nodes.Node:
        text = nodes.Const(node.data, lineno=node.lineno)
        return nodes.Filter(text, _TEXT_FILTER, [], [], None, None, lineno=node.lineno)

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        parts = nodes.Tuple(node.nodes, "load", lineno=node.lineno)
        return nodes.Filter(parts, _CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """llama-cpp-python's chat-template environment, with every growth measured and charged."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.globals.pop("lipsum", None)  # lorem ipsum of any length: no chat template uses it
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters[_LOOP_FILTER] = _loop_filter
        self.filters[_TEXT_FILTER] = _text_filter
        self.filters[_CONCAT_FILTER] = _concat_filter

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _spend(STEP)
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _spend(STEP)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _spend(STEP)
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend(STEP)
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        name = getattr(method, "__name__", "a call")
        _check_numbers(args, kwargs, f"{name}()")
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            args = _check_str_method(owner, name, args, kwargs)
        return _charge_result(super().call(__context, __obj, *args, **kwargs), f"the result of {name}()")

    def compile_bounded(self, source: str) -> jinja2.Template:
        """Parse, refuse what llama-cpp-python cannot load safely, instrument, compile."""
        try:
            tree = self.parse(source)
            if hazard := folding_hazard(tree, self):
                raise TemplateLimitError(hazard)
            tree = _Instrument().visit(tree)
            tree.set_environment(self)
            return self.from_string(tree)
        except RecursionError:
            raise TemplateLimitError("the chat template nests too deeply to compile") from None


_AMPLIFYING_FILTERS = frozenset(_FILTER_SIZES) | {"join"}
_CONSTANT_NODES = (
    nodes.Const,
    nodes.TemplateData,
    nodes.Tuple,
    nodes.List,
    nodes.Dict,
    nodes.Pair,
    nodes.Keyword,
    nodes.BinExpr,
    nodes.UnaryExpr,
    nodes.Concat,
    nodes.CondExpr,
    nodes.Compare,
    nodes.Operand,
    nodes.Filter,
    nodes.Test,
    nodes.Getitem,
    nodes.Getattr,
    nodes.Slice,
)
_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
}


class _Unfoldable(Exception):
    pass


def _constant(node: nodes.Node) -> bool:
    """Whether Jinja could fold `node`: it is built from literals only (no names, no calls)."""
    return all(isinstance(part, _CONSTANT_NODES) for part in [node, *node.find_all(nodes.Node)])


def _fold(node: nodes.Node, environment: BoundedEnvironment) -> Any:
    """Evaluate a constant expression as Jinja's folding would, with every step measured first."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.Tuple | nodes.List):
        items = [_fold(item, environment) for item in node.items]
        return tuple(items) if isinstance(node, nodes.Tuple) else items
    if isinstance(node, nodes.BinExpr):
        left, right = _fold(node.left, environment), _fold(node.right, environment)
        _check_binop(node.operator, left, right)
        return _OPERATORS[node.operator](left, right)
    if isinstance(node, nodes.Concat):
        parts = [_fold(part, environment) for part in node.nodes]
        _check(sum(_text_size(part) for part in parts), "a ~ concatenation")
        return "".join(map(str, parts))
    if isinstance(node, nodes.CondExpr):
        if _fold(node.test, environment):
            return _fold(node.expr1, environment)
        return None if node.expr2 is None else _fold(node.expr2, environment)
    if isinstance(node, nodes.Filter) and node.node is not None and not (node.dyn_args or node.dyn_kwargs):
        function = environment.filters.get(node.name)
        passes = getattr(function, "jinja_pass_arg", None)
        if function is None or passes is _PassArg.context:
            raise _Unfoldable  # Jinja does not fold it either: it runs at render time, bounded
        first = {_PassArg.eval_context: [nodes.EvalContext(environment)], _PassArg.environment: [environment]}
        args = [_fold(arg, environment) for arg in [node.node, *node.args]]
        kwargs = {pair.key: _fold(pair.value, environment) for pair in node.kwargs}
        return function(*first.get(passes, []), *args, **kwargs)  # the bounded filter: measured first
    raise _Unfoldable


def folding_hazard(tree: nodes.Template, environment: BoundedEnvironment) -> str | None:
    """A constant expression that Jinja would evaluate while compiling and that is too large
    (`'x' * 10**10`, `'x' | center(10**10)`), described; None if there is none.

    Jinja folds constant expressions at compile time, outside any sandbox: llama-cpp-python's
    `Llama(...)` compiling a GGUF's templates would run them unbounded. Each one that can grow
    its input is evaluated here with every step measured: small ones (`'=' * 40`) pass.
    """
    for node in tree.find_all((nodes.BinExpr, nodes.Filter)):
        if isinstance(node, nodes.Filter):
            amplifies, kind = node.node is not None and node.name in _AMPLIFYING_FILTERS, f"|{node.name}"
        else:
            amplifies, kind = node.operator in ("*", "**", "%"), f"`{node.operator}`"
        if not (amplifies and _constant(node)):
            continue
        try:
            _fold(node, environment)
        except TemplateLimitError:
            return _hazard(kind, node)
        except _Unfoldable:
            if isinstance(node, nodes.BinExpr):
                return _hazard(kind, node)  # built from parts this evaluator does not model
        except Exception:  # an error Jinja's folding meets too: it leaves the expression to render time
            continue
    return None


def _hazard(kind: str, node: nodes.Node) -> str:
    return (
        f"the chat template has a constant {kind} expression (line {node.lineno}) that Jinja evaluates "
        f"while loading, with no limit on its size; the limit here is {MAX_TEXT:,} characters"
    )


# -- the formatter -------------------------------------------------------------------------------


class _BoundedTemplate:
    """A compiled template whose `render` runs under a fresh budget and streams a capped output."""

    def __init__(self, template: jinja2.Template) -> None:
        self.template = template

    def render(self, **variables: Any) -> str:
        token = _BUDGET.set(_Budget(WORK_BUDGET))
        try:
            pieces, size = [], 0
            for piece in self.template.generate(**variables):
                size += len(piece)
                _check(size, "a prompt")
                pieces.append(piece)
            return "".join(pieces)
        finally:
            _BUDGET.reset(token)


class BoundedChatFormatter(Jinja2ChatFormatter):
    """`Jinja2ChatFormatter` on the bounded environment: same options, same output, bounded cost."""

    def __init__(
        self,
        template: str,
        eos_token: str,
        bos_token: str,
        add_generation_prompt: bool = True,
        stop_token_ids: list[int] | None = None,
    ) -> None:
        # The parent's __init__ compiles with its own environment (folding constants unbounded),
        # so the attributes it sets are set here instead.
        self.template = template
        self.eos_token = eos_token
        self.bos_token = bos_token
        self.add_generation_prompt = add_generation_prompt
        self.stop_token_ids = set(stop_token_ids) if stop_token_ids is not None else None
        extensions: list[Any] = [jinja2.ext.loopcontrols]
        if generation_tags := getattr(Jinja2ChatFormatter, "IgnoreGenerationTags", None):
            extensions.insert(0, generation_tags)
        environment = BoundedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True, extensions=extensions
        )
        environment.filters["tojson"] = _bounded_filter("tojson", self.tojson)
        self._environment = _BoundedTemplate(environment.compile_bounded(template))  # type: ignore[assignment]


def check_template(source: str) -> None:
    """Compile a template as the runtime will; raises TemplateLimitError or a jinja2.TemplateError."""
    BoundedChatFormatter(source, eos_token="", bos_token="")
