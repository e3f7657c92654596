"""Committed tokens to streamed text: incremental UTF-8 decoding and stop strings."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextAssembler:
    """Turns token byte pieces into text pieces safe to show: never half a UTF-8 character, never the
    beginning of a stop string that may still complete."""

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self.stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # everything decoded so far, including held-back text
        self._shown = 0  # characters of self.text already handed out
        self.stopped = False  # a stop string was found; text ends before it

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the newly safe text (possibly empty)."""
        if self.stopped:
            return ""
        self.text += self._decoder.decode(piece)
        return self._release(final=False)

    def finish(self) -> str:
        """End of generation: flush incomplete bytes and held-back text."""
        if self.stopped:
            return ""
        self.text += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        search_from = max(0, self._shown - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            safe = len(self.text)
        elif final:
            safe = len(self.text)
        else:
            safe = len(self.text) - self._held_back()
        out = self.text[self._shown : safe]
        self._shown = max(self._shown, safe)
        return out

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
