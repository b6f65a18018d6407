"""Ordered rules on layer names, as placement and precision use them.

The first pattern that matches (re.search) a name wins; a bad pattern, and a
pattern that matched nothing once all names were seen, are errors naming the
configuration field and the pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from afmc.config import ConfigError, PlacementConfig

DEFAULT_RULE = "default: static-weight linear layers are analog"  # no rule matched
LM_HEAD = r"(^|\.)lm_head$"


class NameRules:
    """Compiled patterns of one configuration field, remembering which ones matched."""

    def __init__(self, field: str, patterns: Sequence[str]) -> None:
        self.field = field
        self.compiled = []
        for pattern in patterns:
            try:
                self.compiled.append((pattern, re.compile(pattern)))
            except re.error as error:
                raise ConfigError(f"{field}: bad pattern {pattern!r}: {error}") from None
        self.used: set[str] = set()

    def match(self, *subjects: str) -> str | None:
        """The first pattern that matches any of `subjects`, or None."""
        for pattern, regex in self.compiled:
            if any(regex.search(subject) for subject in subjects):
                self.used.add(pattern)
                return pattern
        return None

    def check_all_used(self, what: str = "layer") -> None:
        """Every pattern matched something, else a ConfigError naming the first that did not."""
        unused = [pattern for pattern, _ in self.compiled if pattern not in self.used]
        if unused:
            raise ConfigError(f"{self.field}: pattern {unused[0]!r} matches no {what}")

    def matches(self, names: Iterable[str]) -> dict[str, str | None]:
        """The matching pattern of each name."""
        return {name: self.match(name) for name in names}


class PlacementRules:
    """The ordered placement rules of a configuration (PlacementConfig): first match wins,
    no match means analog; a rule that matched no layer is an error naming the rule."""

    def __init__(self, placement: PlacementConfig) -> None:
        self.rules: list[tuple[str, str, str, re.Pattern[str] | str]] = []
        if placement.lm_head == "digital":
            self._add("placement.lm_head", "regex", LM_HEAD, "digital")
        for index, pattern in enumerate(placement.digital):
            self._add(f"placement.digital[{index}]", "regex", pattern, "digital")
        for index, rule in enumerate(placement.rules):
            kind = next(k for k in ("name", "regex", "op") if getattr(rule, k) is not None)
            self._add(f"placement.rules[{index}]", kind, getattr(rule, kind), rule.place)
        self.used: set[str] = set()

    def _add(self, label: str, kind: str, pattern: str, place: str) -> None:
        if kind == "regex":
            try:
                matcher: re.Pattern[str] | str = re.compile(pattern)
            except re.error as error:
                raise ConfigError(f"{label}: bad pattern {pattern!r}: {error}") from None
        else:
            matcher = pattern.lower() if kind == "op" else pattern
        self.rules.append((f"{label} ({kind} {pattern!r} -> {place})", kind, place, matcher))

    def decide(self, names: Sequence[str], op: str) -> tuple[str, str | None]:
        """(placement, the rule that decided it, or None for the default) of one layer."""
        for label, kind, place, matcher in self.rules:
            if kind == "op":
                hit = op.lower() == matcher
            elif kind == "name":
                hit = names[0] == matcher
            else:
                hit = any(matcher.search(name) for name in names)
            if hit:
                self.used.add(label)
                return place, label
        return "analog", None

    def check_all_used(self) -> None:
        unused = [label for label, *_ in self.rules if label not in self.used]
        if unused:
            raise ConfigError(f"{unused[0]} matches no layer")
