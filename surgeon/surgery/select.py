"""Which candidate sites a transform acts on: ``include`` / ``exclude`` / ``filter_fn``.

A pattern is either a regular expression (a ``str`` or compiled ``re.Pattern``, matched with ``re.fullmatch``
against each candidate's qualified names) or a list of names. A list entry selects the candidate of exactly that
name; an entry that names no candidate exactly selects every candidate whose name ends in ``"." + entry`` (a
dotted suffix such as ``"fc2"`` for ``"blocks.0.fc2"`` and ``"blocks.1.fc2"``). Exact names win so that a
record's ``selected`` list replays to exactly the same candidates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from surgeon.errors import SelectionError

Pattern = str | re.Pattern | Sequence[str] | None
FilterFn = Callable[[nn.Module, str], bool]


@dataclass
class NameMatcher:
    """A compiled include/exclude pattern."""

    regex: re.Pattern | None
    entries: tuple[str, ...]
    label: str

    @classmethod
    def parse(cls, pattern: Pattern, label: str) -> NameMatcher | None:
        if pattern is None:
            return None
        if isinstance(pattern, re.Pattern):
            return cls(pattern, (), label)
        if isinstance(pattern, str):
            try:
                return cls(re.compile(pattern), (), label)
            except re.error as exc:
                raise SelectionError(f"{label}={pattern!r} is not a valid regular expression: {exc}") from None
        if isinstance(pattern, Iterable):
            entries = tuple(pattern)
            bad = [e for e in entries if not isinstance(e, str) or not e]
            if bad:
                raise SelectionError(f"{label} entries must be non-empty strings, got {bad[0]!r}")
            return cls(None, entries, label)
        raise SelectionError(f"{label} must be a regex string or a list of names, got {type(pattern).__name__}")

    def matches(self, names_per_candidate: Sequence[Sequence[str]]) -> tuple[list[bool], list[str]]:
        """For each candidate (given by all its names) whether it matches; and the list entries matching none."""
        if self.regex is not None:
            hits = [any(self.regex.fullmatch(n) for n in names) for names in names_per_candidate]
            unused = [] if any(hits) else [self.regex.pattern]
            return hits, unused
        hits = [False] * len(names_per_candidate)
        unused = []
        for entry in self.entries:
            exact = [entry in names for names in names_per_candidate]
            if not any(exact):
                suffix = "." + entry
                exact = [any(n.endswith(suffix) for n in names) for names in names_per_candidate]
            if not any(exact):
                unused.append(entry)
            hits = [h or e for h, e in zip(hits, exact)]
        return hits, unused

    @property
    def is_list(self) -> bool:
        return self.regex is None


def describe_candidates(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    more = f" … and {len(names) - limit} more" if len(names) > limit else ""
    return (shown + more) if names else "(none)"
