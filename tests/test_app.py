"""The app over real HTTP: ``python -m app`` in a subprocess, driven with gradio_client as a script would."""

from __future__ import annotations

import io
import json
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.pipeline_helpers import ROOT, AppServer, face_like, make_pair, shipped_pair_present, write_registry

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

STATEMENT = "Measured on 8 held-out test images: AUROC 0.75 against noise (0.5 = chance)."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    tok, prior = make_pair(root / "tiny")
    (prior / "sampling.json").write_text(json.dumps({"top_k": 20, "note": "a test recommendation"}))
    from stage1_tokenizer import write_uncertainty_reference

    write_uncertainty_reference(tok, list(np.linspace(0.0, 1.0, 101)), STATEMENT)
    cond_tok, cond_prior = make_pair(root / "cond", num_classes=3, seed=1)
    registry = write_registry(root / "app.yaml", {
        "tiny": {"title": "Tiny test pair", "tokenizer": str(tok), "prior": str(prior)},
        "cond": {"title": "Conditional", "tokenizer": str(cond_tok), "prior": str(cond_prior)},
        "ghost": {"tokenizer": str(root / "none" / "tokenizer"), "prior": str(root / "none" / "prior"),
                  "missing": "train it first: make pipeline"}}, default="tiny", max_images=16)
    app = AppServer(["--config", str(registry)], root / "server.log")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def gallery_pixels(gallery: list) -> list[np.ndarray]:
    return [pixels(item["image"]) for item in gallery]


def upload(tmp_path: Path, name: str, img: Image.Image | bytes) -> dict:
    path = tmp_path / name
    if isinstance(img, bytes):
        path.write_bytes(img)
    else:
        img.save(path)
    return handle_file(str(path))


def test_serves_three_named_endpoints_on_localhost(server, client):
    assert re.search(r"Running on local URL:\s+http://127\.0\.0\.1:\d+", server.output())
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = {name: [p["parameter_name"] for p in ep["parameters"]] for name, ep in api.items()}
    assert names["/generate"] == ["model", "num_images", "temperature", "top_k", "top_p", "seed", "class_label",
                                  "guidance"]
    assert names["/reconstruct"] == ["model", "image"]
    assert names["/complete"] == ["model", "image", "keep_rows", "num_images", "seed"]
    defaults = {p["parameter_name"]: p.get("parameter_default") for p in api["/generate"]["parameters"]}
    assert defaults["model"] == "tiny" and defaults["top_k"] == 20          # the prior's sampling.json


def test_generate_images_seeds_and_downloads(client):
    gallery, seed, files = client.predict("tiny", 3, api_name="/generate")
    images = gallery_pixels(gallery)
    assert seed == 0 and len(images) == 3 and all(im.shape == (32, 32, 3) for im in images)
    again, _, _ = client.predict("tiny", 3, seed=0, api_name="/generate")
    assert all(np.array_equal(a, b) for a, b in zip(images, gallery_pixels(again)))    # same seed, same images
    archive, codes = sorted(files, key=lambda f: f.endswith(".npz"))
    with zipfile.ZipFile(archive) as z:
        names = sorted(z.namelist())
        assert len(names) == 3 and all(n.endswith(".png") for n in names)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(z.read(names[0]))).convert("RGB")), images[0])
    with np.load(codes) as npz:
        assert npz["codes"].shape == (3, 8, 8) and json.loads(str(npz["settings"]))["top_k"] == 20
    _, fresh, _ = client.predict("tiny", 2, seed=-1, api_name="/generate")         # -1: a fresh seed, reported
    assert isinstance(fresh, (int, float)) and fresh >= 0
    a, _, _ = client.predict("tiny", 2, seed=fresh, api_name="/generate")
    b, _, _ = client.predict("tiny", 2, seed=fresh, api_name="/generate")
    assert all(np.array_equal(x, y) for x, y in zip(gallery_pixels(a), gallery_pixels(b)))


def test_reconstruct_shows_the_model_input_reconstruction_token_map_and_uncertainty(client, tmp_path):
    out = client.predict("tiny", upload(tmp_path, "face.png", Image.fromarray(face_like(48))), api_name="/reconstruct")
    seen, recon, tokens, heat, numbers, text = out
    assert all(pixels(p).shape == (32, 32, 3) for p in (seen, recon, tokens, heat))
    assert set(numbers) >= {"mse", "psnr_db", "distinct_codes", "mean_uncertainty", "percentile_among_training_images"}
    assert 0 <= numbers["percentile_among_training_images"] <= 100 and numbers["reference"] == STATEMENT
    assert "Mean evidential uncertainty" in text and STATEMENT in text


def test_complete_keeps_the_top_and_samples_the_rest(client, tmp_path):
    kept, gallery, seed = client.predict("tiny", upload(tmp_path, "face.png", Image.fromarray(face_like(32))), 2, 3, 7,
                                         api_name="/complete")
    assert pixels(kept).shape == (32, 32, 3) and (pixels(kept)[8:] == 128).all()     # rows 2.. greyed (0.5)
    assert seed == 7 and [im.shape for im in gallery_pixels(gallery)] == [(32, 32, 3)] * 3


def test_class_conditional_model_takes_class_and_guidance(client):
    gallery, _, _ = client.predict("cond", 2, class_label=1, guidance=2.0, api_name="/generate")
    assert len(gallery) == 2
    with pytest.raises(AppError, match="class_label must be between -1 and 2"):
        client.predict("cond", 2, class_label=5, api_name="/generate")
    with pytest.raises(AppError, match="'tiny' is unconditional"):
        client.predict("tiny", 2, class_label=1, api_name="/generate")


def test_bad_inputs_get_a_message_and_the_server_keeps_serving(client, tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(good, format="PNG")
    bad_uploads = {
        "notes.png": (b"this is text, not a picture", "not an image this app can read"),
        "empty.png": (b"", "empty|not an image"),
        "cut.png": (good.getvalue()[:60], "damaged or truncated|not an image"),
        "dot.png": (Image.new("RGB", (1, 1)), "only 1 x 1 pixels"),
    }
    for name, (content, match) in bad_uploads.items():
        with pytest.raises(AppError, match=match):
            client.predict("tiny", upload(tmp_path, name, content), api_name="/reconstruct")
    with pytest.raises(AppError, match="no image given"):
        client.predict("tiny", None, api_name="/reconstruct")
    for n in (0, 17, 2.5):
        with pytest.raises(AppError, match="num_images must be"):
            client.predict("tiny", n, api_name="/generate")
    with pytest.raises(AppError, match="keep_rows must be between 0 and 7"):
        client.predict("tiny", upload(tmp_path, "ok.png", Image.fromarray(face_like(32))), 8, 2, 0,
                       api_name="/complete")
    with pytest.raises(AppError, match="'ghost' is not available: train it first: make pipeline"):
        client.predict("ghost", 2, api_name="/generate")
    with pytest.raises(AppError, match="unknown model 'nope'"):
        client.predict("nope", 2, api_name="/generate")
    # odd but usable files are converted: grayscale, RGBA, palette, 16-bit
    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    odd = {"gray.png": Image.new("L", (40, 40), 90), "rgba.png": Image.new("RGBA", (40, 40), (0, 0, 255, 100)),
           "palette.png": palette, "deep.png": Image.fromarray(np.full((40, 40), 40000, np.uint16))}
    for name, img in odd.items():
        seen = client.predict("tiny", upload(tmp_path, name, img), api_name="/reconstruct")[0]
        assert pixels(seen).shape == (32, 32, 3), name
    gallery, _, _ = client.predict("tiny", 1, api_name="/generate")                   # still serving
    assert len(gallery) == 1


def test_eight_concurrent_generate_calls_all_succeed(server):
    clients = [Client(server.url, verbose=False) for _ in range(2)]
    jobs = [clients[i % 2].submit("tiny", 2, seed=i % 4, api_name="/generate") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: job.result(timeout=600), jobs))
    assert [len(gallery) for gallery, _, _ in results] == [2] * 8
    assert [seed for _, seed, _ in results] == [i % 4 for i in range(8)]
    for i in range(4):                                          # queued and concurrent: still the seed's images
        first, again = gallery_pixels(results[i][0]), gallery_pixels(results[i + 4][0])
        assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_docs_example_runs(server):
    """The gradio_client example of docs/app.md, against this server and its model."""
    text = (ROOT / "docs" / "app.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "http://127.0.0.1:7860/" in code and '"faces"' in code
    code = code.replace("http://127.0.0.1:7860/", server.url).replace('"faces"', '"tiny"')
    code = code.replace("app/examples/face_1_000954.png", str(ROOT / "app" / "examples" / "face_1_000954.png"))
    assert '.png"), 8, 2, 0,' in code
    code = code.replace('.png"), 8, 2, 0,', '.png"), 4, 2, 0,')      # faces have 16 token rows, this pair 8
    namespace: dict = {}
    exec(compile(code, "docs/app.md", "exec"), namespace)


# ---------------------------------------------------------------------------- without a server
def test_default_registry_loads_the_shipped_faces_or_says_how_to_get_them():
    from app.registry import load_app_config, load_models

    config = load_app_config()
    assert config.models["faces"].tokenizer == "checkpoints/celeba64/tokenizer"
    assert config.models["faces"].prior == "checkpoints/celeba64/prior"
    models, default = load_models(config, device="cpu")
    assert not models["churches"].available and "lsun_church" in models["churches"].problem
    if shipped_pair_present():
        assert default == "faces" and models["faces"].available
        assert models["faces"].pipeline.image_size == 64 and models["faces"].pipeline.preprocess == "celeba"
    else:
        assert not models["faces"].available and "checkpoints/celeba64" in models["faces"].problem


def test_registry_and_cli_errors_are_clear(tmp_path):
    from app.__main__ import main
    from app.registry import load_app_config, load_models
    from edvae_common.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  faces:\n    tokeniser: x\n")
    with pytest.raises(ConfigError, match="tokeniser"):
        load_app_config(bad)
    with pytest.raises(ValueError, match="--tokenizer and --prior go together"):
        load_models(load_app_config(), tokenizer=str(tmp_path))
    with pytest.raises(SystemExit):
        main(["--help"])
    # a folder that holds something else: listed with the reason, no crash
    (tmp_path / "junk").mkdir()
    models, _ = load_models(load_app_config(), device="cpu", tokenizer=str(tmp_path / "junk"),
                            prior=str(tmp_path / "junk"))
    assert not models["custom"].available and "could not be loaded" in models["custom"].problem


def test_unexpected_errors_become_a_short_message():
    import gradio as gr

    from app.handlers import user_errors

    def broken(model: str) -> None:
        raise RuntimeError("internal detail")

    with pytest.raises(gr.Error, match="Something went wrong on the server") as info:
        user_errors(broken)("x")
    assert "internal detail" not in str(info.value)
    with pytest.raises(gr.Error, match="&lt;b&gt;"):                    # messages are shown as HTML: escaped
        user_errors(lambda: (_ for _ in ()).throw(ValueError("<b>")))()
