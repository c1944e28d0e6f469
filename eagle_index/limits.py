"""Limits shared by every front end, so the CLI, the API and the service agree."""

from __future__ import annotations

from eagle_index.errors import InputError

MAX_K = 1000  # neighbours per search: CLI `-k`, API `k`, EagleService.search_*


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k!r}")
    return k
