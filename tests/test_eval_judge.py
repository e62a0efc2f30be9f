"""The GPT judge path against a stub OpenAI-compatible server on 127.0.0.1: the original prompt is
sent, malformed replies are counted and retried up to the bound, then scored as the original does;
the API key travels only in the Authorization header."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vllava_jax.eval import runner
from vllava_jax.eval.judge import JudgeError, OpenAIJudge, make_judge
from vllava_jax.eval.runner import RunConfig

KEY = "sk-test-secret-123"


class StubServer:
    """Replies per predicted answer: a list of contents served in turn (the last one repeats)."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.requests = script, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, self.headers["Authorization"], body))
                user = body["messages"][1]["content"]
                pred = user.split("Predicted Answer: ")[1].split("\n")[0]
                served = sum(pred == r[2]["messages"][1]["content"].split("Predicted Answer: ")[1].split("\n")[0]
                             for r in stub.requests)
                replies = stub.script[pred]
                content = replies[min(served, len(replies)) - 1]
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    servers = []

    def start(script):
        servers.append(StubServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def write_predictions(tmp_path, preds: list[str]):
    """A video QA set whose predictions are already cached, so only the judge runs (no model)."""
    data = tmp_path / "data"
    data.mkdir()
    questions = [{"video_name": f"v{i}", "question": f"what is shown {i}", "question_id": f"q{i}"}
                 for i in range(len(preds))]
    (data / "test_q.json").write_text(json.dumps(questions))
    (data / "test_a.json").write_text(json.dumps([{"answer": "a dog", "type": 0, "question_id": f"q{i}"}
                                                  for i in range(len(preds))]))
    out = tmp_path / "out"
    out.mkdir()
    rows = [{"id": f"q{i}", "question": f"what is shown {i}", "answer": "a dog", "pred": p, "prompt": "",
             "media_name": f"v{i}", "media": None, "missing": p is None, "error": None if p else "missing video",
             "extra": {}} for i, p in enumerate(preds)]
    for row in rows:
        row["pred"] = row["pred"] or ""
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, out


def test_judge_path_with_malformed_replies(stub, tmp_path, monkeypatch, capsys):
    server = stub({
        "p0": ["{'pred': 'yes', 'score': 4.8}"],                                   # fine at once
        "p1": ["Sure! Here it is: yes", "{'pred': 'no', 'score': 1}"],             # malformed once, then fine
        "p2": ["not a dict", "['yes', 5]", "{'pred': 'yes'"],                      # malformed up to the bound
        "p3": ["{'pred': 'yes'}"],                                                 # parses, but has no score
    })
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_JUDGE_MODEL", "stub-judge")
    monkeypatch.setattr("vllava_jax.eval.judge.time.sleep", lambda seconds: None)  # no backoff waits in the test
    data, out = write_predictions(tmp_path, ["p0", "p1", "p2", "p3", None])
    config = RunConfig(task="msvd_qa", model="tiny", data=str(data), output=str(out), judge="openai",
                       max_new_tokens=3)
    (out / "run.json").write_text(json.dumps(config.settings(runner.registry()["msvd_qa"])))
    doc = runner.run(config)

    assert len(server.requests) == 1 + 2 + 3 + 1                  # the missing video is never sent
    path, auth, body = server.requests[0]
    assert path == "/v1/chat/completions" and auth == f"Bearer {KEY}" and body["model"] == "stub-judge"
    assert body["messages"][0]["content"].startswith("You are an intelligent chatbot designed for evaluating")
    assert ("Question: what is shown 0\nCorrect Answer: a dog\nPredicted Answer: p0\n\n"
            in body["messages"][1]["content"])
    assert "{'pred': 'yes', 'score': 4.8}" in body["messages"][1]["content"]

    m = doc["metrics"]
    assert doc["malformed_judge_replies"] == 1 + 3 and doc["judge"] == "openai:stub-judge"
    assert m["count"] == 5 and m["unscorable"] == 2              # p2 (no usable reply) and p3 (no score)
    assert m["score"] == pytest.approx((4 + 1 + 0 + 0 + 0) / 5)   # int(4.8); the missing video scores 0
    assert m["accuracy"] == pytest.approx(1 / 3)                 # yes: p0; no: p1 and the missing video
    judged = [json.loads(line) for line in (out / "judged.jsonl").read_text().splitlines()]
    assert [j["judge"] for j in judged] == ["openai:stub-judge"] * 4 + ["missing-media"]
    assert judged[2]["verdict"]["malformed"] == 3 and "3 tries" in judged[2]["verdict"]["error"]

    # verdicts are cached: a rerun asks nothing
    runner.run(config)
    assert len(server.requests) == 7
    for f in out.iterdir():
        assert KEY not in f.read_text()
    assert KEY not in "".join(capsys.readouterr())


def test_judge_needs_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(JudgeError, match="OPENAI_API_KEY"):
        make_judge("openai")


def test_unreachable_endpoint_is_retried_then_recorded(monkeypatch):
    judge = OpenAIJudge("http://127.0.0.1:9/v1", KEY, "m", max_tries=2, timeout_s=2, backoff_s=0)
    verdict = judge("q", "a", "p")
    assert verdict["malformed"] == 0 and "2 tries" in verdict["error"] and KEY not in verdict["error"]
