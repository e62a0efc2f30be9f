from vllava_jax import cli
from vllava_jax.demo.run import main

cli.run(main, resumable=True)
