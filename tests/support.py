"""Catalogues and Hypothesis strategies shared by the tests."""

from __future__ import annotations

import datetime as dt
import enum
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from hypothesis import strategies as st
from pydantic import BaseModel, Field

from toolroute.grammars import Catalogue, GrammarOptions, format_number, load_catalogue
from toolroute.grammars.schema import Schema
from toolroute.runtime.grammar_engine import GrammarMatcher

ROOT = Path(__file__).resolve().parent.parent
CUSTOMER_SUPPORT_TOOLS = ROOT / "examples" / "customer_support" / "tools.py"
KITCHEN_SINK_TOOLS = ROOT / "grammars" / "golden" / "kitchen_sink.tools.json"


class Unit(enum.Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Location(BaseModel):
    city: str = Field(max_length=24, description='City, e.g. "São Paulo"')
    country: str | None = Field(None, pattern=r"^[A-Z]{2}$")


class WeatherForecast(BaseModel):
    """Weather forecast for a place and day."""

    location: Location
    day: dt.date
    unit: Unit = Unit.celsius
    hours: list[Annotated[int, Field(ge=0, le=23)]] = Field(default_factory=list, max_length=4)


class CreateReminder(BaseModel):
    """Create a reminder."""

    text: Annotated[str, Field(min_length=1, max_length=30)]
    when: dt.datetime | None = None
    repeat: Literal["daily", "weekly"] | None = None
    priority: int = Field(1, gt=0, lt=6)


def accepts(vocab: Any, gbnf: str, text: str) -> bool:
    """Whether llama.cpp's grammar engine accepts `text` in full and then allows EOS."""
    tokens = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    with GrammarMatcher(vocab, gbnf) as matcher:
        for token in tokens:
            if not matcher.allows(token):
                return False
            matcher.accept(token)
        return matcher.allows(matcher.eos)


def pydantic_catalogue() -> Catalogue:
    return Catalogue.from_tools([WeatherForecast, CreateReminder])


def set_volume(level: int, mute: bool = False) -> None:
    """Set the speaker volume.

    Args:
        level: Volume from 0 to 10.
        mute: Mute instead.
    """


def play_music(query: str, shuffle: bool | None = None, tags: list[str] | None = None) -> None:
    """Play music matching a query.

    :param query: Artist, album or song.
    :param shuffle: Shuffle the queue.
    """


def function_catalogue() -> Catalogue:
    return Catalogue.from_tools([set_volume, play_music])


def all_catalogues() -> dict[str, Catalogue]:
    return {
        "customer_support": load_catalogue(CUSTOMER_SUPPORT_TOOLS),
        "kitchen_sink": load_catalogue(KITCHEN_SINK_TOOLS),
        "pydantic": pydantic_catalogue(),
        "functions": function_catalogue(),
    }


# Small caps keep random walks short; the property tests use the same options both ways.
WALK_OPTIONS = GrammarOptions(max_string_length=12, max_reason_length=12, max_array_items=3)
PROPERTY_OPTIONS = GrammarOptions(max_string_length=40, max_reason_length=40, max_array_items=4)

_TIMEZONES = st.sampled_from(
    [None, dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(-dt.timedelta(hours=8))]
)


def _fits_digits(value: float | int, options: GrammarOptions) -> bool:
    text = format_number(value).lstrip("-")
    whole, _, fraction = text.partition(".")
    return len(whole) <= options.max_int_digits and len(fraction) <= options.max_frac_digits


def values(schema: Schema, options: GrammarOptions) -> st.SearchStrategy[Any]:
    """Schema-valid JSON values within the grammar's caps."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([values(branch, options) for branch in schema["anyOf"]])
    kind = schema["type"]
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "date":
            return st.dates().map(dt.date.isoformat)
        if fmt == "time":
            return st.times(timezones=_TIMEZONES).map(dt.time.isoformat)
        if fmt == "date-time":
            return st.datetimes(timezones=_TIMEZONES).map(dt.datetime.isoformat)
        if "pattern" in schema:
            pattern = re.compile(schema["pattern"], re.ASCII)
            return st.from_regex(pattern, fullmatch=True).filter(
                lambda s: len(s) <= options.max_string_length and not s.endswith("\n")
            )
        high = min(schema.get("maxLength", options.max_string_length), options.max_string_length)
        return st.text(min_size=schema.get("minLength", 0), max_size=high)
    if kind == "integer":
        cap = 10**options.max_int_digits - 1
        return st.integers(schema.get("minimum", -cap), schema.get("maximum", cap))
    if kind == "number":
        cap = 10**options.max_int_digits - 1
        low = schema.get("minimum", schema.get("exclusiveMinimum", -cap))
        high = schema.get("maximum", schema.get("exclusiveMaximum", cap))
        floats = st.floats(
            low,
            high,
            allow_nan=False,
            allow_infinity=False,
            exclude_min="exclusiveMinimum" in schema,
            exclude_max="exclusiveMaximum" in schema,
        )
        ints = st.integers(low + ("exclusiveMinimum" in schema), high - ("exclusiveMaximum" in schema))
        return st.one_of(floats, ints).filter(lambda v: _fits_digits(v, options))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        high = min(schema.get("maxItems", options.max_array_items), options.max_array_items)
        return st.lists(values(schema["items"], options), min_size=schema.get("minItems", 0), max_size=high)
    required = {k: values(v, options) for k, v in schema["properties"].items() if k in schema["required"]}
    optional = {k: values(v, options) for k, v in schema["properties"].items() if k not in schema["required"]}
    return st.fixed_dictionaries(required, optional=optional)


def tiny_train_config(runs_dir: Path, tiny_base: Path, data: Path, **changes: Any) -> Any:
    """The tiny model's training config on `small_data` (conftest): LoRA at a rate that moves a random
    2-layer model, 2 epochs of 8-row steps; `changes` override any field."""
    from toolroute.train.config import TrainConfig

    values: dict[str, Any] = dict(
        name="tiny", data=data / "train.jsonl", eval=data / "eval.jsonl",
        tools=str(CUSTOMER_SUPPORT_TOOLS), base=str(tiny_base), mode="none", learning_rate=2e-2, epochs=2,
        method="lora", batch_size=8, grad_accum=1, runs_dir=runs_dir, seed=7,
    )  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)
