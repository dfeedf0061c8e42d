"""Prompt variants: declared, versioned transformations of a chat request's messages.

An arm's ``prompt_variant`` names one of its task type's variants; the proxy
(and anything else that builds the upstream body with
:func:`~paramloop.engine.service.upstream_body`) applies it, so the variant a
decision logs is the variant that was sent.  A variant may

* put a ``system`` instruction first (before the caller's own system message,
  which stays), and
* wrap the last user message in a ``prefix`` and a ``suffix``.

``version`` names the revision of the wording: change it whenever the text
changes, so logged decisions of different wordings are told apart.

>>> concise = PromptVariant("concise", version=2, suffix="\\n\\nAnswer in one sentence.")
>>> concise.apply([{"role": "user", "content": "Why is the sky blue?"}])
[{'role': 'user', 'content': 'Why is the sky blue?\\n\\nAnswer in one sentence.'}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from paramloop.errors import ConfigError

#: The keys of a variant's table in the configuration.
VARIANT_KEYS = frozenset({"version", "system", "prefix", "suffix"})


@dataclass(frozen=True, slots=True)
class PromptVariant:
    name: str
    version: int = 1
    system: str | None = None
    prefix: str = ""
    suffix: str = ""

    def __post_init__(self) -> None:
        where = f"variants.{self.name}"
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ConfigError(f"{where}.version", f"must be an integer ≥ 1, got {self.version!r}")
        for key in ("prefix", "suffix"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"{where}.{key}", "must be a string")
        if self.system is not None and (not isinstance(self.system, str) or not self.system):
            raise ConfigError(f"{where}.system", "must be a non-empty string")
        if self.system is None and not self.prefix and not self.suffix:
            raise ConfigError(where, "changes nothing: give a system, a prefix or a suffix")

    @property
    def label(self) -> str:
        """``name@version``, as logs and traces show it."""
        return f"{self.name}@{self.version}"

    def apply(self, messages: Sequence[Any]) -> list[Any]:
        """The messages with this variant applied (the caller's list is not changed)."""
        out = list(messages)
        if self.prefix or self.suffix:
            for index in range(len(out) - 1, -1, -1):
                message = out[index]
                if isinstance(message, Mapping) and message.get("role") == "user":
                    out[index] = {**message, "content": self._wrap(message.get("content"))}
                    break
        if self.system is not None:
            out.insert(0, {"role": "system", "content": self.system})
        return out

    def _wrap(self, content: Any) -> Any:
        if isinstance(content, str):
            return f"{self.prefix}{content}{self.suffix}"
        if isinstance(content, list):  # content parts: text parts around the caller's
            parts = [{"type": "text", "text": self.prefix}] if self.prefix else []
            parts.extend(content)
            if self.suffix:
                parts.append({"type": "text", "text": self.suffix})
            return parts
        return content


def parse_variants(where: str, table: Any) -> dict[str, PromptVariant]:
    """``[tasks.X.variants.<name>]`` tables, each checked."""
    if not isinstance(table, Mapping):
        raise ConfigError(where, "must be a table of variants, e.g. [tasks.qa.variants.concise]")
    variants = {}
    for name, body in table.items():
        if not isinstance(body, Mapping):
            raise ConfigError(
                f"{where}.{name}", "must be a table (system, prefix, suffix, version)"
            )
        unknown = sorted(set(body) - VARIANT_KEYS)
        if unknown:
            allowed = ", ".join(sorted(VARIANT_KEYS))
            raise ConfigError(f"{where}.{name}.{unknown[0]}", f"unknown key; allowed: {allowed}")
        try:
            variants[str(name)] = PromptVariant(str(name), **body)
        except ConfigError as exc:
            raise ConfigError(
                f"{where}.{exc.field.removeprefix('variants.')}", exc.problem
            ) from None
    return variants


__all__ = ["VARIANT_KEYS", "PromptVariant", "parse_variants"]
