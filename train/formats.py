"""Read training data in the formats users have into validated `Example`s.

One JSON object per line, in any of:
1. router format: `messages` = system, user, assistant whose content is the canonical call
   (`{"tool":...,"arguments":{...}}` or `{"tool":"no_tool","reason":"..."}`);
2. OpenAI / Azure chat fine-tuning with tools: `messages` (+ `tools` per row), the assistant turn
   has `tool_calls`; an assistant turn with plain content and no `tool_calls` is the no_tool path
   (reason = that content); `tool` turns and a final answer after the call are kept as followup,
   and a tool result followed by an assistant reply is the row's answer step (`Example.answer`);
3. legacy OpenAI: `functions` + assistant `function_call`, `function` result turns.
Turns before the routed user turn are kept as history. Every problem is reported as
`file:line: what is wrong`, and reading goes on so that one run lists them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from toolroute.grammars import NO_TOOL, Catalogue, CatalogueError
from toolroute.runtime.chat_template import Turn

from .examples import Answer, Example, Target
from .jsonl import JsonTextError, parse_json, read_jsonl

ROLES = ("system", "user", "assistant", "tool", "function")


class RowError(ValueError):
    """What is wrong with one line."""


@dataclass(frozen=True)
class DataError:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class ReadResult:
    """Examples read from one file, the errors found, and the catalogue they were checked against."""

    path: Path
    examples: list[Example] = field(default_factory=list)
    errors: list[DataError] = field(default_factory=list)
    catalogue: Catalogue | None = None
    formats: dict[str, int] = field(default_factory=dict)
    lines: dict[str, str] = field(default_factory=dict)  # source -> the line as written


def read_examples(
    path: str | Path, catalogue: Catalogue | None = None, union_tools: bool = False
) -> ReadResult:
    """Read and validate every line of a JSONL file. Never modifies it; never stops at the first error."""
    path = Path(path)
    result = ReadResult(path=path, catalogue=catalogue)
    reader = _RowReader(result, union_tools)
    try:
        for line in read_jsonl(path):
            if line.error is not None:
                result.errors.append(DataError(str(path), line.number, line.error))
                continue
            source = f"{path}:{line.number}"
            try:
                example, kind = reader.read(line.value, source)
            except RowError as exc:
                result.errors.append(DataError(str(path), line.number, str(exc)))
                continue
            result.examples.append(example)
            result.lines[source] = line.text
            result.formats[kind] = result.formats.get(kind, 0) + 1
    except OSError as exc:
        result.errors.append(DataError(str(path), 0, f"cannot read the file: {exc}"))
    return result


class InvalidDataError(ValueError):
    """A data file with invalid rows, or none at all, where only valid examples will do."""


def read_valid_examples(
    path: str | Path, catalogue: Catalogue | None = None, union_tools: bool = False, shown: int = 10
) -> ReadResult:
    """`read_examples`, or InvalidDataError listing the first `shown` errors (file:line: what)."""
    result = read_examples(path, catalogue, union_tools)
    if result.errors:
        listed = "\n".join(f"  {error}" for error in result.errors[:shown])
        more = f"\n  ... and {len(result.errors) - shown} more" if len(result.errors) > shown else ""
        raise InvalidDataError(
            f"{path}: {len(result.errors)} invalid rows (`toolroute data check` reports them all):"
            f"\n{listed}{more}"
        )
    if not result.examples:
        raise InvalidDataError(f"{path}: no examples")
    return result


def _schema_errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or '(arguments)'}: {error['msg']}" for error in exc.errors()
    )


class _RowReader:
    def __init__(self, result: ReadResult, union_tools: bool) -> None:
        self.result = result
        self.union_tools = union_tools

    # -- catalogue ---------------------------------------------------------------------------

    def _catalogue_for(self, row: dict[str, Any]) -> Catalogue:
        row_catalogue = None
        for key in ("tools", "functions"):
            if key in row:
                try:
                    row_catalogue = Catalogue.from_openai({key: row[key]}, where="row")
                except CatalogueError as exc:
                    raise RowError(str(exc)) from None
        run = self.result.catalogue
        if row_catalogue is None:
            if run is None:
                raise RowError("no tool catalogue: this row carries no `tools`; give one with --tools FILE")
            return run
        if run is None:
            self.result.catalogue = row_catalogue
        elif row_catalogue != run:
            if not self.union_tools:
                raise RowError(
                    f"the row's tools differ from the run's catalogue ({row_catalogue.diff(run)}); "
                    "pass --union-tools to merge them"
                )
            try:
                self.result.catalogue = run.union(row_catalogue)
            except CatalogueError as exc:
                raise RowError(str(exc)) from None
        return self.result.catalogue  # type: ignore[return-value]

    # -- rows --------------------------------------------------------------------------------

    def read(self, row: Any, source: str) -> tuple[Example, str]:
        if not isinstance(row, dict):
            raise RowError(f"expected a JSON object, got {type(row).__name__}")
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RowError("missing 'messages' (a non-empty list)")
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise RowError(f"messages[{index}]: expected an object")
            if message.get("role") not in ROLES:
                raise RowError(
                    f"messages[{index}].role: {message.get('role')!r} is not one of {', '.join(ROLES)}"
                )
        roles = [m["role"] for m in messages]
        for role in ("user", "assistant"):
            if role not in roles:
                raise RowError(f"missing role: no '{role}' message")
        if "system" in roles[1:]:
            raise RowError(f"messages[{roles.index('system', 1)}]: a system message must come first")
        routed = self._routed_index(messages)
        request = messages[routed - 1].get("content")
        if not isinstance(request, str) or not request.strip():
            raise RowError(f"messages[{routed - 1}].content: empty user message")
        catalogue = self._catalogue_for(row)
        target, call_id, kind = self._target(messages[routed], routed, catalogue)
        start = 1 if roles[0] == "system" else 0
        history = tuple(self._turn(messages[i], i, catalogue) for i in range(start, routed - 1))
        followup = tuple(messages[routed + 1 :])
        self._check_followup(followup, routed + 1, target, call_id)
        answer = self._answer(followup, routed + 1)
        system = messages[0].get("content") if start else None
        if start and not isinstance(system, str):
            raise RowError("messages[0].content: a system message's content must be a string")
        example = Example(
            request=request,
            target=target,
            history=history,
            followup=followup,
            answer=answer,
            system=system,
            source=source,
        )
        return example, kind

    @staticmethod
    def _routed_index(messages: list[dict[str, Any]]) -> int:
        """The assistant turn answering the last user turn: the call (or refusal) being trained.

        Turns before that user turn are history; turns after the answer (tool results, the
        assistant's reply to them) are followup.
        """
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        if last_user + 1 == len(messages) or messages[last_user + 1]["role"] != "assistant":
            raise RowError(f"messages[{last_user}]: the last user turn has no assistant answer after it")
        return last_user + 1

    def _target(
        self, message: dict[str, Any], index: int, catalogue: Catalogue
    ) -> tuple[Target, str | None, str]:
        where = f"messages[{index}]"
        if message.get("tool_calls"):
            calls = message["tool_calls"]
            if not isinstance(calls, list):
                raise RowError(f"{where}.tool_calls: expected a list")
            if len(calls) != 1:
                raise RowError(
                    f"{where}.tool_calls: {len(calls)} calls in one assistant turn; toolroute routes "
                    "one call per request and does not train parallel calls yet"
                )
            call = calls[0]
            if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
                raise RowError(
                    f"{where}.tool_calls[0]: expected {{'id', 'type': 'function', 'function': {{...}}}}"
                )
            target = self._call(call["function"], f"{where}.tool_calls[0].function", catalogue)
            return target, call.get("id"), "openai"
        if message.get("function_call"):
            call = message["function_call"]
            if not isinstance(call, dict):
                raise RowError(f"{where}.function_call: expected an object")
            return self._call(call, f"{where}.function_call", catalogue), None, "legacy"
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise RowError(f"{where}: the assistant turn has neither tool_calls nor content")
        if content.lstrip().startswith("{"):
            return self._router_call(content, where, catalogue), None, "router"
        return Target(tool=NO_TOOL, reason=content.strip()), None, "openai"

    def _call(self, function: dict[str, Any], where: str, catalogue: Catalogue) -> Target:
        name = function.get("name")
        if not isinstance(name, str):
            raise RowError(f"{where}.name: missing")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise RowError(
                f"{where}.arguments: must be a string holding JSON, got {type(arguments).__name__}"
            )
        try:
            parsed = parse_json(arguments)
        except JsonTextError as exc:
            raise RowError(f"{where}.arguments is not valid JSON text: {exc}") from None
        return self._validated(name, parsed, where, catalogue)

    def _router_call(self, content: str, where: str, catalogue: Catalogue) -> Target:
        try:
            data = parse_json(content)
        except JsonTextError as exc:
            raise RowError(f"{where}.content is not valid JSON: {exc}") from None
        shape = '{"tool":...,"arguments":{...}} or {"tool":"no_tool","reason":"..."}'
        if not isinstance(data, dict) or not isinstance(data.get("tool"), str):
            raise RowError(f"{where}.content must be {shape}")
        if data["tool"] == NO_TOOL:
            if set(data) != {"tool", "reason"} or not isinstance(data["reason"], str) or not data["reason"]:
                raise RowError(
                    f'{where}.content: a no_tool answer is exactly {{"tool":"no_tool","reason":"..."}}'
                )
            return Target(tool=NO_TOOL, reason=data["reason"])
        if set(data) != {"tool", "arguments"}:
            raise RowError(f"{where}.content must be {shape}, got keys {sorted(data)}")
        return self._validated(data["tool"], data["arguments"], where, catalogue)

    @staticmethod
    def _validated(name: str, arguments: Any, where: str, catalogue: Catalogue) -> Target:
        if name not in catalogue:
            raise RowError(f"{where}: unknown tool {name!r} (the catalogue has {', '.join(catalogue.names)})")
        if not isinstance(arguments, dict):
            raise RowError(f"{where}: arguments for {name!r} must be a JSON object")
        try:
            catalogue.arguments_model(name).model_validate_json(json.dumps(arguments))
        except ValidationError as exc:
            raise RowError(f"{where}: arguments fail the schema of {name!r}: {_schema_errors(exc)}") from None
        return Target(tool=name, arguments=arguments)

    def _turn(self, message: dict[str, Any], index: int, catalogue: Catalogue) -> Turn:
        role = message["role"]
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            target, _, _ = self._target(message, index, catalogue)
            return Turn(role="assistant", content=target.canonical(catalogue))
        content = message.get("content")
        if not isinstance(content, str):
            raise RowError(f"messages[{index}].content: expected a string")
        return Turn(role="tool" if role == "function" else role, content=content)

    @staticmethod
    def _answer(followup: tuple[dict[str, Any], ...], offset: int) -> Answer | None:
        """The answer step: the call's result (a `tool` or legacy `function` turn) followed by an
        assistant turn with plain content. Turns after that answer are not trained."""
        if len(followup) < 2 or followup[0]["role"] not in ("tool", "function"):
            return None
        output = _text_content(followup[0].get("content"), f"messages[{offset}].content", "a tool result")
        reply = followup[1]
        if reply["role"] != "assistant" or reply.get("tool_calls") or reply.get("function_call"):
            return None  # another call, or more results: not an answer step this router trains
        text = _text_content(
            reply.get("content"), f"messages[{offset + 1}].content", "the assistant's answer"
        )
        if not text.strip():
            raise RowError(
                f"messages[{offset + 1}].content: the assistant's answer to the tool result is empty"
            )
        return Answer(tool_output=output, text=text.strip())

    @staticmethod
    def _check_followup(
        followup: tuple[dict[str, Any], ...], offset: int, target: Target, call_id: str | None
    ) -> None:
        for position, message in enumerate(followup):
            where = f"messages[{offset + position}]"
            if message["role"] == "tool":
                if target.is_no_tool:
                    raise RowError(f"{where}: a tool result without a tool call before it")
                if call_id is not None and message.get("tool_call_id") != call_id:
                    raise RowError(
                        f"{where}.tool_call_id {message.get('tool_call_id')!r} "
                        f"does not match the call's id {call_id!r}"
                    )
            if message["role"] == "function":
                if target.is_no_tool:
                    raise RowError(f"{where}: a function result without a function call before it")
                if message.get("name") != target.tool:
                    raise RowError(
                        f"{where}.name {message.get('name')!r} "
                        f"does not match the called function {target.tool!r}"
                    )


def _text_content(content: Any, where: str, what: str) -> str:
    """A message's content as text: a string, or a list of `{"type": "text", "text": ...}` parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    raise RowError(f"{where}: {what} must be a string or a list of text parts")
