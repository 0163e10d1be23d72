"""Examples -> prompt/completion rows in the base model's own chat template.

The prompt is exactly what the runtime feeds llama.cpp (`RouterPrompt.render`); the completion is
the canonical call plus the end-of-turn token, the only text the loss is computed on.

A row with an answer step (`Example.answer`: the tool's output and the assistant's reply) gives a
second row right after its routing row: the prompt is `RouterPrompt.render_answer` (the routed
conversation, the canonical call, the tool's output), what `Router.answer` feeds llama.cpp, and the
completion is the reply plus the end-of-turn token. Rows without one give exactly the rows they
gave before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel

from toolroute.grammars import Catalogue, PromptMode, render_system_prompt
from toolroute.runtime.chat_template import ChatTemplate, RouterPrompt

from .examples import Example


class SftRow(BaseModel):
    prompt: str
    completion: str
    tool: str
    source: str
    step: Literal["route", "answer"] = "route"  # left out of `data sft` output when "route"


def router_prompt(catalogue: Catalogue, chat_template: ChatTemplate, mode: PromptMode | str) -> RouterPrompt:
    return RouterPrompt(chat_template=chat_template, system_prompt=render_system_prompt(catalogue, mode))


def sft_rows(examples: Iterable[Example], catalogue: Catalogue, prompt: RouterPrompt) -> list[SftRow]:
    rows = []
    for example in examples:
        call = example.target.canonical(catalogue)
        rows.append(
            SftRow(
                prompt=prompt.render(example.request, example.history),
                completion=prompt.completion(call),
                tool=example.target.tool,
                source=example.source,
            )
        )
        if example.answer is not None:
            rows.append(
                SftRow(
                    prompt=prompt.render_answer(
                        example.request, call, example.answer.tool_output, example.history
                    ),
                    completion=prompt.completion(example.answer.text),
                    tool=example.target.tool,
                    source=example.source,
                    step="answer",
                )
            )
    return rows
