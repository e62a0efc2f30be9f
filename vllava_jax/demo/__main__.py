"""`python -m vllava_jax.demo --workdir DIR` (see `vllava_jax/demo/run.py`), through the CLI wrapper."""

from vllava_jax import cli
from vllava_jax.demo.run import main


def entry(argv: list[str]) -> int:
    """The demo's exit code: 0 once it finished (its metrics document is WORKDIR/metrics.json)."""
    main(argv)
    return 0


if __name__ == "__main__":
    cli.run(entry, resumable=True)
