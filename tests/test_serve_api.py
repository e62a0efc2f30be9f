"""`vllava_jax.serve` over 127.0.0.1 with the official `openai` client: answers equal `generate`'s, many at
once, streamed or not; clients that leave; the feature cache; and every bad request refused with its status."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import threading
import time

import httpx
import numpy as np
import openai
import pytest

import vllava_jax
from tests.serving import data_url, running
from tests.test_generate_cli import checkpoint  # noqa: F401  (a fixture, shared rather than copied)
from vllava_jax import generate, generation
from vllava_jax.processing.conversation import get_template
from vllava_jax.serve.app import build_service, create_app

QUESTIONS = ["What happens?", "Describe the video.", "Why is the sky blue?", "Is the person happy?"]
MAX_LENGTH = 256
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def served(checkpoint, tmp_path_factory):  # noqa: F811
    """(base URL, openai client, service, checkpoint dir, clip, media root) of one server for the module."""
    path, clip = checkpoint
    root = tmp_path_factory.mktemp("media_root")
    shutil.copy(clip, root / "same_clip.mp4")
    model, processor = vllava_jax.load_pretrained(path), vllava_jax.Processor.from_pretrained(path)
    service = build_service(model, processor, model_id="tiny", max_batch=16, max_length=MAX_LENGTH,
                            media_root=str(root))
    with running(create_app(service, max_body_bytes=MAX_BODY)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        yield url, client, service, path, clip, root


def video_message(question: str, clip) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": data_url(clip)}},
                                         {"type": "text", "text": question}]}]


def greedy_answers(path, clip, questions, max_new_tokens: int) -> dict[str, list[int]]:
    """question -> generate's greedy new tokens (before EOS) for the CLI's prompt about `clip`."""
    model, processor = vllava_jax.load_pretrained(path), vllava_jax.Processor.from_pretrained(path)
    sampling = generation.sampling_config(model.config, max_new_tokens)
    answers = {}
    for question in questions:
        batch = processor(text=get_template("llava_v1").prompt([question], ["<video>"]), videos=[str(clip)])
        ids = generation.generate(model, batch["input_ids"], batch["attention_mask"], None,
                                  batch["pixel_values_videos"], sampling=sampling)[0, batch["input_ids"].shape[1]:]
        stops = [i for i, t in enumerate(ids) if t in sampling.eos_token_ids]
        answers[question] = [int(t) for t in ids[:stops[0] if stops else len(ids)]]
    return answers


def test_answer_equals_generate(served):
    _, client, _, path, clip, _ = served
    whole = client.chat.completions.create(model="tiny", messages=video_message(QUESTIONS[0], clip), max_tokens=24,
                                           temperature=0)
    pieces, finishes, usage = [], [], []
    for chunk in client.chat.completions.create(model="tiny", messages=video_message(QUESTIONS[1], clip),
                                                max_tokens=24, temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage is not None:  # the last chunk, without choices
            usage.append(chunk.usage.completion_tokens)
            continue
        pieces.append(chunk.choices[0].delta.content or "")
        finishes.append(chunk.choices[0].finish_reason)
    streamed = "".join(pieces)

    expected = [generate.ask(path, q, videos=[str(clip)], max_new_tokens=24) for q in QUESTIONS[:2]]
    assert whole.choices[0].message.content == expected[0]
    assert streamed == expected[1]
    assert expected[0] != expected[1]
    assert whole.usage.completion_tokens >= 16 and whole.choices[0].finish_reason == "length"
    assert whole.usage.prompt_tokens > 40  # the video's slots count
    assert len([p for p in pieces if p]) > 8 and finishes[-1] == "length"  # streamed piece by piece
    assert usage == [24]


def test_concurrent_requests_each_equal_their_answer_alone(served):
    _, client, _, path, clip, _ = served
    lengths = [4 + 2 * i for i in range(16)]
    jobs = [(QUESTIONS[i % len(QUESTIONS)], n) for i, n in enumerate(lengths)]
    expected = greedy_answers(path, clip, QUESTIONS, max(lengths))
    processor = vllava_jax.Processor.from_pretrained(path)
    start = threading.Barrier(len(jobs))

    def ask(job):
        question, n = job
        start.wait()
        return client.chat.completions.create(model="tiny", messages=video_message(question, clip), max_tokens=n,
                                              temperature=0)

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(ask, jobs))
    for (question, n), reply in zip(jobs, replies):
        tokens = expected[question][:n]
        assert reply.choices[0].message.content == processor.decode(tokens, skip_special_tokens=True), (question, n)
        assert reply.usage.completion_tokens == len(tokens)


def test_stop_string_cuts_the_answer(served):
    _, client, _, path, clip, _ = served
    full = generate.ask(path, QUESTIONS[0], videos=[str(clip)], max_new_tokens=24)
    stop = full[5:8]
    reply = client.chat.completions.create(model="tiny", messages=video_message(QUESTIONS[0], clip), max_tokens=24,
                                           temperature=0, stop=[stop])
    assert reply.choices[0].message.content == full[:full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=video_message(QUESTIONS[0], clip), max_tokens=24, temperature=0, stop=stop,
        stream=True))
    assert streamed == full[:full.index(stop)]


def test_disconnect_mid_stream_frees_the_slot(served):
    url, client, service, _, clip, _ = served
    engine = service.engine
    finished = []
    submit = engine.submit

    def watched(request, emit):
        def record(event):
            if event.token is None:
                finished.append(event.finish_reason)
            emit(event)
        return submit(request, record)

    engine.submit = watched
    try:
        body = {"model": "tiny", "messages": video_message(QUESTIONS[2], clip), "max_tokens": 120,
                "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
            assert response.status_code == 200, response.read()
            lines = response.iter_lines()
            assert next(line for line in lines if '"content": "' in line and '"content": ""' not in line)
        deadline = time.monotonic() + 30
        while not finished and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        engine.submit = submit
    assert finished == ["cancelled"]
    assert engine.rows_in_use == 0
    reply = client.chat.completions.create(model="tiny", messages=video_message(QUESTIONS[3], clip), max_tokens=4,
                                           temperature=0)
    assert reply.usage.completion_tokens == 4


def test_second_question_about_a_video_reuses_its_features(served):
    _, client, service, _, clip, root = served
    clip = shutil.copy(clip, root / "fresh_clip.mp4")
    with open(clip, "ab") as f:  # different bytes from every clip asked about before: a new medium
        f.write(b"\0")
    runs = service.engine.feature_cache.tower_runs
    first = client.chat.completions.create(model="tiny", messages=video_message(QUESTIONS[0], clip), max_tokens=2,
                                           temperature=0)  # greedy: a sampled EOS would end it early at random
    assert service.engine.feature_cache.tower_runs == runs + 1
    by_path = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{clip}"}},
                                            {"type": "text", "text": QUESTIONS[1]}]}]
    second = client.chat.completions.create(model="tiny", messages=by_path, max_tokens=2, temperature=0)
    assert service.engine.feature_cache.tower_runs == runs + 1  # same content: the towers did not run again
    assert first.usage.completion_tokens == second.usage.completion_tokens == 2


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_bad_requests_get_their_status_and_the_server_keeps_serving(served, tmp_path):
    url, client, _, _, clip, root = served
    outside = tmp_path / "outside.mp4"
    shutil.copy(clip, outside)
    (root / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4000))

    def ask(*parts, question="What happens?", **fields):
        content = [*parts, {"type": "text", "text": question}]
        return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 4} | fields

    def video(url_):
        return {"type": "video_url", "video_url": {"url": url_}}

    cases = [  # (what, body or raw bytes, status, words of the message)
        ("not JSON", b"{not json", 400, "not valid JSON"),
        ("no messages", {"model": "tiny"}, 400, "messages"),
        ("unknown model", ask(model="gpt-4o"), 400, "gpt-4o"),
        ("missing file", ask(video(f"file://{root}/nope.mp4")), 400, "no such file"),
        ("undecodable video", ask(video(f"file://{root}/noise.mp4")), 400, "cannot be decoded"),
        ("undecodable data URL", ask(video("data:video/mp4;base64,AAAAAAAA")), 400, "video"),
        ("not base64", ask(video("data:video/mp4;base64,%%%")), 400, "base64"),
        ("outside --media-root", ask(video(f"file://{outside}")), 400, "outside --media-root"),
        ("dot-dot out of --media-root", ask(video(f"file://{root}/../{outside.parent.name}/outside.mp4")), 400,
         "outside --media-root"),
        ("http URL", ask(video("https://example.com/a.mp4")), 400, "data:"),
        ("more placeholders than media", ask(video(data_url(clip)), question="<video> and <video>?"), 400,
         "placeholders"),
        ("prompt past the context", ask(video(data_url(clip)), max_tokens=MAX_LENGTH), 400, "exceeds"),
        ("n=2", ask(n=2), 400, "n=2"),
        ("tools", ask(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
        ("logprobs", ask(logprobs=True), 400, "logprobs"),
        ("bad temperature", ask(temperature=-1), 400, "temperature"),
        ("past the body limit", b" " * (MAX_BODY + 1) + b"{}", 413, "limit"),
    ]
    for what, body, status, words in cases:
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = httpx.post(url + "/v1/chat/completions", timeout=60, **kwargs)
        assert response.status_code == status, (what, response.text)
        assert words in error_of(response)["message"], (what, response.text)
    with pytest.raises(openai.BadRequestError, match="not served here"):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    assert client.models.list().data[0].id == "tiny"
    reply = client.chat.completions.create(model="tiny", messages=video_message(QUESTIONS[0], clip), max_tokens=3)
    # still answering: 3 tokens, or fewer ending at an EOS (a random tiny model may choose one; once,
    # on jax 0.12, after the whole suite, it did at the first token)
    finished = (reply.choices[0].finish_reason, reply.usage.completion_tokens)
    assert finished == ("length", 3) or (finished[0] == "stop" and 1 <= finished[1] <= 3), finished


def test_text_only_and_multi_turn_prompts_are_generates(served):
    _, client, _, path, _, _ = served
    model, processor = vllava_jax.load_pretrained(path), vllava_jax.Processor.from_pretrained(path)
    turns = ["Why is the sky blue?", "Because of scattering.", "And at night?"]
    prompt = get_template("llava_v1").prompt(turns)
    batch = processor(text=prompt)
    sampling = generation.sampling_config(model.config, 12)
    ids = generation.generate(model, batch["input_ids"], batch["attention_mask"], sampling=sampling)
    new = [int(t) for t in ids[0, batch["input_ids"].shape[1]:]]
    new = new[:new.index(2)] if 2 in new else new
    messages = [{"role": r, "content": t} for r, t in zip(["user", "assistant", "user"], turns)]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == processor.decode(new, skip_special_tokens=True)


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium, chromium-driver
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,1000"]


@pytest.mark.skipif(not os.path.exists(CHROMEDRIVER), reason=f"needs Debian's chromium-driver ({CHROMEDRIVER}; "
                    ".ci/run installs it)")
def test_web_page_streams_the_answer_and_shows_the_frames(served, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, service, path, clip, _ = served
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(str(clip))
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#frames img")) == service.processor.num_frames)
        question = driver.find_element(By.ID, "question")
        question.clear()
        question.send_keys(QUESTIONS[2])
        max_tokens = driver.find_element(By.ID, "max-tokens")
        max_tokens.clear()
        max_tokens.send_keys("24")
        driver.find_element(By.ID, "ask").click()
        answer = driver.find_element(By.ID, "answer")
        wait.until(lambda d: answer.get_attribute("data-state") in ("done", "failed"))
        shown = answer.get_attribute("textContent")
        frames_loaded = driver.execute_script(
            "return [...document.querySelectorAll('#frames img')].every(i => i.complete && i.naturalWidth > 0)")
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
    assert shown == generate.ask(path, QUESTIONS[2], videos=[str(clip)], max_new_tokens=24)
    assert frames_loaded
    assert (tmp_path / "page.png").stat().st_size > 10_000
