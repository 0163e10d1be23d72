"""Router files of every older format still load (committed fixtures, `tests/fixtures/README.md`).

Each fixture is the header key-values of a router file as that format wrote them; a toolroute that
stops reading one (a field renamed, made required, parsed differently) fails here, whatever the
tests of today's writer say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from toolroute.runtime.router_file import (
    DIGESTED_FROM,
    FORMAT_VERSION,
    PREFIX,
    RouterFileError,
    validate_router_kv,
)
from toolroute.runtime.thresholds import CallThreshold, NoToolThreshold

FIXTURES = Path(__file__).parent / "fixtures"
TOOLS = ["track_order", "request_refund", "escalate"]
COPIED = ["track_order.order_id", "request_refund.order_id", "escalate.order_id"]
# What each format added to the one before it (runtime/router_file.py, FORMAT_VERSION).
ADDED = {2: {"copied_arguments", "call_threshold", "no_tool_threshold"}, 3: {"answer_rows"}}


def _fixture(version: int) -> dict[str, Any]:
    return json.loads((FIXTURES / f"router_metadata_v{version}.json").read_text(encoding="utf-8"))


def _fields(kv: dict[str, Any]) -> set[str]:
    return {key.removeprefix(PREFIX) for key in kv if key.startswith(PREFIX)}


@pytest.mark.parametrize("version", [2, 3])
def test_each_fixture_adds_what_its_format_added(version):
    """The fixtures differ by their format's fields only, so each one tests that format."""
    assert _fields(_fixture(version)) - _fields(_fixture(version - 1)) == ADDED[version]
    assert _fixture(version)[PREFIX + "format_version"] == str(version)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_file_of_an_older_format_loads_with_its_fields(version):
    router_file = validate_router_kv(_fixture(version), f"router_metadata_v{version}.json")
    metadata = router_file.metadata
    assert metadata.format_version == version
    assert router_file.catalogue.names == TOOLS
    assert metadata.metadata_sha256 is None  # not written before format 4, and not asked for
    copied = metadata.copied(router_file.catalogue)
    if version >= 2:
        assert [entry.key for entry in copied] == COPIED
        assert all(entry.source == "inferred" and entry.share == 1.0 for entry in copied)
        assert [entry.values for entry in copied] == [140, 150, 61]
        assert metadata.call_rule == CallThreshold(score="min_token_logprob", value=-0.127)
        assert metadata.no_tool_rule == NoToolThreshold(score="no_tool_probability", value=0.188)
    else:
        assert (copied, metadata.call_rule, metadata.no_tool_rule) == ((), None, None)
    assert metadata.threshold is None  # the call rule is not the name probability's
    assert metadata.trained_answers == (408 if version >= 3 else 0)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_older_file_rewritten_today_keeps_every_field(version):
    """What `toolroute eval --pick-threshold` does to an older file: the metadata written again at
    today's format (with the fields that format requires) reads back the same."""
    old = validate_router_kv(_fixture(version), "old").metadata
    kv = old.model_copy(update={"format_version": FORMAT_VERSION}).to_kv()
    kv["tokenizer.chat_template"] = old.chat_template
    new = validate_router_kv(kv, "rewritten").metadata
    assert new.format_version == FORMAT_VERSION
    ignored = {"format_version", "metadata_sha256"}
    assert new.model_dump(exclude=ignored) == old.model_dump(exclude=ignored)


def test_only_the_format_number_excuses_a_missing_digest():
    """The version-3 fixture claiming a digested format is refused: older files load because they
    are older, not because the digest is optional."""
    kv = {**_fixture(3), PREFIX + "format_version": str(DIGESTED_FROM)}
    with pytest.raises(RouterFileError, match=r"lacks toolroute\.metadata_sha256"):
        validate_router_kv(kv, "claims-4.json")
