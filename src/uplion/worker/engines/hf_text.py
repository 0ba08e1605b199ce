"""Text around a decoding loop: tokens turned into deltas without splitting a character, stop
strings cut without ever sending their start, and OpenAI message content as plain text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class IncrementalDecoder:
    """Turns tokens into text deltas, holding back bytes of a character not yet complete."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # end of what has been returned

    def push(self, token: int) -> str:
        self._ids.append(token)
        before, after = self._window()
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        before, after = self._window()
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]

    def _window(self) -> tuple[str, str]:
        """The text returned last time, and that text followed by what is new, with context."""
        before = self._decode(self._ids[self._prefix : self._read])
        return before, self._decode(self._ids[self._prefix :])

    def _decode(self, ids: list[int]) -> str:
        return str(
            self._tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        )


class StopMatcher:
    """Cuts the text at the first stop string, holding back a tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._text = ""
        self._sent = 0
        self.stopped = False

    def push(self, delta: str) -> tuple[str, bool]:
        """Text now safe to send, and whether a stop string was reached."""
        self._text += delta
        if not self._stops:
            return self.flush(), False
        hits = [at for stop in self._stops if (at := self._text.find(stop, self._sent)) >= 0]
        if hits:
            self.stopped = True
            safe, self._sent = self._text[self._sent : min(hits)], len(self._text)
            return safe, True
        end = len(self._text) - self._held()
        safe = self._text[self._sent : end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return safe, False

    def flush(self) -> str:
        rest, self._sent = self._text[self._sent :], len(self._text)
        return rest

    def _held(self) -> int:
        """Length of the longest unsent suffix that is a proper prefix of a stop string."""
        unsent = len(self._text) - self._sent
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, unsent), longest, -1):
                if self._text.endswith(stop[:size]):
                    longest = size
                    break
        return longest


def content_text(content: Any) -> str:
    """OpenAI content is a string or a list of parts; only text parts count here."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    return ""
