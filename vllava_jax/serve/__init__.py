"""An OpenAI-compatible server for Video-LLaVA: `python -m vllava_jax.serve --model DIR`.

`engine` batches requests continuously on the accelerator (one thread owns it); `app` is the HTTP
side (FastAPI): `chat` turns an OpenAI chat request into the prompt `generate` would build,
`media` turns its `data:` / `file://` URLs into preprocessed pixels, `answer_text` turns chosen
tokens back into text (stop strings, streaming deltas), `api_errors` shapes OpenAI's error replies,
`web/` is the page served at `/`.
"""
