"""Stop strings across segment boundaries.

A stop string may start in one segment and end in the next, so the engine searches the tail of
the accepted text together with each candidate, and holds back (does not stream yet) a trailing
piece of accepted text that could be the start of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    """Finds stop strings in growing text; pure and cheap (searches only the new tail)."""

    def __init__(self, stops: Sequence[str] | None) -> None:
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in (stops or ()) if s))
        self._longest = max((len(s) for s in self.stops), default=0)

    def __bool__(self) -> bool:
        return bool(self.stops)

    def find(self, text: str, new_from: int) -> int | None:
        """Earliest start of a stop string in `text` that ends after `new_from` (text before is old)."""
        if not self.stops:
            return None
        search_from = max(0, new_from - self._longest + 1)
        hits = [pos for stop in self.stops if (pos := text.find(stop, search_from)) >= 0]
        return min(hits) if hits else None

    def holdback(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        for size in range(min(self._longest - 1, len(text)), 0, -1):
            suffix = text[-size:]
            if any(stop.startswith(suffix) for stop in self.stops):
                return size
        return 0
