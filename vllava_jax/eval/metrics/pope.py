"""POPE's scoring (LLaVA's eval_pope.py): the first sentence of the answer decides yes/no, then
accuracy, precision, recall, F1 and the share of "yes" answers against the yes/no labels."""

from __future__ import annotations

from collections.abc import Sequence


def answer_is_yes(text: str) -> bool:
    """Only the text before the first "." counts; "No", "no" or "not" as a word means no, else yes."""
    text = text.split(".")[0].replace(",", "")
    words = text.split(" ")
    return not ("No" in words or "not" in words or "no" in words)


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Labels are "yes"/"no"; anything but "no" counts as yes, as the original does."""
    preds = [answer_is_yes(p) for p in predictions]
    truth = [label != "no" for label in labels]
    tp = sum(p and t for p, t in zip(preds, truth))
    fp = sum(p and not t for p, t in zip(preds, truth))
    tn = sum(not p and not t for p, t in zip(preds, truth))
    fn = sum(not p and t for p, t in zip(preds, truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(preds) if preds else 0.0, "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": sum(preds) / len(preds) if preds else 0.0, "tp": tp, "fp": fp, "tn": tn, "fn": fn}
