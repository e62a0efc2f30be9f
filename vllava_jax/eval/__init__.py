"""Benchmark evaluation: `python -m vllava_jax.eval --task TASK --model PATH --data DIR --output DIR`.

tasks/ reads each benchmark's released files and builds the original scripts' prompts; metrics/
holds the official scoring rules; judge.py the GPT and offline judges for open-ended video QA;
runner.py the resumable run; report.py the HTML page.
"""
