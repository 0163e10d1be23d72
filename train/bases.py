"""Base models for training: a packaged GGUF, any GGUF file, a local Hugging Face directory or a hub id.

A GGUF base is loaded into transformers with `gguf_file=` (dequantized to fp32/bf16). Its identity
(path, sha256, architecture, chat template) goes into the run manifest.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from toolroute.runtime.base_models import _PACKAGED, BaseModelNotFound, base_gguf
from toolroute.runtime.chat_template import ChatTemplate
from toolroute.runtime.files import file_sha256

if TYPE_CHECKING:
    import torch


class BaseIdentity(BaseModel):
    spec: str
    kind: Literal["gguf", "hf", "hub"]
    path: str
    sha256: str
    architecture: str
    parameters: int
    chat_template_sha256: str


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Base:
    spec: str
    kind: Literal["gguf", "hf", "hub"]
    location: str  # the GGUF file, the local directory, or the hub id

    @classmethod
    def resolve(cls, spec: str) -> Base:
        if spec == "default" or spec in _PACKAGED or spec.endswith(".gguf"):
            return cls(spec, "gguf", str(base_gguf(spec)))
        path = Path(spec)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise BaseModelNotFound(f"{path}: a Hugging Face model directory needs a config.json")
            return cls(spec, "hf", str(path))
        if path.exists():
            raise BaseModelNotFound(f"{path}: neither a .gguf file nor a model directory")
        if spec.count("/") == 1 and not spec.startswith((".", "/")):
            if not _hub_reachable():
                raise BaseModelNotFound(
                    f"base {spec!r} looks like a Hugging Face hub id, but the hub cannot be reached "
                    "from here; use a packaged base (default, gemma3-270m), a .gguf file or a model directory"
                )
            return cls(spec, "hub", spec)
        raise BaseModelNotFound(
            f"base {spec!r}: not a packaged base ({', '.join(['default', *_PACKAGED])}), a .gguf file, "
            "a model directory or a hub id"
        )

    def _from_pretrained_args(self) -> tuple[str, dict[str, Any]]:
        if self.kind == "gguf":
            path = Path(self.location)
            return str(path.parent), {"gguf_file": path.name}
        return self.location, {}

    def load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        where, kwargs = self._from_pretrained_args()
        return AutoTokenizer.from_pretrained(where, **kwargs)

    def load_model(self, dtype: torch.dtype) -> Any:
        """The base as a plain, trainable transformers model.

        transformers dequantizes a GGUF on load but keeps it marked as GGUF-quantized, and then
        refuses to train or save it; a model rebuilt from the same config with the dequantized
        weights is an ordinary one.
        """
        from transformers import AutoModelForCausalLM

        where, kwargs = self._from_pretrained_args()
        loaded = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
        if self.kind != "gguf":
            return loaded
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise ValueError(f"{self.location}: weights do not fit the model ({missing}, {unexpected})")
        if tied:
            model.tie_weights()
        model.generation_config = loaded.generation_config
        return model

    def chat_template(self, tokenizer: Any | None = None) -> ChatTemplate:
        """The template the runtime will use: from the GGUF itself, else from the tokenizer."""
        if self.kind == "gguf":
            return ChatTemplate.from_gguf(self.location)
        tokenizer = tokenizer or self.load_tokenizer()
        if not tokenizer.chat_template:
            raise ValueError(f"base {self.spec!r} has no chat template")
        return ChatTemplate(
            template=tokenizer.chat_template,
            bos_token=tokenizer.bos_token or "",
            eos_token=tokenizer.eos_token,
        )

    def identity(self, model: Any, template: ChatTemplate) -> BaseIdentity:
        if self.kind == "gguf":
            digest = file_sha256(Path(self.location))
        elif self.kind == "hf":
            files = sorted(
                p for p in Path(self.location).iterdir() if p.suffix in (".json", ".safetensors", ".bin")
            )
            digest = hashlib.sha256(
                "".join(f"{p.name}:{file_sha256(p)}\n" for p in files).encode()
            ).hexdigest()
        else:
            digest = getattr(model.config, "_commit_hash", None) or "unknown"
        return BaseIdentity(
            spec=self.spec,
            kind=self.kind,
            path=self.location,
            sha256=digest,
            architecture=(model.config.architectures or [type(model).__name__])[0],
            parameters=sum(p.numel() for p in model.parameters()),
            chat_template_sha256=template.sha256,
        )
