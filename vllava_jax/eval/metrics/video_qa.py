"""Open-ended video QA from judge verdicts, as Video-LLaVA's eval_video_qa.py (Video-ChatGPT's
evaluate_*_qa.py) sums them up: every verdict counts toward the mean score (`int(score)`, so 4.8
counts 4); accuracy is "yes" / ("yes" + "no") where a verdict whose `pred.lower()` contains "yes" is
yes, else one containing "no" is no.

The original wraps each verdict in a bare `try/except` that prints and moves on, so whatever step
raises - a missing key, a score that is not a number or parses to infinity (`1e999`: OverflowError),
a `pred` that is not a string - ends that verdict there: a score read before the failure stays in
the sum, the verdict is left out of accuracy. We do the same and count those as `unscorable`.
Where the original divides by zero (no verdicts, or none yes/no) the result is 0.0.
"""

from __future__ import annotations

from collections.abc import Iterable


def summarize(verdicts: Iterable[dict]) -> dict[str, float | int]:
    count = score_sum = yes = no = unscorable = 0
    for verdict in verdicts:
        count += 1
        try:  # the original's steps, in its order
            score_sum += int(verdict["score"])
            pred = verdict["pred"].lower()
            if "yes" in pred:
                yes += 1
            elif "no" in pred:
                no += 1
        except Exception:  # the original's bare except
            unscorable += 1
    return {"accuracy": yes / (yes + no) if yes + no else 0.0, "score": score_sum / count if count else 0.0,
            "count": count, "yes": yes, "no": no, "unscorable": unscorable}
