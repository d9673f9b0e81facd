"""`--meta key=value` labels: facts a user attaches to a run (owner, ticket, dataset version)
so they travel with its summary and show up in `vbatch status`."""

from __future__ import annotations

from collections.abc import Iterable

from vbatch.errors import UsageError


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """`["team=nlp", "ticket=42"]` -> `{"team": "nlp", "ticket": "42"}`; a later key wins."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(
                f"bad --meta {item!r}: expected key=value",
                hint="for example --meta team=nlp --meta ticket=JIRA-42",
            )
        labels[key] = value.strip()
    return labels
