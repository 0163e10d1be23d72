"""A multi-turn conversation served over the API renders the prompt its training row rendered.

The server used to write history calls with plain `json.dumps` (client key order, spaces kept),
while training writes them canonically; the model then saw a history it was never trained on.
"""

from __future__ import annotations

import json

import pytest

from support import ROOT
from toolroute.grammars import load_catalogue, render_system_prompt
from toolroute.runtime.base_models import packaged_gguf
from toolroute.runtime.chat_template import ChatTemplate, RouterPrompt
from toolroute.runtime.service import ApiError, ChatRequest, history_turn
from toolroute.train.formats import read_valid_examples

TOOLS = ROOT / "examples" / "customer_support" / "tools.py"

# Arguments in the client's own spelling: keys out of schema order, spaces after separators.
HISTORY_ARGUMENTS = '{"reason": "damaged",  "order_id": "ORD-12"}'
MESSAGES = [
    {"role": "system", "content": "You route requests."},
    {"role": "user", "content": "my parcel ORD-12 arrived broken, refund please"},
    {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "request_refund", "arguments": HISTORY_ARGUMENTS},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "refund RF-9 opened"},
    {"role": "user", "content": "and where is ORD-13?"},
]
ANSWER = {
    "role": "assistant",
    "tool_calls": [
        {
            "id": "c2",
            "type": "function",
            "function": {"name": "track_order", "arguments": '{"order_id":"ORD-13"}'},
        }
    ],
}


@pytest.fixture(scope="module")
def prompt() -> RouterPrompt:
    catalogue = load_catalogue(TOOLS)
    template = ChatTemplate.from_gguf(packaged_gguf())
    return RouterPrompt(chat_template=template, system_prompt=render_system_prompt(catalogue, "compact"))


def test_a_served_multi_turn_prompt_is_the_training_prompt_byte_for_byte(prompt, tmp_path):
    catalogue = load_catalogue(TOOLS)
    row = tmp_path / "row.jsonl"
    row.write_text(json.dumps({"messages": [*MESSAGES, ANSWER], "tools": catalogue.to_openai()}) + "\n")
    example = read_valid_examples(row, catalogue).examples[0]
    trained = prompt.render(example.request, example.history)

    request = ChatRequest.model_validate({"messages": MESSAGES})
    history = [turn for m in request.messages[:-1] if (turn := history_turn(m, catalogue)) is not None]
    served = prompt.render(request.messages[-1].text(), history)

    assert served == trained
    assert '{"tool":"request_refund","arguments":{"order_id":"ORD-12","reason":"damaged"}}' in served


@pytest.mark.parametrize(
    ("name", "arguments"),
    [("delete_everything", "{}"), ("request_refund", '{"order_id": 5}'), ("track_order", "[1]")],
)
def test_a_history_call_outside_the_catalogue_is_a_400_naming_messages(name, arguments):
    catalogue = load_catalogue(TOOLS)
    call = {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}
    message = ChatRequest.model_validate(
        {"messages": [{"role": "assistant", "tool_calls": [call]}, {"role": "user", "content": "x"}]}
    ).messages[0]
    with pytest.raises(ApiError) as raised:
        history_turn(message, catalogue)
    assert raised.value.status == 400 and raised.value.param == "messages"
