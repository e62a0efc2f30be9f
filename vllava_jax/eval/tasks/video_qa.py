"""Zero-shot open-ended video QA (MSVD-QA, MSRVTT-QA, TGIF-QA, ActivityNet-QA) as Video-LLaVA's
run_inference_video_qa.py runs it: the released `test_q.json` `[{video_name, question, question_id}]`
and `test_a.json` `[{answer, type, question_id}]`, paired by position as the original pairs them
(we also check that the ids agree); the prompt is the bare question after the video, in the
`llava_v1` template; answers up to 1024 new tokens; a judge scores them (`judge.py`).

Videos are looked up by name with each known extension, in the data dir itself or its `videos/`,
`videos/all/` or `mp4/` folder, as the released sets unpack. ActivityNet's files carry a `v_`
prefix its annotations may lack (or the other way round): both spellings are tried.
"""

from __future__ import annotations

import dataclasses

from etils import epath

from vllava_jax.eval.metrics.video_qa import summarize
from vllava_jax.eval.tasks import MediaFinder, Sample, check_unique, field, read_json
from vllava_jax.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")
VIDEO_FOLDERS = ("", "videos", "videos/all", "mp4")


def video_candidates(name: str, activitynet: bool) -> list[str]:
    stems = [name]
    if activitynet:
        stems.append(name[2:] if name.startswith("v_") else "v_" + name)
    out = []
    for stem in stems:
        if stem.lower().endswith(VIDEO_EXTENSIONS):
            out.append(stem)
        out.extend(stem + ext for ext in VIDEO_EXTENSIONS)
    return out


@dataclasses.dataclass(frozen=True)
class VideoQATask:
    name: str
    activitynet: bool = False
    media_kind: str = "video"
    template: str = "llava_v1"
    max_new_tokens: int = 1024
    open_ended: bool = True

    def load(self, data: epath.Path) -> list[Sample]:
        q_file, a_file = data / "test_q.json", data / "test_a.json"
        questions = read_json(q_file, "question file (test_q.json)")
        answers = read_json(a_file, "answer file (test_a.json)")
        for path, rows in ((q_file, questions), (a_file, answers)):
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a JSON list of entries, got {type(rows).__name__}")
        if len(questions) != len(answers):
            raise DataError(f"{q_file} has {len(questions)} questions but {a_file} has {len(answers)} answers; "
                            "they are paired by position and must match")
        finder = MediaFinder(data, VIDEO_FOLDERS)
        samples = []
        for index, (q, a) in enumerate(zip(questions, answers)):
            qid, aid = field(q, "question_id", str(q_file)), field(a, "question_id", str(a_file))
            if str(qid) != str(aid):
                raise DataError(f"entry {index}: {q_file} has question_id {qid!r} but {a_file} has {aid!r}; "
                                "the files are paired by position and must list the same questions in the same order")
            name = str(field(q, "video_name", str(q_file)))
            question = str(field(q, "question", str(q_file)))
            samples.append(Sample(id=str(qid), question=question, text=question, media_name=name,
                                  media=finder.find(video_candidates(name, self.activitynet)),
                                  answer=str(field(a, "answer", str(a_file))),
                                  extra={"type": a.get("type")}))
        check_unique((s.id for s in samples), str(q_file))
        return samples

    def score(self, records: list[dict]) -> tuple[list[dict], dict]:
        """Records carry the judge's `verdict` (the runner judges them, with a cache)."""
        verdicts = [r["verdict"] for r in records]
        return verdicts, summarize(verdicts)


TASKS = [VideoQATask("msvd_qa"), VideoQATask("msrvtt_qa"), VideoQATask("tgif_qa"),
         VideoQATask("activitynet_qa", activitynet=True)]
