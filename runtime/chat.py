"""Render router prompts with the base model's own chat template.

Training (prompt/completion rows) and the runtime (what llama.cpp is fed) both call
`RouterPrompt.render`, so the prompt a router was trained on is the prompt it is served, byte
for byte. Templates are rendered by llama-cpp-python's Jinja2 chat formatter (a sandboxed
Jinja2 environment, the same one its own chat completion uses).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from pydantic import BaseModel, ConfigDict

SENTINEL = "\x00toolroute-completion\x00"

# Pretrained (not instruction-tuned) GGUFs may carry no chat template; these are the turn formats of
# their families, keyed by `general.architecture`. Gemma has no system role: the system text opens
# the first user turn, as Gemma's own template does.
FALLBACK_TEMPLATES = {
    "gemma3": (
        "{{ bos_token }}"
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- set prefix = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}"
        "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
        "{%- for message in turns -%}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
        "<start_of_turn>{{ role }}{{ '\\n' }}{{ prefix if loop.first else '' }}"
        "{{ message['content'] | trim }}"
        "<end_of_turn>{{ '\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}<start_of_turn>model{{ '\\n' }}{%- endif -%}"
    ),
}


@functools.lru_cache(maxsize=16)
def _formatter(template: str, eos: str, bos: str, add_generation_prompt: bool) -> Jinja2ChatFormatter:
    """Compiling a Jinja template costs milliseconds; the runtime renders one per request."""
    return Jinja2ChatFormatter(template, eos, bos, add_generation_prompt=add_generation_prompt)


class Turn(BaseModel):
    """One turn of conversation before the routed request."""

    model_config = ConfigDict(frozen=True)

    role: Literal["user", "assistant", "tool"]
    content: str


class ChatTemplate(BaseModel):
    """A model's chat template and the special tokens it refers to."""

    model_config = ConfigDict(frozen=True)

    template: str
    bos_token: str
    eos_token: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.template.encode("utf-8")).hexdigest()

    @classmethod
    def from_gguf(cls, path: str | Path) -> ChatTemplate:
        """Read the template and special tokens from a GGUF (vocabulary only: fast)."""
        from llama_cpp import Llama

        llama = Llama(str(path), vocab_only=True, verbose=False)
        try:
            architecture = llama.metadata.get("general.architecture", "")
            template = llama.metadata.get("tokenizer.chat_template") or FALLBACK_TEMPLATES.get(architecture)
            if not template:
                raise ValueError(
                    f"{path}: the GGUF carries no tokenizer.chat_template (architecture {architecture!r})"
                )

            def text(token: int) -> str:
                return llama.detokenize([token], special=True).decode("utf-8") if token >= 0 else ""

            bos, eos = text(llama.token_bos()), text(llama.token_eos())
            return cls(template=template, bos_token=bos, eos_token=eos)
        finally:
            llama.close()  # now, not at interpreter exit, where llama-cpp-python's finaliser can fail

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        formatter = _formatter(self.template, self.eos_token, self.bos_token, add_generation_prompt)
        return formatter(messages=messages).prompt

    def render_prompt(self, messages: list[dict[str, Any]]) -> str:
        """The conversation up to and including the assistant header the model continues from."""
        return self._render(messages, add_generation_prompt=True)

    def completion_suffix(self) -> str:
        """What the template writes after an assistant message's content: its end-of-turn marker.

        Found by rendering a sentinel answer (`<|im_end|>` for SmolLM2, `<end_of_turn>` for Gemma);
        the trained completion ends with it so the model learns to stop where generation stops.
        """
        probe = [{"role": "user", "content": "x"}]
        prompt = self.render_prompt(probe)
        full = self._render([*probe, {"role": "assistant", "content": SENTINEL}], add_generation_prompt=False)
        if SENTINEL not in full or not full.startswith(prompt):
            raise ValueError("chat template does not render an assistant answer after its generation prompt")
        after = full[full.index(SENTINEL) + len(SENTINEL) :].strip()
        return after or self.eos_token


class RouterPrompt(BaseModel):
    """Everything that decides the prompt text: the template and the rendered system prompt."""

    model_config = ConfigDict(frozen=True)

    chat_template: ChatTemplate
    system_prompt: str

    def messages(self, request: str, history: Sequence[Turn] = ()) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": self.system_prompt},
            *({"role": turn.role, "content": turn.content} for turn in history),
            {"role": "user", "content": request},
        ]

    def render(self, request: str, history: Sequence[Turn] = ()) -> str:
        return self.chat_template.render_prompt(self.messages(request, history))

    def completion(self, canonical_call: str) -> str:
        """The training target: the canonical call and the end-of-turn token."""
        return canonical_call + self.chat_template.completion_suffix()
