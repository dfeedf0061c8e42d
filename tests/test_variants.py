"""Prompt variants: declared, versioned message transformations, checked at configuration."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paramloop.engine.config import parse_config
from paramloop.engine.service import upstream_body
from paramloop.engine.variants import PromptVariant
from paramloop.errors import ConfigError
from paramloop.types import Params

PERSONA = PromptVariant("persona", version=3, system="You are terse.", prefix="Q: ", suffix=" A:")

roles = st.sampled_from(["system", "user", "assistant"])
messages = st.lists(
    st.fixed_dictionaries({"role": roles, "content": st.text(max_size=20)}), max_size=6
)


@given(messages)
def test_a_variant_wraps_only_the_last_user_message_and_puts_its_system_first(
    sent: list[dict[str, Any]],
) -> None:
    before = copy.deepcopy(sent)
    out = PERSONA.apply(sent)
    assert sent == before  # the caller's list is not changed
    assert out[0] == {"role": "system", "content": "You are terse."}
    users = [i for i, m in enumerate(sent) if m["role"] == "user"]
    for i, message in enumerate(sent):
        if users and i == users[-1]:
            assert out[i + 1] == {"role": "user", "content": f"Q: {message['content']} A:"}
        else:
            assert out[i + 1] == message


def test_content_parts_get_text_parts_around_them() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    out = PERSONA.apply([{"role": "user", "content": [image]}])
    assert out[1]["content"] == [
        {"type": "text", "text": "Q: "},
        image,
        {"type": "text", "text": " A:"},
    ]
    assert PERSONA.label == "persona@3"


def test_the_upstream_body_carries_the_variant_the_decision_names() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0}
    params = Params("m", temperature=0.2, prompt_variant="persona")
    sent = upstream_body(body, params, {"temperature"}, PERSONA)
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Q: hi A:"},
    ]
    assert sent["temperature"] == 0.2 and body["messages"] == [{"role": "user", "content": "hi"}]


def document(variants: Any = None, space_variants: Any = ("concise", "persona")) -> dict[str, Any]:
    task: dict[str, Any] = {
        "baseline": {"model": "m", "temperature": 0.5, "prompt_variant": "concise"},
        "space": {"temperature": [0.2, 0.5], "prompt_variant": list(space_variants)},
    }
    if variants is not None:
        task["variants"] = variants
    return {"tasks": {"qa": task}}


DECLARED = {
    "concise": {"suffix": " Be brief."},
    "persona": {"system": "You are terse.", "version": 2},
}


def test_declared_variants_are_parsed_and_found_by_name() -> None:
    config = parse_config(document(DECLARED))["qa"]
    assert config.variant("persona") == PromptVariant("persona", version=2, system="You are terse.")
    assert config.variant(None) is None


@pytest.mark.parametrize(
    ("variants", "field", "words"),
    [
        (None, "tasks.qa.variants.concise", "does not declare it"),
        ({"concise": {"suffix": "x"}}, "tasks.qa.variants.persona", "does not declare it"),
        ({**DECLARED, "concise": {"sufix": "x"}}, "tasks.qa.variants.concise.sufix", "unknown key"),
        ({**DECLARED, "concise": {}}, "tasks.qa.variants.concise", "changes nothing"),
        (
            {**DECLARED, "concise": {"suffix": "x", "version": 0}},
            "tasks.qa.variants.concise.version",
            "≥ 1",
        ),
        ({**DECLARED, "concise": {"system": ""}}, "tasks.qa.variants.concise.system", "non-empty"),
        ({**DECLARED, "concise": "short"}, "tasks.qa.variants.concise", "must be a table"),
        ("all", "tasks.qa.variants", "table of variants"),
    ],
)
def test_a_variant_the_proxy_could_not_apply_is_refused_at_configuration(
    variants: Any, field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document(variants))
    assert caught.value.field == field and words in caught.value.problem
