"""Unit tests for edge_spec.text.TextAssembler (no model)."""

from __future__ import annotations

import random

import pytest

from edge_spec.text import TextAssembler

REPLACEMENT = "\ufffd"


def feed_all(pieces: list[bytes], stop: tuple[str, ...] = ()) -> tuple[TextAssembler, list[str], str]:
    """Feed pieces until a stop string shows up (as the generation loop does), then finish(); return the
    assembler, what each feed returned, and what finish() returned."""
    asm = TextAssembler(stop)
    outs = []
    for piece in pieces:
        outs.append(asm.feed(piece))
        if asm.stopped:
            break
    tail = asm.finish()
    assert "".join(outs) + tail == asm.text
    return asm, outs, tail


def split_bytes(data: bytes, rng: random.Random) -> list[bytes]:
    """Cut `data` at random places into pieces of 1 to 5 bytes (some empty pieces too)."""
    pieces, i = [], 0
    while i < len(data):
        n = rng.randint(0, 5)
        pieces.append(data[i : i + n])
        i += n
    return pieces


# --- UTF-8: never half a character ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        pytest.param([b"caf", b"\xc3", b"\xa9!"], ["caf", "", "é!"], id="e-acute split 1+1"),
        pytest.param(
            [b"\xe6", b"\x97\xa5\xe6", b"\x9c", b"\xac"], ["", "日", "", "本"], id="nihon split oddly"
        ),
        pytest.param([b"\xe6\x97", b"\xa5\xe6\x9c\xac"], ["", "日本"], id="nihon split 2+4"),
        pytest.param([b"\xf0", b"\x9f", b"\x98", b"\x80"], ["", "", "", "😀"], id="emoji as 4 single bytes"),
        pytest.param([b"a\xf0\x9f", b"\x98\x80b"], ["a", "😀b"], id="emoji split 2+2 with ascii"),
        pytest.param([b"", b"x", b""], ["", "x", ""], id="empty pieces"),
    ],
)
def test_multibyte_characters_are_never_emitted_half(pieces: list[bytes], expected: list[str]) -> None:
    asm, outs, tail = feed_all(pieces)
    assert outs == expected
    assert tail == ""
    assert REPLACEMENT not in asm.text
    assert asm.text == b"".join(pieces).decode("utf-8")
    assert not asm.stopped


def test_invalid_bytes_become_replacement_characters() -> None:
    _, outs, _ = feed_all([b"a\xffb"])
    assert outs == [f"a{REPLACEMENT}b"]


# --- stop strings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pieces", "stop", "expected_outs", "expected_text"),
    [
        pytest.param([b"abc", b"ENDdef", b"gh"], ("END",), ["abc", ""], "abc", id="stop in a later piece"),
        pytest.param([b"abcENDdef"], ("END",), ["abc"], "abc", id="stop inside one piece"),
        pytest.param([b"ENDabc"], ("END",), [""], "", id="stop at the very start"),
        pytest.param(
            [b"a STOP b STOP c"], ("STOP",), ["a "], "a ", id="first occurrence wins over later ones"
        ),
        pytest.param(
            [b"hel", b"lo <", b"/s", b"> world", b"!"],
            ("</s>",),
            ["hel", "lo ", "", ""],
            "hello ",
            id="stop split across pieces",
        ),
        pytest.param(
            [b"x", b"<", b"/", b"s", b">", b"y"],
            ("</s>",),
            ["x", "", "", "", ""],
            "x",
            id="stop fed one char at a time",
        ),
        pytest.param(
            [b"a <", b"/", b"b"], ("</s>",), ["a ", "", "</b"], "a </b", id="partial prefix released"
        ),
        pytest.param([b"<<", b"/s>"], ("</s>",), ["<", ""], "<", id="prefix restarts inside held-back text"),
        pytest.param([b"hello world"], ("world", "lo"), ["hel"], "hel", id="earliest of several wins"),
        pytest.param([b"hello world"], ("lo", "world"), ["hel"], "hel", id="earliest wins, order swapped"),
        pytest.param(
            [b"he", b"llo wo", b"rld"],
            ("world", "xyz"),
            ["he", "llo ", ""],
            "hello ",
            id="second stop unused",
        ),
        pytest.param(
            [b"x\xe6", b"\x97\xa5", b"\xe6\x9c\xac", b"y"],
            ("日本",),
            ["x", "", ""],
            "x",
            id="multibyte stop string split mid-character",
        ),
        pytest.param([b"abc"], ("",), ["abc"], "abc", id="empty stop string ignored"),
    ],
)
def test_stop_strings(
    pieces: list[bytes], stop: tuple[str, ...], expected_outs: list[str], expected_text: str
) -> None:
    asm, outs, tail = feed_all(pieces, stop)
    assert outs == expected_outs
    assert asm.text == expected_text
    assert tail == ""
    assert asm.stopped == any(s and s in b"".join(pieces).decode() for s in stop)


def test_nothing_is_emitted_after_a_stop() -> None:
    asm = TextAssembler(["END"])
    assert asm.feed(b"abcEND") == "abc"
    assert asm.stopped
    assert asm.feed(b"more text") == ""
    assert asm.feed(b"\xc3") == ""
    assert asm.finish() == ""


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([b"abcEND", b"more text"], id="feed after the stop"),
        pytest.param([b"abcEND\xe6"], id="incomplete bytes after the stop, flushed by finish"),
    ],
)
def test_text_ends_before_the_stop_string(pieces: list[bytes]) -> None:
    asm = TextAssembler(["END"])
    shown = "".join(asm.feed(p) for p in pieces) + asm.finish()
    assert asm.stopped
    assert shown == asm.text == "abc"


def test_partial_stop_prefix_is_held_until_it_cannot_complete() -> None:
    asm = TextAssembler(["</s>"])
    assert asm.feed(b"a<") == "a"
    assert asm.feed(b"/") == ""
    assert asm.feed(b"s") == ""
    assert asm.feed(b"!") == "</s!"
    assert not asm.stopped


# --- finish() -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pieces", "stop", "expected_outs", "expected_tail"),
    [
        pytest.param([b"x##"], ("###",), ["x"], "##", id="held-back stop prefix flushed"),
        pytest.param([b"ab\xe6\x97"], (), ["ab"], REPLACEMENT, id="truncated character -> replacement"),
        pytest.param([b"ab", b"\xf0"], (), ["ab", ""], REPLACEMENT, id="lone lead byte -> replacement"),
        pytest.param([b"a<", b"/\xe6"], ("</s>",), ["a", ""], "</" + REPLACEMENT, id="both held at once"),
        pytest.param([b"done"], ("END",), ["done"], "", id="nothing to flush"),
        pytest.param([], ("END",), [], "", id="no pieces at all"),
    ],
)
def test_finish_flushes_held_back_text_and_incomplete_bytes(
    pieces: list[bytes], stop: tuple[str, ...], expected_outs: list[str], expected_tail: str
) -> None:
    asm, outs, tail = feed_all(pieces, stop)
    assert outs == expected_outs
    assert tail == expected_tail
    assert not asm.stopped


def test_finish_twice_returns_nothing_more() -> None:
    asm = TextAssembler(["END"])
    asm.feed(b"aEN")
    assert asm.finish() == "EN"
    assert asm.finish() == ""
    assert asm.text == "aEN"


# --- property-style: random splits of fixed byte strings ------------------------------------------

SOURCE = "Héllo wörld, 日本 </ <</x> 😀 E END? ENDE 日本語 ok <|im_end|> tail 😀 after"
PROPERTY_CASES = [
    pytest.param((), SOURCE, id="no stops"),
    pytest.param(("</s>", "STOP"), SOURCE, id="stops never complete"),
    pytest.param(("<|im_end|>",), SOURCE.split("<|im_end|>")[0], id="chatml end"),
    pytest.param(("日本語", "<|im_end|>"), SOURCE.split("日本語")[0], id="multibyte stop first"),
    pytest.param(("ENDE", "END?"), SOURCE.split("END?")[0], id="earliest of two"),
    pytest.param(("😀 a", "ok"), SOURCE.split(" ok")[0] + " ", id="emoji-led stop, later one wins"),
]


@pytest.mark.parametrize(("stop", "expected"), PROPERTY_CASES)
def test_random_splits_give_the_same_text(stop: tuple[str, ...], expected: str) -> None:
    data = SOURCE.encode()
    rng = random.Random(1234)
    longest = max((len(s) for s in stop), default=0)
    for _ in range(200):
        pieces = split_bytes(data, rng)
        asm = TextAssembler(stop)
        shown = ""
        for piece in pieces:
            if asm.stopped:  # the generation loop stops feeding here
                break
            out = asm.feed(piece)
            assert REPLACEMENT not in out
            shown += out
            assert asm.text.startswith(shown)
            if not asm.stopped:
                # only a possible stop-string start is held back, never more
                held = asm.text[len(shown) :]
                assert len(held) < max(longest, 1)
                assert all(s not in shown for s in stop)
        shown += asm.finish()
        assert shown == asm.text == expected, pieces
        assert asm.stopped == (expected != SOURCE)
