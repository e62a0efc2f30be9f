"""Chosen tokens -> the answer's text, streamed in safe pieces and cut at the first stop string.

The whole answer is decoded again after every token (as `generate` streams it), since a piece of
one token alone decodes wrongly (sentencepiece's leading spaces, characters split across byte
tokens). A piece is held back while the text ends in byte-fallback tokens (a run of them decodes to
characters, or to one U+FFFD per byte, only once it ends: "t" then a stray byte is "\ufffd\ufffd"), or
in what could still become a stop string, so no client sees text that a later token takes back.
"""

from __future__ import annotations

from vllava_jax.processing.processor import Processor


class AnswerText:
    def __init__(self, processor: Processor, stop: tuple[str, ...] = ()):
        self.processor, self.stop = processor, stop
        self.ids: list[int] = []
        self.text = ""          # the answer so far, cut at a stop string once one appeared
        self.sent = 0           # characters of `text` handed out by `add`
        self.settled = 0        # leading ids whose text no later token changes (up to the last non-byte token)
        self.stopped = False    # a stop string appeared: the answer is complete

    def add(self, token: int) -> str:
        """Take one chosen token; returns the text that is now safe to show (maybe "")."""
        self.ids.append(token)
        if not self._is_byte(token):
            self.settled = len(self.ids)
        self.text = self.processor.decode(self.ids, skip_special_tokens=True)
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            return self._release(len(self.text))
        settled = self.text if self.settled == len(self.ids) else self.processor.decode(
            self.ids[:self.settled], skip_special_tokens=True)
        return self._release(len(settled) - self._partial_stop(settled))

    def finish(self) -> str:
        """The text not yet handed out: all of it, the answer being complete."""
        return self._release(len(self.text))

    def _is_byte(self, token: int) -> bool:
        """A byte-fallback piece; ids past the sentencepiece model (added tokens, a model's padded vocab) are not."""
        pieces = self.processor.tokenizer.sp
        return 0 <= token < pieces.get_piece_size() and pieces.is_byte(token)

    def _partial_stop(self, text: str) -> int:
        """How many trailing characters of `text` could be the start of a stop string."""
        return max((k for s in self.stop for k in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:k])), default=0)

    def _release(self, end: int) -> str:
        piece = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece
