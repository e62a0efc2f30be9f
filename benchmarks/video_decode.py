"""8-frame clips decoded per second: our seeking decoder vs decoding every frame and keeping 8.

The reference is the recipe in transformers' Video-LLaVA docs (`read_video_pyav`: decode from the
start, keep the sampled indices, stop after the last one), with the original's sampling
`np.linspace(0, total - 1, 8).astype(int)`. The clips (H.264, 30 fps, B-frames, a keyframe every
250 frames as x264's default or every 60 as streaming encoders use) are written by this script with
PyAV. Seeking pays off when keyframes are closer together than the 8 samples. Both sides run in this process, one
decoding thread each (`thread_count=1`), so the figure is per core. Time is this process's CPU time
(`time.process_time`), not wall time, and the sides take turns (ours, reference, ours, ...), so that other
jobs on a shared machine disturb both alike.

"Bit-exact minimum" counts the frames any exact decoder must decode: for each sampled frame, every reference
frame from its keyframe up to it in decoding order (found by decoding the clip with non-reference frames
dropped), plus the frame itself. The reference decodes every frame up to the last sample; the ratio of
the two counts bounds our speed-up even if every frame cost the same (dropped B-frames cost less than
the reference frames we must keep, so the real bound is lower).

    python -m benchmarks.video_decode [--runs 3] [--workdir /tmp/vllava_decode_bench]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import av
import numpy as np
from tqdm import tqdm

from vllava_jax.processing import video as video_lib

CLIPS = [(10, 360, 250), (30, 360, 250), (30, 720, 250), (60, 480, 250), (60, 720, 250), (30, 720, 60),
         (60, 720, 60)]  # (seconds, height, keyframe interval)


def write_clip(path: pathlib.Path, seconds: int, height: int, gop: int, fps: int = 30) -> None:
    width = height * 16 // 9 // 2 * 2
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28", "bf": "2", "g": str(gop)}
        for i in range(seconds * fps):
            r = ((x + 4 * i) % 256).astype(np.uint8)
            g = ((y + 2 * i) % 256).astype(np.uint8)
            b = np.full_like(r, (i * 3) % 256)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.stack([r, g, b], -1), format="rgb24")))
        out.mux(stream.encode())


def read_video_pyav(path: pathlib.Path, num_frames: int = 8) -> np.ndarray:
    """The reference recipe: decode from the start, keep the sampled indices."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        indices = set(np.linspace(0, stream.frames - 1, num_frames).astype(int).tolist())
        order = np.linspace(0, stream.frames - 1, num_frames).astype(int)
        kept = {}
        for i, frame in enumerate(container.decode(stream)):
            if i > order[-1]:
                break
            if i in indices:
                kept[i] = frame.to_ndarray(format="rgb24")
    return np.stack([kept[i] for i in order])


def ours(path: pathlib.Path) -> np.ndarray:
    return video_lib.read_frames(path, 8)


def minimum_frames(path: pathlib.Path, num_frames: int = 8) -> tuple[int, int]:
    """(frames an exact decoder must decode, frames the reference decodes) for the sampled frames."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size and p.pts is not None]
        container.seek(0)
        stream.codec_context.skip_frame = "NONREF"
        references = {f.pts for f in container.decode(stream)}
    order = sorted(pts for pts, _ in packets)
    indices = np.linspace(0, len(order) - 1, num_frames).astype(int)
    position = {pts: d for d, (pts, _) in enumerate(packets)}  # in decoding order
    needed = set()
    for target in (order[i] for i in indices):
        end = position[target]
        start = max(d for d in range(end + 1) if packets[d][1])
        needed |= {pts for pts, _ in packets[start:end + 1] if pts in references} | {target}
    return len(needed), int(indices[-1]) + 1


def clips_per_second(fns, path, runs: int) -> tuple[list[float], list[np.ndarray]]:
    """Each function's clips per CPU second (median of `runs`), timed in turns; and what each returned."""
    outputs = [fn(path) for fn in fns]  # warm-up (file cache)
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, t in zip(fns, times):
            start = time.process_time()
            fn(path)
            t.append(time.process_time() - start)
    return [1 / float(np.median(t)) for t in times], outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per clip and side (median reported)")
    parser.add_argument("--workdir", default="/tmp/vllava_decode_bench", help="where the generated clips go")
    args = parser.parse_args()
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # one decoding thread for our side too: PyAV's default may use several
    av_open = av.open

    def open_one_thread(*a, **k):
        container = av_open(*a, **k)
        for s in container.streams.video:
            s.thread_count = 1
        return container

    video_lib.av.open = open_one_thread
    rows = []
    for seconds, height, gop in tqdm(CLIPS, desc="clips"):
        path = workdir / f"{seconds}s_{height}p_gop{gop}.mp4"
        if not path.exists():
            write_clip(path, seconds, height, gop)
        (ours_cps, ref_cps), (ours_frames, ref_frames) = clips_per_second([ours, read_video_pyav], path, args.runs)
        same = "identical" if np.array_equal(ours_frames, ref_frames) else (
            f"max |diff| {np.abs(ours_frames.astype(int) - ref_frames).max()}")
        needed, decoded = minimum_frames(path)
        rows.append((f"{seconds} s {height}p, GOP {gop}", ours_cps, ref_cps, needed, decoded, same))
    print("| clip (H.264, 30 fps, B-frames) | ours clips/s | reference clips/s | ours/ref | frames decoded: "
          "bit-exact minimum / reference (bound) | frames |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, o, r, needed, decoded, same in rows:
        bound = f"{needed} / {decoded} ({decoded / needed:.2f}x)"
        print(f"| {name} | {o:.2f} | {r:.2f} | {o / r:.2f}x | {bound} | {same} |")


if __name__ == "__main__":
    main()
