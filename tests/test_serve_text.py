"""`AnswerText`: streamed pieces add up to the answer `generate` decodes, whatever the tokens."""

from __future__ import annotations

import vllava_jax
from tests.test_generate_cli import checkpoint  # noqa: F401  (a fixture, shared rather than copied)
from vllava_jax.serve.answer_text import AnswerText


def streamed(processor, tokens, stop=()) -> tuple[list[str], AnswerText]:
    text = AnswerText(processor, stop)
    pieces = []
    for token in tokens:
        pieces.append(text.add(token))
        if text.stopped:
            break
    return pieces + [text.finish()], text


def test_pieces_add_up_to_the_decoded_answer(checkpoint):  # noqa: F811
    processor = vllava_jax.Processor.from_pretrained(checkpoint[0])
    sp = processor.tokenizer.sp
    byte = {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if sp.is_byte(i)}
    word = processor.tokenizer.encode("Why is the sky", add_special_tokens=False)
    euro = [byte[f"<0x{b:02X}>"] for b in "€".encode()]
    padded_vocab = processor.config.text_config.vocab_size + 3  # models pad the vocab past the tokenizer's
    cases = [word + euro + word,                 # a character split over three byte tokens
             word + [byte["<0x74>"], euro[0]] + word,  # "t" then a stray byte: the run decodes to two U+FFFD
             word + [padded_vocab] + word + euro[:2]]  # an id without a token; the answer ends mid-character
    for tokens in cases:
        pieces, _ = streamed(processor, tokens)
        assert "".join(pieces) == processor.decode(tokens, skip_special_tokens=True), tokens
    assert "\ufffd\ufffd" in processor.decode(cases[1], skip_special_tokens=True)


def test_stop_strings_cut_and_are_never_shown(checkpoint):  # noqa: F811
    processor = vllava_jax.Processor.from_pretrained(checkpoint[0])
    tokens = processor.tokenizer.encode("Why is the sky blue? Because", add_special_tokens=False)
    pieces, text = streamed(processor, tokens, stop=("sky b", "zzz"))
    assert "".join(pieces) == "Why is the " and text.stopped
    assert not any("sky" in p for p in pieces)
    pieces, text = streamed(processor, tokens, stop=("zzz",))
    assert "".join(pieces) == processor.decode(tokens, skip_special_tokens=True) and not text.stopped
