"""`conversation.media_placeholders`: where `<image>`/`<video>` go, one rule for the CLI and the server."""

from __future__ import annotations

import pytest

from vllava_jax import generate
from vllava_jax.errors import InputError
from vllava_jax.processing.conversation import get_template, media_placeholders
from vllava_jax.serve.api_errors import APIError
from vllava_jax.serve.chat import PLACEHOLDER_WORDING, ChatRequest
from vllava_jax.serve.media import MediaReference


def test_placeholders_go_before_the_first_question_unless_the_texts_place_them():
    wording = generate.PLACEHOLDER_WORDING
    # none placed: one per medium for the caller to put first, images before videos
    assert media_placeholders(["What?", "A cat.", "And then?"], 2, 1, wording) == ["<image>", "<image>", "<video>"]
    assert media_placeholders(["What?"], 0, 0, wording) == []
    # placed by the texts, in any turn: nothing to add
    assert media_placeholders(["<video> then <image>?"], 1, 1, wording) == []
    assert media_placeholders(["<image> what?", "A cat.", "And <video>?"], 1, 1, wording) == []


def test_a_placement_that_misses_a_medium_is_refused_in_each_callers_terms():
    with pytest.raises(InputError) as cli_error:
        media_placeholders(["<video> and <video>?"], 0, 1, generate.PLACEHOLDER_WORDING)
    assert str(cli_error.value) == (  # the wording `python -m vllava_jax.generate` has always printed
        "--prompt places 0 <image> and 2 <video> placeholders but 0 --image and 1 --video were given; "
        "place one per file, or none and the CLI puts them before the question")
    with pytest.raises(InputError, match="the text places 1 <image> and 0 <video> placeholders but 1 image_url "
                       "and 1 video_url parts were given; place one per medium, or none and they go before"):
        media_placeholders(["<image> what?"], 1, 1, PLACEHOLDER_WORDING)
    # the server answers it as a 400 naming `messages`
    request = ChatRequest(turns=("<image> and <image>?",), system=None,
                          media=(MediaReference("image", "data:,", "messages[0].content[1]"),), max_tokens=None,
                          temperature=0.0, top_p=1.0, seed=0, stop=(), stream=False, include_usage=False)
    with pytest.raises(APIError) as server_error:
        request.prompt(get_template("llava_v1"))
    assert (server_error.value.status, server_error.value.param) == (400, "messages")
    assert server_error.value.message == (
        "messages: the text places 2 <image> and 0 <video> placeholders but 1 image_url and 0 video_url parts "
        "were given; place one per medium, or none and they go before the first question")
