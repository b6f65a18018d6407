"""Ordered regular-expression rules on layer names, as placement and precision use them.

The first pattern that matches (re.search) a name wins; a bad pattern, and a
pattern that matched nothing once all names were seen, are errors naming the
configuration field and the pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from afmc.config import ConfigError


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
