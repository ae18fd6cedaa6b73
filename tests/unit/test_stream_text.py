"""The text of a Triton response stream: a character a backend splits across two responses arrives whole."""

from __future__ import annotations

import codecs

import numpy as np

from messplus.service.zoo.triton import _text


class Response:
    """What `_text` reads of a tritonclient InferResult: its text_output tensor."""

    def __init__(self, *values: bytes | str) -> None:
        self.values = values

    def as_numpy(self, name: str) -> np.ndarray | None:
        assert name == "text_output"
        return np.array(self.values, dtype=np.object_) if self.values else None


def test_a_character_split_across_responses_is_decoded_whole() -> None:
    raw = "naïve ☕ 日本".encode()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    cuts = [0, 3, 9, 13, len(raw)]  # inside ï, inside ☕, inside 日
    text = "".join(_text(Response(raw[a:b]), decoder) for a, b in zip(cuts, cuts[1:]))
    assert text + decoder.decode(b"", final=True) == "naïve ☕ 日本"
    assert "\ufffd" in "".join(_text(Response(raw[a:b])) for a, b in zip(cuts, cuts[1:]))  # decoded one by one


def test_strings_empty_responses_and_invalid_bytes() -> None:
    assert _text(Response("already text")) == "already text" and _text(Response()) == ""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    assert _text(Response(b"\xff ok"), decoder) == "\ufffd ok"
