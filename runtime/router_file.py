"""What a router GGUF carries besides the model: the `toolroute.*` key-value fields.

One file is the whole router: the catalogue (and its hash), the prompt mode and the exact system
prompt the model was trained with, the GBNF grammar, the chat template, the base's identity, the
training manifest's hash and, once an evaluation picked one, the confidence threshold. Every value
is a GGUF string so that llama.cpp (`Llama.metadata`) reads it without the `gguf` package.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from toolroute.grammars import Catalogue, GrammarOptions

FORMAT_VERSION = 1
PREFIX = "toolroute."


class RouterFileError(ValueError):
    """A GGUF that is not a (valid) toolroute router file."""


class RouterMetadata(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    catalogue: str  # the catalogue as compact OpenAI tools JSON (Catalogue.to_json)
    catalogue_sha256: str
    prompt_mode: str
    system_prompt: str
    grammar: str
    grammar_options: str  # GrammarOptions as JSON
    chat_template: str
    completion_suffix: str
    base: str  # the base model's identity as JSON
    manifest_sha256: str
    min_confidence: str | None = None  # a decimal, once an evaluation picked a threshold

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
        )

    def to_kv(self) -> dict[str, str]:
        return {PREFIX + key: str(value) for key, value in self.model_dump(exclude_none=True).items()}

    @classmethod
    def from_kv(cls, kv: dict[str, Any], where: str = "router file") -> RouterMetadata:
        fields = {key.removeprefix(PREFIX): value for key, value in kv.items() if key.startswith(PREFIX)}
        if not fields:
            raise RouterFileError(f"{where}: no toolroute.* metadata: not a router exported by toolroute")
        try:
            metadata = cls(**{key: str(value) for key, value in fields.items()})
        except ValidationError as exc:
            problems = "; ".join(f"{PREFIX}{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise RouterFileError(f"{where}: invalid router metadata: {problems}") from None
        if int(metadata.format_version) > FORMAT_VERSION:
            raise RouterFileError(
                f"{where}: router format {metadata.format_version} is newer than this toolroute"
            )
        actual = hashlib.sha256(metadata.catalogue.encode("utf-8")).hexdigest()
        if actual != metadata.catalogue_sha256:
            raise RouterFileError(f"{where}: the catalogue does not match its hash (file damaged or edited)")
        return metadata

    def load_catalogue(self) -> Catalogue:
        return Catalogue.from_json(self.catalogue, where="toolroute.catalogue")

    @property
    def options(self) -> GrammarOptions:
        return GrammarOptions.model_validate(json.loads(self.grammar_options))

    @property
    def threshold(self) -> float | None:
        return None if self.min_confidence is None else float(self.min_confidence)
