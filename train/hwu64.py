"""Import HWU64 as a toolroute training set: `tools.json` plus train/valid/test JSONL.

HWU64 (Liu, Eshghi, Swietojanski, Rieser, IWSDS 2019; CC BY 4.0) has 64 home-assistant intents
in 18 scenarios. Each non-`general_*` intent becomes one tool whose optional string arguments are
the slot types seen with it; `general_*` intents are chit-chat that no tool serves, so they become
no_tool rows. Folds 1-8 are train, 9 valid, 10 test. Rows are OpenAI chat fine-tuning JSON without
per-row tools: the catalogue lives in `tools.json`.

    toolroute data import-hwu64 hwu64.jsonl --out data/hwu64 [--scenarios alarm,iot]
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from toolroute.grammars import Catalogue
from toolroute.grammars.canonical import dump_value
from toolroute.runtime.files import atomic_write_text

from .jsonl import read_jsonl

SPLITS = ("train", "valid", "test")
SPLIT_OF_FOLD = {**dict.fromkeys(range(1, 9), "train"), 9: "valid", 10: "test"}
GENERAL = "general"

# Why rows or slots are left out; the report keys on these.
DROP_SCENARIO = "scenario not selected"
DROP_DUPLICATE = "duplicate text in split"
DROP_REPEATED_SLOT = "repeated slot type"
DROP_NO_TOOL_SLOT = "slot on a no_tool row"

# The router reads these in its prompt, so each says what the tool does from the user's side.
INTENT_DESCRIPTIONS: dict[str, str] = {
    "alarm_query": "List or check the alarms that are set, optionally for a date or time.",
    "alarm_remove": "Delete or turn off an alarm, identified by its time, date or label.",
    "alarm_set": "Set or change an alarm for a time, optionally with a date or label.",
    "audio_volume_down": "Lower the speaker volume, optionally by or to an amount.",
    "audio_volume_mute": "Mute the speaker, optionally for a while.",
    "audio_volume_up": "Raise the speaker volume, optionally by or to an amount.",
    "calendar_query": "Look up calendar events, the schedule or free time for a date or time.",
    "calendar_remove": "Delete or cancel an event or reminder in the calendar.",
    "calendar_set": "Add an event or reminder to the calendar, optionally with a date, time or people.",
    "cooking_recipe": "Find a recipe or cooking instructions for a dish or ingredient.",
    "datetime_convert": "Convert a time between places or time zones, or change the device's time zone.",
    "datetime_query": "Tell the current date or time, optionally in a place or time zone.",
    "email_addcontact": "Add a person or an email address to the contacts.",
    "email_query": "Check or read emails, optionally from a person or in a folder.",
    "email_querycontact": "Look up a contact's details, such as a phone number, email or address.",
    "email_sendemail": "Write, send or reply to an email.",
    "iot_cleaning": "Start the robot vacuum cleaner, optionally for a room or at a time.",
    "iot_coffee": "Make coffee with the coffee machine, optionally a kind of coffee or at a time.",
    "iot_hue_lightchange": "Change the colour, mode or level of the smart lights.",
    "iot_hue_lightdim": "Dim the lights, optionally in a room or by an amount.",
    "iot_hue_lightoff": "Turn the lights off, optionally in a room or a particular lamp.",
    "iot_hue_lighton": "Turn the lights on, optionally in a room or a particular lamp.",
    "iot_hue_lightup": "Make the lights brighter, optionally in a room or by an amount.",
    "iot_wemo_off": "Switch off a smart plug socket (WeMo) or the device plugged into it.",
    "iot_wemo_on": "Switch on a smart plug socket (WeMo) or the device plugged into it.",
    "lists_createoradd": "Create a list or add an item to a list, such as a shopping list.",
    "lists_query": "Show the user's lists or what is on a list.",
    "lists_remove": "Remove an item from a list or delete a whole list.",
    "music_likeness": "Record the user's music taste: like or rate a song, artist or genre, or save it.",
    "music_query": "Answer a question about music, such as what is playing or who sings a song.",
    "music_settings": "Change music playback settings, such as shuffle or repeat.",
    "news_query": "Get the news, optionally on a topic, from a source or about a place.",
    "play_audiobook": "Play, pause or resume an audiobook, optionally by title or author.",
    "play_game": "Start a game, optionally by name.",
    "play_music": "Play music, optionally by artist, song, genre or playlist.",
    "play_podcasts": "Play a podcast or a podcast episode, such as the next episode.",
    "play_radio": "Play a radio station, optionally by name or frequency.",
    "qa_currency": "Give an exchange rate or convert an amount between currencies.",
    "qa_definition": "Define a word or explain what something is.",
    "qa_factoid": "Answer a general-knowledge question about facts, people or places.",
    "qa_maths": "Work out the answer to an arithmetic question.",
    "qa_stock": "Get the stock price or stock news of a company.",
    "recommendation_events": "Suggest events such as concerts or festivals, optionally at a place or date.",
    "recommendation_locations": "Suggest places to go, such as restaurants, shops or bars.",
    "recommendation_movies": "Suggest movies to watch or tell what is showing.",
    "social_post": "Post on social media or send a complaint to a company.",
    "social_query": "Check social media for updates, notifications or what friends post.",
    "takeaway_order": "Order takeaway food, optionally from a restaurant, for delivery or pickup.",
    "takeaway_query": "Ask about a takeaway order or restaurant, e.g. when food arrives or if they deliver.",
    "transport_query": "Get travel information such as train times, routes or directions.",
    "transport_taxi": "Book a taxi or a ride such as an Uber, optionally to a place at a time.",
    "transport_ticket": "Book a train or other travel ticket, optionally to a place on a date.",
    "transport_traffic": "Report traffic conditions on a route or in a place.",
    "weather_query": "Get the weather forecast, optionally for a place, date or condition.",
}

# Values stay the user's own words (no normalisation), so the descriptions say so by example.
SLOT_DESCRIPTIONS: dict[str, str] = {
    "alarm_type": "The kind of alarm, e.g. 'wake up'",
    "app_name": "An app or online service by name, e.g. 'spotify'",
    "artist_name": "A musician or band, e.g. 'lady gaga'",
    "audiobook_author": "The author of an audiobook, e.g. 'dean koontz'",
    "audiobook_name": "The title of an audiobook, e.g. 'american gods'",
    "business_name": "A company, shop or restaurant by name, e.g. 'pizza hut'",
    "business_type": "A kind of business or venue, e.g. 'restaurant'",
    "change_amount": "How much to change a level, as the user said it, e.g. 'by fifty percent'",
    "coffee_type": "A kind of coffee, e.g. 'cappuccino'",
    "color_type": "A light colour or mood, e.g. 'blue'",
    "cooking_type": "A way of cooking, e.g. 'steam'",
    "currency_name": "A currency or its country, e.g. 'dollars'",
    "date": "A date or day as the user said it, e.g. 'tomorrow'",
    "definition_word": "The word or thing to define, e.g. 'trebuchet'",
    "device_type": "A device or appliance, e.g. 'vacuum cleaner'",
    "drink_type": "A drink, e.g. 'diet coke'",
    "email_address": "An email address as the user said it, e.g. 'jane at gmail dot com'",
    "email_folder": "An email folder, e.g. 'inbox'",
    "event_name": "An event or appointment, e.g. 'meeting'",
    "food_type": "A dish or kind of food, e.g. 'pizza'",
    "game_name": "A game by name, e.g. 'temple run'",
    "game_type": "A kind of game, e.g. 'video'",
    "general_frequency": "How often something repeats, e.g. 'every day'",
    "house_place": "A room or part of the home, e.g. 'living room'",
    "ingredient": "A cooking ingredient, e.g. 'saffron'",
    "joke_type": "A kind or topic of joke, e.g. 'nerd'",
    "list_name": "A list by name, e.g. 'groceries'",
    "meal_type": "A meal, e.g. 'dinner'",
    "media_type": "A kind of media or a media outlet, e.g. 'tweet', 'facebook' or 'audiobook'",
    "movie_name": "A movie title, e.g. 'deadpool'",
    "movie_type": "A movie genre, e.g. 'action'",
    "music_album": "An album title",
    "music_descriptor": "A description of the music wanted, e.g. 'upbeat'",
    "music_genre": "A music genre, e.g. 'hip hop'",
    "news_topic": "What the news should be about, e.g. 'stock market'",
    "order_type": "How a food order is fulfilled, e.g. 'delivery' or 'takeaway'",
    "person": "A person by name, e.g. 'john'",
    "personal_info": "A contact detail asked about, e.g. 'phone number'",
    "place_name": "A city, country, region or place, e.g. 'new york'",
    "player_setting": "A playback action or mode, e.g. 'resume' or 'shuffle'",
    "playlist_name": "A playlist by name, e.g. 'workout playlist'",
    "podcast_descriptor": "Which podcast or episode, e.g. 'next episode'",
    "podcast_name": "A podcast by name, e.g. 'npr'",
    "radio_name": "A radio station by name or frequency, e.g. 'bbc radio four'",
    "relation": "A person by their relation to the user, e.g. 'mom' or 'boss'",
    "song_name": "A song title, e.g. 'poker face'",
    "time": "A time of day as the user said it, e.g. 'nine am'",
    "time_zone": "A time zone as the user said it, e.g. 'eastern'",
    "timeofday": "A part of the day, e.g. 'morning'",
    "transport_agency": "A taxi or transport company, e.g. 'uber'",
    "transport_descriptor": "A detail of the trip or ticket, e.g. 'one way'",
    "transport_name": "A named train or service, e.g. 'eurostar'",
    "transport_type": "A means of transport, e.g. 'train' or 'taxi'",
    "weather_descriptor": "A weather condition or item asked about, e.g. 'rain' or 'umbrella'",
}

# One short fixed reason per chit-chat intent: what the router says instead of calling a tool.
NO_TOOL_REASONS: dict[str, str] = {
    "general_affirm": "affirmation",
    "general_commandstop": "stop request",
    "general_confirm": "confirmation request",
    "general_dontcare": "no preference",
    "general_explain": "clarification request",
    "general_joke": "joke request",
    "general_negate": "negation",
    "general_praise": "praise",
    "general_quirky": "small talk",
    "general_repeat": "repeat request",
}


# -- reading -----------------------------------------------------------------------------------


class Hwu64Entity(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)

    type: str = Field(min_length=1)
    value: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class Hwu64Line(BaseModel):
    """One line of hwu64.jsonl; strict so that a string fold or a float offset is an error."""

    model_config = ConfigDict(strict=True, frozen=True)

    text: str = Field(min_length=1)
    # The intent becomes a tool name, and its prefix before "_" is the scenario.
    intent: str = Field(pattern=r"^[a-z0-9]+_[a-z0-9_]+$")
    fold: int
    entities: list[Hwu64Entity]

    @field_validator("fold")
    @classmethod
    def _known_fold(cls, fold: int) -> int:
        if fold not in SPLIT_OF_FOLD:
            raise ValueError(f"unknown fold {fold} (expected 1-10)")
        return fold

    @property
    def scenario(self) -> str:
        return scenario_of(self.intent)

    @property
    def split(self) -> str:
        return SPLIT_OF_FOLD[self.fold]


def scenario_of(intent: str) -> str:
    return intent.split("_", 1)[0]


def _field_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name


def _parse_line(data: Any, where: str) -> Hwu64Line:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        line = Hwu64Line.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = _field_name(error["loc"])
        if error["type"] == "missing":
            raise ValueError(f"{where}: missing field '{name}'") from None
        raise ValueError(f"{where}: field '{name}': {error['msg']}") from None
    for index, entity in enumerate(line.entities):
        if not entity.start < entity.end <= len(line.text):
            raise ValueError(
                f"{where}: field 'entities[{index}]': span {entity.start}:{entity.end} "
                f"is not inside the {len(line.text)}-character text"
            )
        span = line.text[entity.start : entity.end]
        if span != entity.value:
            raise ValueError(
                f"{where}: field 'entities[{index}].value': {entity.value!r} is not "
                f"text[{entity.start}:{entity.end}] = {span!r}"
            )
    return line


def read_hwu64(source: Path) -> list[Hwu64Line]:
    """Every non-blank line, validated; a bad one raises ValueError naming file:line and field."""
    lines: list[Hwu64Line] = []
    for line in read_jsonl(source):
        where = f"{source}:{line.number}"
        if line.error is not None:
            raise ValueError(f"{where}: {line.error}")
        lines.append(_parse_line(line.value, where))
    if not lines:
        raise ValueError(f"{source}: no data lines")
    return lines


# -- checks ------------------------------------------------------------------------------------


def _check_descriptions(lines: Sequence[Hwu64Line]) -> None:
    """A tool or argument without a description would silently weaken the router's prompt."""
    intents = {line.intent for line in lines}
    slots = {entity.type for line in lines for entity in line.entities}
    problems = []
    general = {i for i in intents if scenario_of(i) == GENERAL}
    if missing := sorted(general - NO_TOOL_REASONS.keys()):
        problems.append(f"general intents without a no_tool reason (NO_TOOL_REASONS): {missing}")
    if missing := sorted(intents - general - INTENT_DESCRIPTIONS.keys()):
        problems.append(f"intents without a description (INTENT_DESCRIPTIONS): {missing}")
    if missing := sorted(slots - SLOT_DESCRIPTIONS.keys()):
        problems.append(f"slot types without a description (SLOT_DESCRIPTIONS): {missing}")
    if problems:
        raise ValueError("; ".join(problems) + f"; add them in {__file__}")


def _select_scenarios(lines: Sequence[Hwu64Line], scenarios: Sequence[str] | None) -> set[str]:
    known = sorted({line.scenario for line in lines} - {GENERAL})
    if scenarios is None:
        return set(known)
    wanted = [s.strip() for s in scenarios if s.strip()]
    if not wanted:
        raise ValueError(f"no scenarios given; known scenarios: {', '.join(known)}")
    if GENERAL in wanted:
        raise ValueError(
            f"'{GENERAL}' is not a tool scenario (general_* rows are always kept as no_tool); "
            f"known scenarios: {', '.join(known)}"
        )
    if unknown := sorted(set(wanted) - set(known)):
        raise ValueError(f"unknown scenarios {unknown}; known scenarios: {', '.join(known)}")
    return set(wanted)


# -- building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Example:
    split: str
    text: str
    intent: str
    slots: dict[str, str]  # empty for no_tool rows

    @property
    def is_tool_call(self) -> bool:
        return scenario_of(self.intent) != GENERAL


def _first_slots(line: Hwu64Line, drops: Counter[str]) -> dict[str, str]:
    """One value per slot type: arguments are flat strings, so a repeat keeps its first mention."""
    slots: dict[str, str] = {}
    for entity in line.entities:
        if entity.type in slots:
            drops[entity.type] += 1
        else:
            slots[entity.type] = line.text[entity.start : entity.end]
    return slots


def _tools(examples: Iterable[_Example]) -> list[dict[str, Any]]:
    """One tool per intent, arguments ordered by how often the intent uses them, then by name."""
    usage: dict[str, Counter[str]] = {}
    for example in examples:
        if example.is_tool_call:
            usage.setdefault(example.intent, Counter()).update(example.slots.keys())
    tools = []
    for intent in sorted(usage):
        order = sorted(usage[intent], key=lambda slot: (-usage[intent][slot], slot))
        properties = {slot: {"type": "string", "description": SLOT_DESCRIPTIONS[slot]} for slot in order}
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": intent,
                    "description": INTENT_DESCRIPTIONS[intent],
                    "parameters": {"type": "object", "properties": properties, "required": []},
                },
            }
        )
    return tools


def _row(example: _Example, catalogue: Catalogue) -> dict[str, Any]:
    user = {"role": "user", "content": example.text}
    if not example.is_tool_call:
        return {"messages": [user, {"role": "assistant", "content": NO_TOOL_REASONS[example.intent]}]}
    arguments = dump_value(example.slots, catalogue.get(example.intent).parameters)
    call = {"id": "call_0", "type": "function", "function": {"name": example.intent, "arguments": arguments}}
    return {"messages": [user, {"role": "assistant", "tool_calls": [call]}]}


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows)


# -- the import --------------------------------------------------------------------------------


class SplitCounts(BaseModel):
    rows: int = 0
    no_tool: int = 0
    tools: dict[str, int] = Field(default_factory=dict, description="tool-call rows per tool")

    @property
    def tool_calls(self) -> int:
        return self.rows - self.no_tool

    @property
    def no_tool_share(self) -> float:
        return self.no_tool / self.rows if self.rows else 0.0


class Hwu64Report(BaseModel):
    source: Path
    out_dir: Path
    scenarios: list[str] = Field(description="the scenarios whose intents became tools")
    tools: list[str]
    lines_read: int
    splits: dict[str, SplitCounts]
    rows_dropped: dict[str, int]
    slots_dropped: dict[str, int]
    repeated_slot_types: dict[str, int] = Field(description="slots dropped as repeats, by type")
    paths: dict[str, Path]


@dataclass
class _Drops:
    rows: Counter[str] = field(
        default_factory=lambda: Counter(dict.fromkeys([DROP_SCENARIO, DROP_DUPLICATE], 0))
    )
    repeated_slots: Counter[str] = field(default_factory=Counter)
    no_tool_slots: int = 0


def _examples(lines: Iterable[Hwu64Line], selected: set[str], drops: _Drops) -> list[_Example]:
    seen: set[tuple[str, str, str]] = set()
    examples: list[_Example] = []
    for line in lines:
        if line.scenario != GENERAL and line.scenario not in selected:
            drops.rows[DROP_SCENARIO] += 1
            continue
        key = (line.split, line.text, line.intent)
        if key in seen:
            drops.rows[DROP_DUPLICATE] += 1
            continue
        seen.add(key)
        if line.scenario == GENERAL:
            drops.no_tool_slots += len(line.entities)
            slots = {}
        else:
            slots = _first_slots(line, drops.repeated_slots)
        examples.append(_Example(line.split, line.text, line.intent, slots))
    return examples


def import_hwu64(source: Path, out_dir: Path, scenarios: Sequence[str] | None = None) -> Hwu64Report:
    """Write tools.json and train/valid/test.jsonl from hwu64.jsonl; see the module docstring."""
    source, out_dir = Path(source), Path(out_dir)
    lines = read_hwu64(source)
    _check_descriptions(lines)
    selected = _select_scenarios(lines, scenarios)
    drops = _Drops()
    examples = _examples(lines, selected, drops)
    tools = _tools(examples)
    catalogue = Catalogue.from_openai(tools, where="hwu64 tools")

    # Everything is built before anything is written, so bad input leaves no partial output.
    texts = {"tools.json": json.dumps(tools, ensure_ascii=False, indent=2) + "\n"}
    for split in SPLITS:
        texts[f"{split}.jsonl"] = _jsonl(_row(e, catalogue) for e in examples if e.split == split)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(out_dir / name, text) for name, text in texts.items()]

    return Hwu64Report(
        source=source,
        out_dir=out_dir,
        scenarios=sorted(selected),
        tools=catalogue.names,
        lines_read=len(lines),
        splits={split: _split_counts(e for e in examples if e.split == split) for split in SPLITS},
        rows_dropped=dict(drops.rows),
        slots_dropped={
            DROP_REPEATED_SLOT: drops.repeated_slots.total(),
            DROP_NO_TOOL_SLOT: drops.no_tool_slots,
        },
        repeated_slot_types=dict(sorted(drops.repeated_slots.items(), key=lambda kv: (-kv[1], kv[0]))),
        paths=dict(zip(["tools", *SPLITS], written, strict=True)),
    )


def _split_counts(examples: Iterable[_Example]) -> SplitCounts:
    counts = SplitCounts()
    tools: Counter[str] = Counter()
    for example in examples:
        counts.rows += 1
        if example.is_tool_call:
            tools[example.intent] += 1
        else:
            counts.no_tool += 1
    counts.tools = dict(sorted(tools.items()))
    return counts


# -- report --------------------------------------------------------------------------------------


def format_report(report: Hwu64Report) -> str:
    lines = [f"{'split':<6} {'rows':>6} {'tool calls':>10} {'no_tool':>8} {'no_tool %':>9}"]
    for split, counts in report.splits.items():
        lines.append(
            f"{split:<6} {counts.rows:>6} {counts.tool_calls:>10} {counts.no_tool:>8} "
            f"{counts.no_tool_share:>9.1%}"
        )
    lines.append(
        f"{len(report.tools)} tools from {len(report.scenarios)} scenarios; {report.lines_read} lines read"
    )
    for title, drops in (("rows dropped", report.rows_dropped), ("slots dropped", report.slots_dropped)):
        lines.append(f"{title}: " + ", ".join(f"{reason} {count}" for reason, count in drops.items()))
    lines.append("wrote " + ", ".join(str(path) for path in report.paths.values()))
    return "\n".join(lines)
