"""Template + tokenizer -> token ids and labels that train only on the assistant answers.

Labels are IGNORE (-100) everywhere except each assistant answer and the separator after it
(`</s>` in `llava_v1`, "\\n" in `plain`), as the original `preprocess_v1`/`preprocess_plain` mask.
Instead of the original's per-round length arithmetic (which needs `-2`/`-1` fix-ups per
tokenizer version), an answer's span is found by tokenizing the two prompt prefixes around it:
`prompt(turns[:2k+1])` ends right before answer k, `prompt(turns[:2k+2])` right after its
separator. Both are checked to be token prefixes of the full prompt.
"""

from __future__ import annotations

import numpy as np

from vllava_jax.errors import DataError
from vllava_jax.processing.conversation import Template
from vllava_jax.processing.tokenizer import Tokenizer

IGNORE = -100


def tokenize_conversation(tokenizer: Tokenizer, template: Template, turns: list[str],
                          media: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, labels), int32, one placeholder token per medium (not yet expanded into slots)."""
    full = template.prompt(turns, media)
    body = tokenizer.encode(full, add_special_tokens=False)
    labels = np.full(len(body), IGNORE, np.int32)
    for answer in range(1, len(turns), 2):
        start = _prefix_length(tokenizer, template.prompt(turns[:answer], media), full, body, template)
        end = _prefix_length(tokenizer, template.prompt(turns[:answer + 1], media), full, body, template)
        labels[start:end] = body[start:end]
    prefix, suffix = tokenizer.prefix_ids, tokenizer.suffix_ids
    ids = np.asarray(prefix + body + suffix, np.int32)
    labels = np.concatenate([np.full(len(prefix), IGNORE, np.int32), labels, np.full(len(suffix), IGNORE, np.int32)])
    return ids, labels


def _prefix_length(tokenizer: Tokenizer, prefix: str, full: str, body: list[int], template: Template) -> int:
    ids = tokenizer.encode(prefix, add_special_tokens=False)
    if not full.startswith(prefix) or body[:len(ids)] != ids:
        raise DataError(f"template {template.name!r}: the prompt prefix {prefix[-40:]!r} does not tokenize as a "
                        "prefix of the whole prompt, so answer tokens cannot be located")
    return len(ids)
