"""Examples -> prompt/completion rows in the base model's own chat template.

The prompt is exactly what the runtime feeds llama.cpp (`RouterPrompt.render`); the completion is
the canonical call plus the end-of-turn token, the only text the loss is computed on.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

from toolroute.grammars import Catalogue, PromptMode, render_system_prompt
from toolroute.runtime.chat_template import ChatTemplate, RouterPrompt

from .examples import Example


class SftRow(BaseModel):
    prompt: str
    completion: str
    tool: str
    source: str


def router_prompt(catalogue: Catalogue, chat_template: ChatTemplate, mode: PromptMode | str) -> RouterPrompt:
    return RouterPrompt(chat_template=chat_template, system_prompt=render_system_prompt(catalogue, mode))


def sft_rows(examples: Iterable[Example], catalogue: Catalogue, prompt: RouterPrompt) -> list[SftRow]:
    return [
        SftRow(
            prompt=prompt.render(example.request, example.history),
            completion=prompt.completion(example.target.canonical(catalogue)),
            tool=example.target.tool,
            source=example.source,
        )
        for example in examples
    ]
