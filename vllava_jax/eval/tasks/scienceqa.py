"""ScienceQA-IMG as LLaVA's model_vqa_science.py asks it: LLaVA's `llava_test_CQM-A.json`
(`[{id, image, conversations: [{value}, ...]}]`, only entries with an image) gives the prompt
(`<image>` moved to its own first line, then "Answer with the option's letter from the given
choices directly."); the official `problems.json` gives the choices and the answer index,
scored by `metrics.scienceqa` letter matching. Images sit in `images/test/<id>/image.png`."""

from __future__ import annotations

import dataclasses

from etils import epath

from vllava_jax.eval.metrics.scienceqa import predicted_index
from vllava_jax.eval.tasks import MediaFinder, Sample, check_unique, field, find_file, read_json
from vllava_jax.errors import DataError

LETTER_PROMPT = "Answer with the option's letter from the given choices directly."


@dataclasses.dataclass(frozen=True)
class ScienceQATask:
    name: str = "sqa_img"
    media_kind: str = "image"
    template: str = "vicuna_v1"
    max_new_tokens: int = 1024
    open_ended: bool = False

    def load(self, data: epath.Path) -> list[Sample]:
        q_file = find_file(data, "LLaVA ScienceQA question file", ("llava_test_CQM-A.json",))
        p_file = find_file(data, "ScienceQA problems file", ("problems.json",))
        entries, problems = read_json(q_file, "question file"), read_json(p_file, "problems file")
        if not isinstance(entries, list) or not isinstance(problems, dict):
            raise DataError(f"{q_file} must be a JSON list and {p_file} a JSON object keyed by problem id")
        finder = MediaFinder(data, ("images/test", "images", ""))
        samples = []
        for index, entry in enumerate(entries):
            if "image" not in entry:
                continue
            where = f"{q_file} entry {index}"
            pid = str(field(entry, "id", where))
            if pid not in problems:
                raise DataError(f"{where}: problem {pid!r} is not in {p_file}")
            problem = problems[pid]
            value = str(field(field(entry, "conversations", where)[0], "value", where))
            question = value.replace("<image>", "").strip()
            image = str(entry["image"])
            samples.append(Sample(id=pid, question=question, text=f"{question}\n{LETTER_PROMPT}", media_name=image,
                                  media=finder.find([image]),
                                  answer={"index": field(problem, "answer", f"{p_file} problem {pid}"),
                                          "choices": field(problem, "choices", f"{p_file} problem {pid}")}))
        check_unique((s.id for s in samples), str(q_file))
        return samples

    def score(self, records: list[dict]) -> tuple[list[dict], dict]:
        verdicts = [{"correct": predicted_index(r["pred"], len(r["answer"]["choices"])) == r["answer"]["index"]}
                    for r in records]
        return verdicts, {"accuracy": sum(v["correct"] for v in verdicts) / len(verdicts) if verdicts else 0.0,
                          "count": len(verdicts)}
