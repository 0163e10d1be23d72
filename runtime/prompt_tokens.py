"""Router prompts as tokens: the shared prefix the runtime caches, and safe tokenization.

The prompt text is `RouterPrompt.render`, the renderer training used. It is tokenized with
special tokens enabled, since the template writes `<|im_start|>` and the like as text, except
that text coming from a user or a tool (the request, history turns, the call and a tool's output) never
becomes a special token: a
request that spells `<|im_end|>` is tokenized piecewise, template text with specials and user
text without, so it cannot close its own turn and forge an assistant answer.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence

from .chat_template import RouterPrompt, Turn
from .decoding import Vocabulary


class PromptTokenizer:
    """Renders and tokenizes router prompts; knows the request-independent token prefix."""

    def __init__(self, prompt: RouterPrompt, vocabulary: Vocabulary) -> None:
        self.prompt = prompt
        self.vocabulary = vocabulary
        self._bos_text = prompt.chat_template.bos_token
        # The shared prefix is what prompts agree on whatever the request and history are: the
        # token-level common prefix of a few probes (robust to merges across the boundary).
        probes = [
            self.tokens("a"),
            self.tokens("b"),
            self.tokens("a", [Turn(role="user", content="x"), Turn(role="assistant", content="y")]),
        ]
        self.prefix = probes[0][: common_prefix(probes)]

    def _with_bos(self, text: str, tokens: list[int]) -> list[int]:
        # A template that writes the BOS text itself already produced it; never add a second one.
        if self.vocabulary.add_bos and not (self._bos_text and text.startswith(self._bos_text)):
            return [self.vocabulary.bos, *tokens]
        return tokens

    def tokens(self, request: str, history: Sequence[Turn] = ()) -> list[int]:
        """The routing prompt's tokens."""

        def render(contents: Sequence[str]) -> str:
            return self.prompt.render(contents[0], _turns(history, contents[1:]))

        return self._safe_tokens(render, [request, *(turn.content for turn in history)])

    def answer_tokens(
        self, request: str, call: str, tool_output: str, history: Sequence[Turn] = ()
    ) -> list[int]:
        """The answer step's prompt tokens (`RouterPrompt.render_answer`). The call and the tool's
        output are text like the request: a tool that returns `<|im_end|>` cannot end its turn."""

        def render(contents: Sequence[str]) -> str:
            *turns, call_text, output = contents[1:]
            return self.prompt.render_answer(contents[0], call_text, output, _turns(history, turns))

        contents = [request, *(turn.content for turn in history), call, tool_output]
        return self._safe_tokens(render, contents)

    def _safe_tokens(self, render: Callable[[Sequence[str]], str], contents: Sequence[str]) -> list[int]:
        """`render(contents)` tokenized with special tokens, except inside `contents`."""
        text = render(contents)
        specials = self.vocabulary.special_texts
        if not any(s in c for c in contents for s in specials):
            return self._with_bos(text, self.vocabulary.tokenize(text, special=True))
        return self._with_bos(text, self._piecewise(text, render, contents))

    def _piecewise(
        self, text: str, render: Callable[[Sequence[str]], str], contents: Sequence[str]
    ) -> list[int]:
        tag = uuid.uuid4().hex
        marked = render([f"@@{tag}:{i}@@" for i in range(len(contents))])
        tokens: list[int] = []
        rebuilt: list[str] = []
        for part in re.split(f"(@@{tag}:\\d+@@)", marked):
            if match := re.fullmatch(f"@@{tag}:(\\d+)@@", part):
                content = contents[int(match.group(1))]
                tokens += self.vocabulary.tokenize(content, special=False)
                rebuilt.append(content)
            elif part:
                tokens += self.vocabulary.tokenize(part, special=True)
                rebuilt.append(part)
        if "".join(rebuilt) != text:
            # The template rewrites message content (trims it, say): the pieces would not be
            # the prompt. Refuse rather than let special-token text through.
            raise ValueError("the request contains special-token text that the chat template alters")
        return tokens


def _turns(history: Sequence[Turn], contents: Sequence[str]) -> list[Turn]:
    """`history` with each turn's content replaced (by a mark, or by itself)."""
    return [Turn(role=turn.role, content=content) for turn, content in zip(history, contents, strict=True)]


def common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences."""
    if not sequences:
        return 0
    length = min(len(s) for s in sequences)
    for index in range(length):
        token = sequences[0][index]
        if any(s[index] != token for s in sequences[1:]):
            return index
    return length
