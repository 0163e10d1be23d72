"""Render router prompts with the base model's own chat template.

Training (prompt/completion rows) and the runtime (what llama.cpp is fed) both call
`RouterPrompt.render`, so the prompt a router was trained on is the prompt it is served, byte
for byte. Templates are rendered by llama-cpp-python's Jinja2 chat formatter on a sandbox that
also bounds sizes and work (`template_sandbox.py`): a router file's template comes from whoever
made the file, and one that fails or goes past a bound is a `ChatTemplateError`, never a crash
or an unbounded allocation.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, ConfigDict

from .gguf_header import read_gguf_metadata
from .results import RouteInputError
from .template_sandbox import BoundedChatFormatter, TemplateLimitError, check_template

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


class ChatTemplateError(RouteInputError):
    """The chat template does not compile, refuses the conversation (its `raise_exception`), fails,
    or goes past a bound of the sandbox. A RouteInputError: at route time the conversation is
    what the template refused; a router file whose template fails on its own probes is refused
    at load."""


# What rendering a template can raise: Jinja's errors, the sandbox's bounds, `raise_exception`
# (a ValueError), a template's own type or arithmetic errors, and recursion (a macro calling itself).
_TEMPLATE_FAILURES = (
    jinja2.TemplateError,
    ValueError,
    TypeError,
    ArithmeticError,
    LookupError,
    RecursionError,
)


@functools.lru_cache(maxsize=16)
def _formatter(template: str, eos: str, bos: str, add_generation_prompt: bool) -> BoundedChatFormatter:
    """Compiling a Jinja template costs milliseconds; the runtime renders one per request."""
    try:
        return BoundedChatFormatter(template, eos, bos, add_generation_prompt=add_generation_prompt)
    except _TEMPLATE_FAILURES as exc:
        raise _template_error(exc, "does not compile") from None


def _template_error(exc: BaseException, situation: str) -> ChatTemplateError:
    if isinstance(exc, TemplateLimitError):
        return ChatTemplateError(str(exc))  # it already says what the template did
    reason = "it recurses too deeply" if isinstance(exc, RecursionError) else f"{type(exc).__name__}: {exc}"
    return ChatTemplateError(f"the chat template {situation}: {reason}")


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

        # `Llama(...)` compiles the file's templates with Jinja, which evaluates constant
        # expressions while compiling, unbounded: check them from the header first.
        for key, value in read_gguf_metadata(path).items():
            if key.startswith("tokenizer.chat_template"):
                try:
                    check_template(value)
                except _TEMPLATE_FAILURES as exc:
                    raise ChatTemplateError(
                        f"{path}: {key}: {_template_error(exc, 'does not compile')}"
                    ) from None
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
        try:
            return formatter(messages=messages).prompt
        except ChatTemplateError:
            raise
        except _TEMPLATE_FAILURES as exc:
            raise _template_error(exc, "fails on this conversation") from None

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
            raise ChatTemplateError(
                "chat template does not render an assistant answer after its generation prompt"
            )
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
        """The training target: the canonical call (or, for the answer step, the answer text)
        and the end-of-turn token."""
        return canonical_call + self.chat_template.completion_suffix()

    def answer_messages(
        self, request: str, call: str, tool_output: str, history: Sequence[Turn] = ()
    ) -> list[dict[str, Any]]:
        """The answer step's conversation: the routed one, the router's call (its canonical
        text, as history shows earlier calls) and the tool's output as a `tool` turn."""
        return [
            *self.messages(request, history),
            {"role": "assistant", "content": call},
            {"role": "tool", "content": tool_output},
        ]

    def render_answer(self, request: str, call: str, tool_output: str, history: Sequence[Turn] = ()) -> str:
        """The prompt the answer to a tool's output is generated from: training's answer rows
        and `Router.answer` both render it here, so they agree byte for byte."""
        return self.chat_template.render_prompt(self.answer_messages(request, call, tool_output, history))
