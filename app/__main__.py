"""Launch the app: ``python -m app --help``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local app: no usage reports to third parties


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from stage2_prior.inputs import KINDS

    p = argparse.ArgumentParser(prog="python -m app", description="EdVAE generator: generate, reconstruct and "
                                "complete images in the browser (and over the Gradio API).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                   "0.0.0.0 for the local network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public *.gradio.live link (off by default)")
    p.add_argument("--tokenizer", default=None, help="a tokenizer folder or Hub id (with --prior): serve that pair")
    p.add_argument("--prior", default=None, help="the prior trained on --tokenizer (folder or Hub id)")
    p.add_argument("--preprocess", default=None, choices=KINDS,
                   help="preprocessing of uploads for --tokenizer (default: from its training_data.json)")
    p.add_argument("--config", default=None, help="model registry (default configs/app.yaml)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    return p.parse_args(argv)


def _local(path: str | None) -> str | None:
    """A command-line path is relative to the current folder; anything else is left for a Hub id."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from app import render
    from app.handlers import Handlers
    from app.registry import ROOT, load_app_config, load_models
    from app.ui import CSS, build_ui, example_images

    config = load_app_config(args.config)
    models, default = load_models(config, device=args.device, tokenizer=_local(args.tokenizer),
                                  prior=_local(args.prior), preprocess=args.preprocess)
    if not any(m.available for m in models.values()):
        logging.getLogger("app").warning("no model could be loaded; the page lists how to get one")
    downloads = render.Downloads()
    examples = example_images(config.examples, ROOT)
    demo = build_ui(models, default, config.limits, Handlers(models, config.limits, downloads), examples)
    demo.queue(max_size=config.limits.queue_size, default_concurrency_limit=1)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS,
                    max_file_size=f"{config.limits.max_upload_mb}mb", show_error=False,
                    allowed_paths=[str(Path(p).parent) for p in examples[:1]])
    except OSError as err:
        sys.exit(f"error: cannot serve on {args.host}:{args.port} ({err}); pass another --port or stop what uses it")
    finally:
        downloads.cleanup()


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
