"""The README's quick start runs as written (against the local model as ``client``)."""

from __future__ import annotations

import re
from pathlib import Path

import openai
import pytest

from paramloop.store import open_store

README = Path(__file__).parents[1] / "README.md"


def quick_start() -> str:
    """The first Python block under "The loop in ten lines"."""
    section = README.read_text().split("## The loop in ten lines", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None, "the README lost its quick start"
    return found.group(1)


def test_the_quick_start_runs_verbatim(
    local_upstream_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # it opens sqlite:///paramloop.db in the working directory
    with openai.OpenAI(base_url=local_upstream_url, api_key="unused", max_retries=0) as client:
        namespace: dict[str, object] = {"client": client}
        exec(compile(quick_start(), str(README), "exec"), namespace)
        loop = namespace["loop"]
        loop.optimizer.close()  # type: ignore[attr-defined]
    decision = namespace["decision"]
    store = open_store(f"sqlite:///{tmp_path / 'paramloop.db'}")
    try:
        logged = store.get_decision(decision.request_id)  # type: ignore[attr-defined]
        recorded = store.get_outcome(decision.request_id)  # type: ignore[attr-defined]
    finally:
        store.close()
    assert logged is not None and logged.phase == "shadow"  # a new task type starts in shadow
    assert recorded is not None and recorded.outcome.quality == 0.9
    assert namespace["response"].choices[0].message.content  # type: ignore[attr-defined]
