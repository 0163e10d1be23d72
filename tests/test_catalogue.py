"""One internal representation from Pydantic models, typed functions and OpenAI tools JSON."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from support import CUSTOMER_SUPPORT_TOOLS, KITCHEN_SINK_TOOLS, all_catalogues
from toolroute.grammars import Catalogue, CatalogueError, load_catalogue


class TrackOrder(BaseModel):
    """Look up an order."""

    order_id: str = Field(description="The order id.")
    carrier: Literal["ups", "dhl"] | None = Field(None, description="Carrier, if known.")
    days: int = Field(7, ge=1, le=30, description="Look-back window.")


def track_order(
    order_id: str, carrier: Literal["ups", "dhl"] | None = None, days: Annotated[int, Field(ge=1, le=30)] = 7
) -> str:
    """Look up an order.

    Args:
        order_id: The order id.
        carrier: Carrier, if known.
        days: Look-back window.
    """
    return order_id


OPENAI_TRACK_ORDER = {
    "type": "function",
    "function": {
        "name": "track_order",
        "description": "Look up an order.",
        "parameters": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "description": "The order id."},
                "carrier": {"type": "string", "enum": ["ups", "dhl"], "description": "Carrier, if known."},
                "days": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 30,
                    "default": 7,
                    "description": "Look-back window.",
                },
            },
            "required": ["order_id"],
        },
    },
}


def test_three_forms_give_the_same_catalogue():
    from_model = Catalogue.from_tools([TrackOrder])
    from_function = Catalogue.from_tools([track_order])
    from_openai = Catalogue.from_openai([OPENAI_TRACK_ORDER])
    assert from_model == from_function == from_openai
    assert from_model.sha256 == from_function.sha256 == from_openai.sha256
    assert from_model.to_json() == from_openai.to_json()


def test_legacy_functions_list_is_the_same_catalogue():
    legacy = {"functions": [OPENAI_TRACK_ORDER["function"]]}
    assert Catalogue.from_openai(legacy) == Catalogue.from_tools([TrackOrder])


@pytest.mark.parametrize("name", sorted(all_catalogues()))
def test_openai_round_trip_is_identity(name):
    catalogue = all_catalogues()[name]
    again = Catalogue.from_openai(catalogue.to_openai())
    assert again == catalogue
    assert again.sha256 == catalogue.sha256
    assert Catalogue.from_json(catalogue.to_json()) == catalogue


def test_typed_calls_come_back_as_the_users_model():
    catalogue = Catalogue.from_tools([TrackOrder])
    call = catalogue.parse('{"tool":"track_order","arguments":{"order_id":"A-1","days":3}}')
    assert isinstance(call.args, TrackOrder)
    assert call.args.days == 3
    assert call.canonical == '{"tool":"track_order","arguments":{"order_id":"A-1","days":3}}'


def test_model_name_is_snake_case_or_config_title():
    class GetWeatherNow(BaseModel):
        """Weather."""

    class Renamed(BaseModel):
        """Other."""

        model_config = ConfigDict(title="lookup")

    assert Catalogue.from_tools([GetWeatherNow, Renamed]).names == ["get_weather_now", "lookup"]


def test_docstring_styles():
    def google(a: int, b: str = "x") -> None:
        """Do it.

        Longer text.

        Args:
            a (int): First
                continued.
            b: Second.

        Returns:
            Nothing.
        """

    def sphinx(a: int, b: str = "x") -> None:
        """Do it.

        Longer text.

        :param a: First continued.
        :param str b: Second.
        """

    def numpy(a: int, b: str = "x") -> None:
        """Do it.

        Longer text.

        Parameters
        ----------
        a : int
            First continued.
        b : str
            Second.
        """

    specs = [Catalogue.from_tools([f]).tools[0] for f in (google, sphinx, numpy)]
    for spec in specs:
        assert spec.description == "Do it.\n\nLonger text."
        assert spec.properties["a"]["description"] == "First continued."
        assert spec.properties["b"]["description"] == "Second."
        assert spec.required == ["a"]


def test_loading_each_file_form(tmp_path):
    py = load_catalogue(CUSTOMER_SUPPORT_TOOLS)
    json_path = tmp_path / "tools.json"
    json_path.write_text(json.dumps(py.to_openai()))
    assert load_catalogue(json_path) == py
    functions = tmp_path / "functions.py"
    functions.write_text(
        "def track(order_id: str) -> None:\n    '''Track.'''\n\ndef _helper() -> None:\n    pass\n"
    )
    assert load_catalogue(functions).names == ["track"]
    assert load_catalogue(KITCHEN_SINK_TOOLS).names[:2] == ["book_table", "set_thermostat"]


def test_module_attribute_form(tmp_path, monkeypatch):
    (tmp_path / "mytools.py").write_text(
        "from pydantic import BaseModel\nclass Ping(BaseModel):\n    '''Ping.'''\nALL = [Ping]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_catalogue("mytools:ALL").names == ["ping"]
    assert load_catalogue("mytools").names == ["ping"]


@pytest.mark.parametrize(
    "tools, message",
    [
        ([OPENAI_TRACK_ORDER, OPENAI_TRACK_ORDER], "duplicate tool name 'track_order'"),
        ([{"type": "function", "function": {"name": "no_tool"}}], "'no_tool' is reserved"),
        ([{"type": "function", "function": {"name": "bad name"}}], "tool name 'bad name' must match"),
        ([{"type": "tool", "function": {"name": "a"}}], "tools[0].type: Input should be 'function'"),
        ([{"type": "function", "function": {"description": "x"}}], "tools[0].function.name: Field required"),
        (
            [{"type": "function", "function": {"name": "a", "parameters": "x"}}],
            "tools[0].function.parameters: Input should be a valid dictionary",
        ),
        (
            [{"type": "function", "function": {"name": "a", "extra": 1}}],
            "tools[0].function.extra: Extra inputs are not permitted",
        ),
        (["track_order"], "tools[0]: expected a tool object"),
        ("nope", "tools: expected a list of tools, got str"),
        ([], "a catalogue needs at least one tool"),
    ],
)
def test_malformed_openai_tools_are_refused(tools, message):
    with pytest.raises(CatalogueError) as error:
        Catalogue.from_openai(tools)
    assert message in str(error.value)


def test_duplicate_across_forms_is_refused():
    with pytest.raises(CatalogueError, match="duplicate tool name 'track_order'"):
        Catalogue.from_tools([TrackOrder, track_order])


def test_function_without_annotations_is_refused():
    def untyped(x):  # type: ignore[no-untyped-def]
        """No types."""

    def star(*args: int) -> None:
        """Star."""

    with pytest.raises(CatalogueError, match="parameter 'x' has no type annotation"):
        Catalogue.from_tools([untyped])
    with pytest.raises(CatalogueError, match=r"\*args parameters cannot be tool arguments"):
        Catalogue.from_tools([star])


def test_bad_json_file_names_the_file(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text("[{")
    with pytest.raises(CatalogueError, match=f"{path}: not valid JSON"):
        load_catalogue(path)
    with pytest.raises(CatalogueError, match="no such tools file"):
        load_catalogue(tmp_path / "missing.json")
