"""Name -> builder registries (models, data sources, TTA levels, ...), in the style of timm."""
from __future__ import annotations

import difflib
import os
from typing import Callable, Iterable, Iterator, TypeVar

from pipeline.errors import PipelineError

T = TypeVar("T", bound=Callable)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(fn: T) -> T:
            key = name or fn.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable:
        try:
            return self._items[name]
        except KeyError:
            raise PipelineError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; choose from: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """" (did you mean 'x'?)" naming the closest candidates (case-insensitive), or "" when none is close."""
    name = str(name).lower()
    scored = []
    for candidate in candidates:
        ratio = difflib.SequenceMatcher(None, name, candidate.lower()).ratio()
        prefix = len(os.path.commonprefix([name, candidate.lower()]))
        scored.append((ratio, prefix, candidate))
    scored.sort(key=lambda s: (-s[0], -s[1], s[2]))
    # Only the near-best ones: "resnet21" suggests resnet20 and resnet32, not every resnet.
    close = [c for ratio, _, c in scored[:n] if ratio >= 0.6 and ratio >= scored[0][0] - 0.05]
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
