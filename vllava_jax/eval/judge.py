"""Judges for open-ended video QA: each turns (question, answer, prediction) into the verdict
`{"pred": "yes"|"no", "score": 0-5}` that `metrics.video_qa.summarize` reads.

- "openai": the GPT prompt of Video-ChatGPT's evaluate_activitynet_qa.py (which Video-LLaVA runs),
  sent to any OpenAI-compatible `/chat/completions` endpoint. The reply is parsed as the original
  parses it (`ast.literal_eval` of the message content). The original retries a malformed reply
  forever; we retry at most `max_tries` times, count every malformed reply, and then record the
  verdict as unreadable, which the original's scoring counts as score 0 and leaves out of accuracy.
- "offline": no network; "yes" (score 5) when the normalized answer equals the normalized
  prediction or appears in it as whole words, else "no" (score 0). A rough stand-in for
  the GPT judge, useful for smoke tests and regressions, not comparable with the paper.

Configuration of the endpoint comes from the environment only: OPENAI_API_KEY, OPENAI_BASE_URL
(default https://api.openai.com/v1), OPENAI_JUDGE_MODEL (default gpt-3.5-turbo, the original's).
The key is sent in the Authorization header and nowhere else: never logged, never in an error.
"""

from __future__ import annotations

import ast
import json
import os
import time
import urllib.error
import urllib.request

from vllava_jax.errors import VllavaError
from vllava_jax.eval.metrics.vqa import evalai_answer

SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. Your task is to compare the predicted answer with the correct answer and determine if "
    "they match meaningfully. Here's how you can accomplish the task:"
    "------"
    "##INSTRUCTIONS: "
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
USER_PROMPT = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {pred}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, "
    "with 5 indicating the highest meaningful match. Please generate the response in the form of a Python "
    "dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' or 'no' and "
    "value of 'score' is in INTEGER, not STRING."
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
    "For example, your response should look like this: {{'pred': 'yes', 'score': 4.8}}."
)


class JudgeError(VllavaError):
    """The judge endpoint is misconfigured or unreachable."""


def json_safe(value):
    """`value` as the verdict cache can store it: a literal JSON cannot hold (bytes, a set, a complex
    number) becomes `{"unreadable": repr}`, which fails every step of the summary where the original
    value fails too (`.lower()` or `int()`), so cached and fresh verdicts score alike; a key that is not
    a string becomes its repr (no rule reads such a key)."""
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else repr(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return {"unreadable": repr(value)}


def parse_verdict(content: str) -> dict:
    """The original's parsing: a Python dict literal (made `json_safe`); anything else raises ValueError."""
    try:
        verdict = ast.literal_eval(content.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise ValueError(f"not a Python literal: {e}") from None
    if not isinstance(verdict, dict):
        raise ValueError(f"a {type(verdict).__name__}, not a dict")
    return json_safe(verdict)


class OfflineJudge:
    name = "offline"

    def __call__(self, question: str, answer: str, pred: str) -> dict:
        truth, guess = evalai_answer(answer), evalai_answer(pred)
        match = bool(truth) and (truth == guess or f" {truth} " in f" {guess} ")
        return {"pred": "yes" if match else "no", "score": 5 if match else 0}


class OpenAIJudge:
    """Bounded retries: `max_tries` malformed replies, or transport failures, per question."""

    def __init__(self, base_url: str, api_key: str, model: str, max_tries: int = 3, timeout_s: float = 60.0,
                 backoff_s: float = 1.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_tries, self.timeout_s, self.backoff_s = model, max_tries, timeout_s, backoff_s
        self._api_key = api_key
        self.name = f"openai:{model}"

    @classmethod
    def from_env(cls, max_tries: int = 3) -> OpenAIJudge:
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            raise JudgeError("--judge openai needs the OPENAI_API_KEY environment variable (and OPENAI_BASE_URL for "
                             "an endpoint other than api.openai.com)")
        return cls(os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"), key,
                   os.environ.get("OPENAI_JUDGE_MODEL", "gpt-3.5-turbo"), max_tries)

    def messages(self, question: str, answer: str, pred: str) -> list[dict]:
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": USER_PROMPT.format(question=question, answer=answer, pred=pred)}]

    def _post(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages}).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            reply = json.loads(response.read())
        return reply["choices"][0]["message"]["content"]

    def __call__(self, question: str, answer: str, pred: str) -> dict:
        """The verdict plus `malformed` (replies that did not parse) and, when all tries failed, `error`."""
        messages = self.messages(question, answer, pred)
        malformed, last_error = 0, ""
        for attempt in range(self.max_tries):
            if attempt:
                time.sleep(self.backoff_s * attempt)
            try:
                content = self._post(messages)
            except urllib.error.HTTPError as e:
                if e.code in (401, 403, 404):
                    raise JudgeError(f"judge endpoint {self.url} answered HTTP {e.code} {e.reason}") from None
                last_error = f"HTTP {e.code} {e.reason}"
                continue
            except (urllib.error.URLError, OSError, KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
                last_error = f"{type(e).__name__}: {e}"
                continue
            try:
                return parse_verdict(content) | {"malformed": malformed}
            except ValueError as e:
                malformed += 1
                last_error = f"malformed reply {content[:200]!r}: {e}"
        return {"malformed": malformed, "error": f"no usable reply in {self.max_tries} tries; last: {last_error}"}


def make_judge(name: str, max_tries: int = 3):
    if name == "offline":
        return OfflineJudge()
    if name == "openai":
        return OpenAIJudge.from_env(max_tries)
    raise JudgeError(f"unknown judge {name!r}; choose offline or openai")
