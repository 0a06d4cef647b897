"""The page: three tabs wired to the handlers, with api names /generate, /reconstruct, /complete."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from app.handlers import Handlers, user_errors
from app.registry import AppModel, Limits

TITLE = "EdVAE generator"
# small images (64 x 64) are shown large: fill the box, keep the pixels sharp
CSS = ".pixelated img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"
SHOWN = 220  # height of the image boxes, pixels
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"]


def model_status(models: dict[str, AppModel]) -> str:
    """One line per model: its facts when loaded, else how to get it."""
    lines = []
    for name, m in models.items():
        if m.available:
            d = m.pipeline.describe()
            cond = f", {d['num_classes']} classes" if d["num_classes"] else ""
            lines.append(f"- **{m.title}** (`{name}`): {d['image_size']} x {d['image_size']} images, "
                         f"{d['grid'][0]} x {d['grid'][1]} tokens of {d['codebook_size']} codes, prior of "
                         f"{d['prior_parameters'] / 1e6:.1f}M parameters{cond}")
        else:
            lines.append(f"- {m.title} (`{name}`): *not available*: {m.problem}")
    return "\n".join(lines)


def _controls(pipe) -> dict:
    """Values and ranges of the per-model controls (sampling defaults, classes, token rows)."""
    d = pipe.sampling_defaults
    classes = [("none (unconditional)", -1)] + [(str(c), c) for c in range(pipe.num_classes)]
    note = ""
    if d.get("note"):  # the prior folder's sampling.json says how its defaults were chosen
        note = (f"Sampling defaults recommended for this model: temperature {d['temperature']:g}, "
                f"top-k {d['top_k'] or 'off'}, top-p {d['top_p']:g} ({d['note']}).")
    return dict(temperature=d["temperature"], top_k=d["top_k"] or 0, top_p=d["top_p"],
                guidance=d["guidance"], classes=classes, conditional=pipe.num_classes > 0,
                max_k=pipe.spec.codebook_size, rows=pipe.grid[0], note=note)


def build_ui(models: dict[str, AppModel], default: str, limits: Limits, handlers: Handlers,
             examples: list[str], warning: str | None = None,
             delete_cache: tuple[int, int] = (1800, 3600)) -> gr.Blocks:
    """The page; ``warning`` (an open server) is shown above everything, ``delete_cache`` is Gradio's
    (every ``frequency`` s, remove this app's cached files older than ``age`` s)."""
    available = [(m.title, name) for name, m in models.items() if m.available]
    first = models[default].pipeline if default in models and models[default].available else None
    c = _controls(first) if first else dict(temperature=1.0, top_k=0, top_p=1.0, guidance=1.0,
                                            classes=[("none (unconditional)", -1)], conditional=False, max_k=512,
                                            rows=16, note="")
    generate = user_errors(handlers.generate)
    reconstruct = user_errors(handlers.reconstruct)
    complete = user_errors(handlers.complete)

    with gr.Blocks(title=TITLE, delete_cache=delete_cache) as demo:
        if warning:
            gr.Markdown(f"**Warning:** {html.escape(warning, quote=False)}", elem_id="open-warning")
        gr.Markdown(f"# {TITLE}\nAn evidential discrete VAE (EdVAE) turns images into tokens; a transformer prior "
                    "writes new token grids. Generate images, see what the tokenizer does to yours, or let the "
                    "prior finish the bottom of a picture.")
        with gr.Accordion("Models", open=not available):
            gr.Markdown(model_status(models) or "No models are configured (configs/app.yaml).")
        model = gr.Dropdown(choices=available, value=default if first else None, label="Model",
                            interactive=bool(available))
        sampling_note = gr.Markdown(c["note"])

        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    num_images = gr.Slider(1, limits.max_images, value=min(8, limits.max_images), step=1,
                                           label="Number of images")
                    temperature = gr.Slider(0.0, 2.0, value=c["temperature"], step=0.05,
                                            label="Temperature (0 = greedy)")
                    top_k = gr.Slider(0, c["max_k"], value=c["top_k"], step=1, label="Top-k (0 = all codes)")
                    top_p = gr.Slider(0.05, 1.0, value=c["top_p"], step=0.01, label="Top-p (1 = off)")
                    seed = gr.Number(value=0, precision=0, label="Seed (-1 = a fresh random one)")
                    class_label = gr.Dropdown(choices=c["classes"], value=-1, label="Class",
                                              visible=c["conditional"])
                    guidance = gr.Slider(0.0, 10.0, value=c["guidance"], step=0.1,
                                         label="Guidance scale (1 = none)", visible=c["conditional"])
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                with gr.Column(scale=2):
                    gallery = gr.Gallery(label="Samples", columns=4, format="png", elem_id="samples",
                                         elem_classes=["pixelated"], object_fit="contain", height="auto")
                    seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
                    files = gr.File(label="Download: the images as PNGs (zip) and their codes (.npz)",
                                    file_count="multiple", interactive=False)

        with gr.Tab("Reconstruct", id="reconstruct"):
            with gr.Row():
                with gr.Column(scale=1):
                    rec_image = gr.Image(type="filepath", label="Your image", sources=["upload", "clipboard"],
                                         elem_id="reconstruct-input", height=SHOWN, elem_classes=["pixelated"])
                    if examples:
                        gr.Examples(examples=examples, inputs=rec_image, label="Examples")
                    rec_button = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct-button")
                with gr.Column(scale=2):
                    with gr.Row():
                        seen = gr.Image(label="As the model sees it", format="png", elem_classes=["pixelated"],
                                        interactive=False, elem_id="model-input", height=SHOWN)
                        recon = gr.Image(label="Reconstruction", format="png", elem_classes=["pixelated"],
                                         interactive=False, elem_id="reconstruction", height=SHOWN)
                    with gr.Row():
                        tokens = gr.Image(label="Token map (colour = code)", format="png", height=SHOWN,
                                          elem_classes=["pixelated"], interactive=False, elem_id="token-map")
                        heat = gr.Image(label="Uncertainty u = K/S (bright = uncertain)", format="png", height=SHOWN,
                                        elem_classes=["pixelated"], interactive=False, elem_id="uncertainty")
                    explanation = gr.Markdown(elem_id="uncertainty-text")
                    numbers = gr.JSON(label="Numbers")

        with gr.Tab("Complete", id="complete"):
            with gr.Row():
                with gr.Column(scale=1):
                    comp_image = gr.Image(type="filepath", label="Image to complete", sources=["upload", "clipboard"],
                                          height=SHOWN, elem_classes=["pixelated"])
                    if examples:
                        gr.Examples(examples=examples, inputs=comp_image, label="Examples")
                    keep_rows = gr.Slider(0, c["rows"] - 1, value=c["rows"] // 2, step=1,
                                          label="Token rows to keep (from the top)")
                    comp_num = gr.Slider(1, limits.max_images, value=min(4, limits.max_images), step=1,
                                         label="Number of completions")
                    comp_seed = gr.Number(value=0, precision=0, label="Seed (-1 = a fresh random one)")
                    comp_button = gr.Button("Complete", variant="primary", elem_id="complete-button")
                with gr.Column(scale=2):
                    with gr.Row():
                        kept = gr.Image(label="Kept (the rest greyed out)", format="png", elem_classes=["pixelated"],
                                        interactive=False, scale=1, height=SHOWN)
                        completions = gr.Gallery(label="Completions", columns=4, format="png",
                                                 elem_classes=["pixelated"], object_fit="contain", height="auto",
                                                 scale=3)
                    comp_seed_used = gr.Number(label="Seed used", precision=0, interactive=False)

        # Uploads reach the handlers unprocessed (preprocess=False): the pipeline reads and checks them itself,
        # so a file Pillow cannot open gets a message instead of a failure inside Gradio.
        generate_button.click(generate, [model, num_images, temperature, top_k, top_p, seed, class_label, guidance],
                              [gallery, seed_used, files], api_name="generate", preprocess=False,
                              concurrency_id="sampling", concurrency_limit=limits.sample_concurrency)
        rec_button.click(reconstruct, [model, rec_image], [seen, recon, tokens, heat, numbers, explanation],
                         api_name="reconstruct", preprocess=False, concurrency_id="reconstruct",
                         concurrency_limit=limits.reconstruct_concurrency)
        comp_button.click(complete, [model, comp_image, keep_rows, comp_num, comp_seed],
                          [kept, completions, comp_seed_used], api_name="complete", preprocess=False,
                          concurrency_id="sampling", concurrency_limit=limits.sample_concurrency)

        def switch(name: str):
            if name not in models or not models[name].available:
                return [gr.update()] * 9
            n = _controls(models[name].pipeline)
            return [gr.update(value=n["temperature"]), gr.update(value=n["top_k"], maximum=n["max_k"]),
                    gr.update(value=n["top_p"]), gr.update(choices=n["classes"], value=-1, visible=n["conditional"]),
                    gr.update(value=n["guidance"], visible=n["conditional"]),
                    gr.update(maximum=n["rows"] - 1, value=n["rows"] // 2), gr.update(value=n["note"]),
                    gr.update(value=None), gr.update(value=None)]

        model.change(switch, model, [temperature, top_k, top_p, class_label, guidance, keep_rows, sampling_note,
                                     gallery, completions], api_visibility="private", queue=False)
    return demo


def example_images(folder: str | None, root: Path) -> list[str]:
    """The example images offered beside the upload boxes (sorted file paths)."""
    if not folder:
        return []
    path = Path(folder) if Path(folder).is_absolute() else root / folder
    if not path.is_dir():
        return []
    return sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_TYPES)
