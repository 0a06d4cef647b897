"""Launch the app: ``python -m app --help``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from app import access

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local app: no usage reports to third parties
logger = logging.getLogger("app")
AUTH_MESSAGE = "Sign in with the user name and password you were given by whoever runs this app."


class UsageError(ValueError):
    """A command-line mistake: one line on stderr, exit status 2, before anything loads or binds."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own mistakes (--port abc, unknown flags) in one line too
        self.exit(2, f"error: {message} (python -m app --help lists the options)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from stage2_prior.inputs import KINDS

    p = _Parser(prog="python -m app", description="EdVAE generator: generate, reconstruct and "
                                "complete images in the browser (and over the Gradio API).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                   "0.0.0.0 for the local network)")
    p.add_argument("--port", type=int, default=7860, help="port, 1-65535 (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public *.gradio.live link (off by default)")
    p.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                   help="require sign-in with this user and password (repeatable; the page and the API alike). "
                   f"Required with --share or a non-loopback --host. {access.AUTH_ENV} takes the same, one a line, "
                   "outside the shell history and the process list")
    p.add_argument("--auth-file", metavar="PATH", help="a file of user:password lines (blank and # lines skipped); "
                   f"or set {access.AUTH_FILE_ENV}")
    p.add_argument("--no-auth", action="store_true",
                   help="serve --share / a non-loopback --host without sign-in, on purpose (a warning is shown)")
    p.add_argument("--keep-files", type=int, default=60, metavar="MINUTES",
                   help="delete the pictures, downloads and uploads of a request this long after it (default 60; "
                   "checked every MINUTES/2). Keep it above the longest wait in the queue: an upload deleted "
                   "before its turn cannot be read")
    p.add_argument("--tokenizer", default=None, help="a tokenizer folder or Hub id (with --prior): serve that pair")
    p.add_argument("--prior", default=None, help="the prior trained on --tokenizer (folder or Hub id)")
    p.add_argument("--model", default=None, metavar="PATH", help="a model folder with tokenizer/ and prior/ (a "
                   "python -m stage2_prior.build output such as runs/build/NAME, or checkpoints/celeba64): serve it")
    p.add_argument("--preprocess", default=None, choices=KINDS,
                   help="preprocessing of uploads for --tokenizer (default: from its training_data.json)")
    p.add_argument("--config", default=None, help="model registry (default configs/app.yaml)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    return p.parse_args(argv)


def check_device(device: str | None) -> None:
    """A device torch knows and this machine has (None: the pipeline's default, cuda when available)."""
    if device is None:
        return
    import torch

    instead = "pass --device cpu, or leave --device out (cuda when available, else cpu)"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a device torch knows: pass cpu, cuda, cuda:N or mps "
                         "(or leave --device out: cuda when available, else cpu)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = "" if torch.version.cuda else " (this torch is built without CUDA)"
            raise UsageError(f"--device {device}: no CUDA GPU is available on this machine{built}: {instead}")
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                             f"cuda:{count - 1}: pass one of those, or cpu")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {device}: no Apple MPS device is available on this machine: {instead}")
    elif dev.type != "cpu":
        raise UsageError(f"--device {device}: the app runs on cpu, cuda or mps, not {dev.type}: {instead}")


def check_flags(args: argparse.Namespace) -> tuple[list[tuple[str, str]], str | None]:
    """Every flag checked before anything loads: (credentials for Gradio's sign-in, warning for an open server)."""
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is outside 1-65535: pass a free port such as 7860 (the default)")
    if args.keep_files < 1:
        raise UsageError(f"--keep-files {args.keep_files}: pass a number of minutes, at least 1 (default 60)")
    try:
        users, sources = access.credentials(args.auth, args.auth_file)
        warning = access.check_access(args.host, args.share, users, sources, args.no_auth)
    except access.AccessError as err:
        raise UsageError(str(err)) from None
    check_device(args.device)
    return users, warning


def _local(path: str | None) -> str | None:
    """A command-line path is relative to the current folder; anything else is left for a Hub id."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        users, warning = check_flags(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if warning:
        logger.warning(warning)
    from app import render
    from app.handlers import Handlers
    from app.registry import ROOT, load_app_config, load_models
    from app.ui import CSS, build_ui, example_images

    config = load_app_config(args.config)
    if args.model:  # a model folder: its tokenizer/ and prior/ (app.registry.model_folder)
        from app.registry import model_folder

        args.tokenizer, args.prior = model_folder(args.model)
    models, default = load_models(config, device=args.device, tokenizer=_local(args.tokenizer),
                                  prior=_local(args.prior), preprocess=args.preprocess)
    if not any(m.available for m in models.values()):
        logger.warning("no model could be loaded; the page lists how to get one")
    keep_s = args.keep_files * 60
    downloads = render.Downloads(keep_s=keep_s)
    examples = example_images(config.examples, ROOT)
    demo = build_ui(models, default, config.limits, Handlers(models, config.limits, downloads), examples,
                    warning=warning, delete_cache=(max(1, keep_s // 2), keep_s))
    demo.queue(max_size=config.limits.queue_size, default_concurrency_limit=1)
    render.start_cache_sweeper(demo)  # delete_cache that keeps working under traffic (see render.sweep_cache)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS,
                    auth=users or None, auth_message=AUTH_MESSAGE if users else None,
                    max_file_size=f"{config.limits.max_upload_mb}mb", show_error=False,
                    allowed_paths=[str(Path(p).parent) for p in examples[:1]])
    except OSError as err:
        sys.exit(f"error: cannot serve on {args.host}:{args.port} ({err}); pass another --port or stop what uses it")
    finally:
        downloads.cleanup()


if __name__ == "__main__":
    from edvae_common.cli import run_cli

    run_cli(main)
