"""What a router GGUF carries besides the model: the `toolroute.*` key-value fields.

One file is the whole router: the catalogue (and its hash), the prompt mode and the exact system
prompt the model was trained with, the GBNF grammar, the chat template, the base's identity, the
training manifest's hash, the copied arguments (format 2), whether it learned the answer step
(format 3: `answer_rows`), once an evaluation picked them, the thresholds (the name-probability
`min_confidence`; format 2: the call-score and no_tool ones) and (format 4) `metadata_sha256`, a
digest of every other `toolroute.*` value. Every value is a GGUF string so that llama.cpp
(`Llama.metadata`) reads it without the `gguf` package.

A router file may come from anyone, so nothing in it is trusted as is (`RouterMetadata.from_kv`):
every field has a size cap; the grammar toolroute decodes with is regenerated from the catalogue
and grammar options, so no crafted grammar ever reaches llama.cpp's parser (20,000 nested
parentheses crashed it), and a file exported before a change to the grammar generator still loads
(the embedded copy serves stock llama.cpp users; `RouterFile.embedded_grammar_matches` and
`toolroute inspect` say whether it is the current one); the chat templates (`toolroute.chat_template` and the
`tokenizer.chat_template*` that llama-cpp-python compiles on load) must compile in the bounded
sandbox and hold no constant expression Jinja would evaluate unbounded while compiling.
`read_router_file` does all this from the file's header, before llama.cpp opens the file. The
digest makes a damaged value (a flipped byte in the system prompt, the base's identity, a threshold)
a refused file rather than a router that silently behaves differently; like the catalogue's hash,
it detects damage, not tampering: whoever can edit the file can recompute it.

Versioning: `RouterMetadata` is the one definition of the fields and `FORMAT_VERSION` their
version. A later field comes with a default and a bumped version; a file of an older version
loads with the defaults, a file of a newer version is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolroute.grammars import Catalogue, CatalogueError, CopiedArgument, GrammarOptions, SchemaError
from toolroute.grammars.copied import copied_from_json, copied_to_json

from .bounded_json import JsonInputError, loads_bounded
from .gguf_header import GgufHeaderError, read_gguf_metadata
from .template_sandbox import TemplateLimitError, check_template
from .thresholds import CallThreshold, NoToolThreshold

# 1: the first format. 2: `copied_arguments`, `call_threshold`, `no_tool_threshold` (all optional).
# 3: `answer_rows` (optional: absent, the router learned no answer step).
# 4: `metadata_sha256` (required from 4 on): the digest of all the other `toolroute.*` values.
FORMAT_VERSION = 4
DIGESTED_FROM = 4  # the first format whose files must carry `metadata_sha256`
PREFIX = "toolroute."
TEMPLATE_KEY = "tokenizer.chat_template"  # llama-cpp-python also compiles every `TEMPLATE_KEY.*`

# Size caps, in characters. The largest real values: HWU64's 54 tools are a 46 KB catalogue, a
# 111 KB grammar and a 36 KB system prompt in full mode; chat templates run to ~20 KB.
MAX_CATALOGUE = 1 << 20
MAX_GRAMMAR = 1 << 22
MAX_SYSTEM_PROMPT = 1 << 20
MAX_CHAT_TEMPLATE = 1 << 18
MAX_SMALL_FIELD = 1 << 12  # hashes, names, options and the base's identity
MAX_COPIED = 1 << 18  # the copied-arguments list: ~100 bytes an argument

_Small = Annotated[str, Field(max_length=MAX_SMALL_FIELD)]


class RouterFileError(ValueError):
    """A GGUF that is not a (valid) toolroute router file."""


def _copied_value(copied: Iterable[CopiedArgument]) -> str | None:
    """`toolroute.copied_arguments` as stored: absent when no argument is copied."""
    entries = tuple(copied)
    return copied_to_json(entries) if entries else None


class RouterMetadata(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = Field(FORMAT_VERSION, ge=1)
    # the catalogue as compact OpenAI tools JSON (Catalogue.to_json)
    catalogue: Annotated[str, Field(max_length=MAX_CATALOGUE)]
    catalogue_sha256: _Small
    prompt_mode: _Small
    system_prompt: Annotated[str, Field(max_length=MAX_SYSTEM_PROMPT)]
    grammar: Annotated[str, Field(max_length=MAX_GRAMMAR)]
    grammar_options: _Small  # GrammarOptions as JSON
    chat_template: Annotated[str, Field(max_length=MAX_CHAT_TEMPLATE)]
    completion_suffix: _Small
    base: _Small  # the base model's identity as JSON
    manifest_sha256: _Small
    min_confidence: _Small | None = None  # a decimal, once an evaluation picked a threshold
    # Format 2. The copied arguments as a JSON list of `CopiedArgument` (absent: none).
    copied_arguments: Annotated[str, Field(max_length=MAX_COPIED)] | None = None
    call_threshold: _Small | None = None  # `CallThreshold` as JSON, once an evaluation picked one
    no_tool_threshold: _Small | None = None  # `NoToolThreshold` as JSON, likewise
    # Format 3. How many answer-step rows (a tool's output and the reply to it) training had, as a
    # decimal; absent or "0": the router never learned to answer, and `Router.answer` refuses.
    answer_rows: _Small | None = None
    # Format 4. `metadata_digest` of every other field as written; `to_kv` computes it.
    metadata_sha256: _Small | None = None

    @classmethod
    def build(
        cls,
        catalogue: Catalogue,
        *,
        prompt_mode: str,
        system_prompt: str,
        chat_template: str,
        completion_suffix: str,
        base: str,
        manifest_sha256: str,
        options: GrammarOptions | None = None,
        min_confidence: float | None = None,
        copied: tuple[CopiedArgument, ...] | list[CopiedArgument] = (),
        answer_rows: int = 0,
    ) -> RouterMetadata:
        """Metadata for a catalogue: its JSON, hash and grammar are derived here, in one place."""
        from toolroute.grammars import catalogue_gbnf

        options = options or GrammarOptions()
        return cls(
            catalogue=catalogue.to_json(),
            catalogue_sha256=catalogue.sha256,
            prompt_mode=prompt_mode,
            system_prompt=system_prompt,
            grammar=catalogue_gbnf(catalogue, options),
            grammar_options=options.model_dump_json(),
            chat_template=chat_template,
            completion_suffix=completion_suffix,
            base=base,
            manifest_sha256=manifest_sha256,
            min_confidence=None if min_confidence is None else str(min_confidence),
            copied_arguments=_copied_value(copied),
            answer_rows=str(answer_rows) if answer_rows else None,
        )

    def with_copied(self, copied: Iterable[CopiedArgument]) -> RouterMetadata:
        """The same metadata with other copied arguments (marks are metadata: nothing else changes)."""
        return self.model_copy(update={"copied_arguments": _copied_value(copied)})

    def to_kv(self) -> dict[str, str]:
        """The GGUF key-values; from format 4 on with the digest of the others, computed here
        (any stored `metadata_sha256` is stale once a field changed, so it is never copied)."""
        values = self.model_dump(exclude_none=True, exclude={"metadata_sha256"})
        kv = {PREFIX + key: str(value) for key, value in values.items()}
        if self.format_version >= DIGESTED_FROM:
            kv[PREFIX + "metadata_sha256"] = metadata_digest(kv)
        return kv

    @classmethod
    def from_kv(cls, kv: dict[str, Any], where: str = "router file") -> RouterMetadata:
        """The metadata of a GGUF's key-values, with every check in the module docstring."""
        return validate_router_kv(kv, where).metadata

    def load_catalogue(self) -> Catalogue:
        return Catalogue.from_json(self.catalogue, where="toolroute.catalogue")

    @property
    def options(self) -> GrammarOptions:
        return GrammarOptions.model_validate_json(self.grammar_options)

    @property
    def threshold(self) -> float | None:
        return None if self.min_confidence is None else float(self.min_confidence)

    def copied(self, catalogue: Catalogue) -> tuple[CopiedArgument, ...]:
        """The copied arguments, checked against the catalogue (raises CatalogueError)."""
        if self.copied_arguments is None:
            return ()
        return copied_from_json(self.copied_arguments, catalogue.tools, f"{PREFIX}copied_arguments")

    @property
    def trained_answers(self) -> int:
        """Answer-step rows the router was trained on (0: it cannot answer a tool's output)."""
        return 0 if self.answer_rows is None else int(self.answer_rows)

    @property
    def call_rule(self) -> CallThreshold | None:
        return None if self.call_threshold is None else CallThreshold.model_validate_json(self.call_threshold)

    @property
    def no_tool_rule(self) -> NoToolThreshold | None:
        if self.no_tool_threshold is None:
            return None
        return NoToolThreshold.model_validate_json(self.no_tool_threshold)


def metadata_digest(kv: dict[str, str]) -> str:
    """The SHA-256 of a router's `toolroute.*` values but `metadata_sha256` (canonical JSON: keys
    sorted, UTF-8), the one definition the writer and the reader share."""
    digested = {key: value for key, value in kv.items() if key.startswith(PREFIX)}
    digested.pop(PREFIX + "metadata_sha256", None)
    text = json.dumps(digested, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RouterFile:
    """A router file's checked metadata, its catalogue, and all of the header's scalar key-values."""

    path: str
    metadata: RouterMetadata  # its `grammar` is the regenerated one, whatever the file embeds
    catalogue: Catalogue
    kv: dict[str, str]
    embedded_grammar_matches: bool  # the file's own `toolroute.grammar` equals the regenerated one


def read_router_file(path: str | Path) -> RouterFile:
    """Read and check a router GGUF's metadata from its header, without llama.cpp (the one reader:
    `Router.load`, `toolroute inspect` and the measurements all use it). Raises RouterFileError."""
    where = str(path)
    try:
        kv = read_gguf_metadata(path)
    except GgufHeaderError as exc:
        raise RouterFileError(str(exc)) from None
    return validate_router_kv(kv, where)


def validate_router_kv(kv: dict[str, Any], where: str) -> RouterFile:
    """Check a GGUF's key-values as a router file (`where` names it in errors); see the module docstring."""
    fields = {key.removeprefix(PREFIX): str(value) for key, value in kv.items() if key.startswith(PREFIX)}
    if not fields:
        raise RouterFileError(f"{where}: no toolroute.* metadata: not a router exported by toolroute")
    # A file without the field predates it: the first format (toolroute has always written it).
    version = fields.get("format_version", "1")
    if not (version.isascii() and version.isdigit() and len(version) <= 6):
        raise RouterFileError(f"{where}: {PREFIX}format_version {version[:20]!r} is not a version number")
    if int(version) > FORMAT_VERSION:
        raise RouterFileError(
            f"{where}: router format {int(version)} is newer than this toolroute (it reads up to "
            f"{FORMAT_VERSION}); upgrade toolroute"
        )
    try:
        metadata = RouterMetadata(**{**fields, "format_version": version})
    except ValidationError as exc:
        problems = "; ".join(f"{PREFIX}{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RouterFileError(f"{where}: invalid router metadata: {problems}") from None
    actual = hashlib.sha256(metadata.catalogue.encode("utf-8")).hexdigest()
    if actual != metadata.catalogue_sha256:
        raise RouterFileError(f"{where}: the catalogue does not match its hash (file damaged or edited)")
    _check_small_fields(metadata, where)
    try:
        catalogue = metadata.load_catalogue()
    except (CatalogueError, ValueError, RecursionError) as exc:  # whatever the JSON holds: refused
        raise RouterFileError(f"{where}: the embedded catalogue does not load: {exc}") from None
    try:
        metadata.copied(catalogue)
        metadata.call_rule  # noqa: B018 - parsing is the check
        metadata.no_tool_rule  # noqa: B018
    except (CatalogueError, ValidationError, ValueError) as exc:
        raise RouterFileError(f"{where}: invalid router metadata: {exc}") from None
    grammar = _regenerated_grammar(metadata, catalogue, where)
    _check_templates(metadata, kv, where)
    # Last, so that a crafted value meets its own check (and message) above first.
    _check_digest(metadata, kv, where)
    return RouterFile(
        where,
        metadata.model_copy(update={"grammar": grammar}),
        catalogue,
        {key: str(value) for key, value in kv.items()},
        embedded_grammar_matches=metadata.grammar == grammar,
    )


def _check_digest(metadata: RouterMetadata, kv: dict[str, Any], where: str) -> None:
    if metadata.format_version < DIGESTED_FROM:
        return
    if metadata.metadata_sha256 is None:
        raise RouterFileError(
            f"{where}: router format {metadata.format_version} lacks {PREFIX}metadata_sha256 "
            "(file damaged or edited)"
        )
    written = {key: str(value) for key, value in kv.items() if key.startswith(PREFIX)}
    if metadata_digest(written) != metadata.metadata_sha256:
        raise RouterFileError(
            f"{where}: the {PREFIX}* metadata does not match {PREFIX}metadata_sha256 (file damaged or edited)"
        )


def _check_small_fields(metadata: RouterMetadata, where: str) -> None:
    try:
        metadata.options  # noqa: B018 - parsing is the check
        loads_bounded(metadata.base, what=f"{PREFIX}base")
    except (ValidationError, JsonInputError) as exc:
        raise RouterFileError(f"{where}: invalid router metadata: {exc}") from None
    if metadata.answer_rows is not None and not (
        metadata.answer_rows.isascii() and metadata.answer_rows.isdigit() and len(metadata.answer_rows) <= 12
    ):
        raise RouterFileError(
            f"{where}: {PREFIX}answer_rows {metadata.answer_rows[:20]!r} is not a count of rows"
        )
    if metadata.min_confidence is not None:
        try:
            threshold = float(metadata.min_confidence)
        except ValueError:
            threshold = -1.0
        if not 0.0 <= threshold <= 1.0:
            raise RouterFileError(
                f"{where}: {PREFIX}min_confidence {metadata.min_confidence[:20]!r} is not a number in [0, 1]"
            )


def _regenerated_grammar(metadata: RouterMetadata, catalogue: Catalogue, where: str) -> str:
    """The grammar the catalogue and options make: the file's own text never reaches llama.cpp's
    grammar parser, whatever it holds."""
    from toolroute.grammars import catalogue_gbnf

    try:
        return catalogue_gbnf(catalogue, metadata.options)
    except (CatalogueError, SchemaError, ValueError) as exc:
        raise RouterFileError(f"{where}: no grammar can be made for the embedded catalogue: {exc}") from None


def _check_templates(metadata: RouterMetadata, kv: dict[str, Any], where: str) -> None:
    """The router's template, and each template llama-cpp-python compiles when it opens the file."""
    if TEMPLATE_KEY in kv and str(kv[TEMPLATE_KEY]) != metadata.chat_template:
        raise RouterFileError(
            f"{where}: {TEMPLATE_KEY} differs from {PREFIX}chat_template (toolroute writes the same "
            "template to both: file damaged or edited)"
        )
    templates = {f"{PREFIX}chat_template": metadata.chat_template}
    templates |= {key: str(value) for key, value in kv.items() if key.startswith(TEMPLATE_KEY + ".")}
    for key, template in templates.items():
        if len(template) > MAX_CHAT_TEMPLATE:
            raise RouterFileError(
                f"{where}: {key} is {len(template):,} characters, over the {MAX_CHAT_TEMPLATE:,} limit"
            )
        try:
            check_template(template)
        except TemplateLimitError as exc:
            raise RouterFileError(f"{where}: {key} is refused: {exc}") from None
        except TemplateError as exc:
            raise RouterFileError(f"{where}: {key} does not compile: {type(exc).__name__}: {exc}") from None
