"""The Gradio app: generate, reconstruct and complete images with a tokenizer + prior pair.

    python -m app [--tokenizer DIR --prior DIR] [--host 127.0.0.1 --port 7860 --share --device cpu]

A thin layer: ``registry`` reads ``configs/app.yaml`` and loads each pair once (as a
``stage2_prior.pipeline.Pipeline``), ``handlers`` check requests and call the pipeline, ``render``
draws token maps and heatmaps, ``ui`` lays out the three tabs (API endpoints ``/generate``,
``/reconstruct``, ``/complete``). See docs/app.md.
"""
