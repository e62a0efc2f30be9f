"""The training input pipeline in one function: sources -> shard -> shuffle -> mix -> epochs -> examples
-> batches -> worker processes. The trainer device-puts the batches (`grain.experimental.device_put`
or `jax.make_array_from_process_local_data`) and checkpoints `iterator.get_state()` with its state.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
from absl import flags

from data_pipelines.batching import BatchSpec
from data_pipelines.packing import UNUSABLE_WINDOW, PackIterDataset
from data_pipelines.transforms import ExampleTransform


def make_dataset(
    sources: Sequence,
    transform: ExampleTransform,
    spec: BatchSpec,
    *,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    num_epochs: int | None = 1,
    pack: bool = False,
    shard: grain.sharding.ShardOptions | None = None,
    num_workers: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 1,
) -> grain.IterDataset:
    """Batches of `spec`'s shape (see `batching`) from random-access `sources` mixed by `weights`.

    `shard` defaults to this JAX process's share (`ShardByJaxProcess`): every source is strided by
    process, so processes see disjoint samples that together cover the data. Each source is
    shuffled by `seed` before mixing (which keeps the proportions), and reshuffled every epoch;
    `num_epochs=None` repeats forever. `num_workers` > 0 decodes in that many processes; resuming
    from a saved state needs the same `num_workers` (packing is stateful). In each process
    `read_threads` threads run the example transform up to one batch (`spec.rows` examples) ahead
    of the packing, so that it overlaps a training step (0: in the calling thread, nothing ahead).
    Grain's default, 16 threads and 500 examples, would hold up to 2.4 GB of 8-frame float32 videos
    per process and oversubscribe cores already given one worker each. When `UNUSABLE_WINDOW`
    samples in a row are skipped, or twice the sources' size if smaller (epochs are reshuffled, so a
    source of n samples with one usable can show 2n - 2 skips in a row), iteration stops with a
    `DataError`.
    """
    shard = shard or grain.sharding.ShardByJaxProcess()
    datasets = [grain.MapDataset.source(s)[shard.shard_index::shard.shard_count].shuffle(seed=seed + i)
                for i, s in enumerate(sources)]
    ds = grain.MapDataset.mix(datasets, weights) if len(datasets) > 1 else datasets[0]
    ds = ds.repeat(num_epochs).map(transform).to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=spec.rows if read_threads else 0))
    ds = PackIterDataset(ds, spec, pack, unusable_window=min(UNUSABLE_WINDOW, 2 * sum(len(d) for d in datasets)))
    if num_workers:
        if not flags.FLAGS.is_parsed():  # grain reads its absl flags; outside an absl app (pytest, notebooks) none are
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=worker_buffer_size))
    return ds
