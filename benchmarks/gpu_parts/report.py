"""The GPU check's results as Markdown: results.md, and its section of docs/benchmarks_gpu.md (--to-doc).

One function per part's table; render_markdown puts the header, the parts' status table, their checks and
those tables together. Standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench_stage1 import split_sections, write_atomic


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return out


def _status_cell(row: dict) -> str:
    return {"ok": "", "skipped": f"skipped: {row.get('reason', '')}",
            "failed": f"FAILED: {row.get('error', '')[:200]}"}.get(row.get("status", ""), row.get("status", ""))


def _memory(row: dict) -> str:
    return f"{row['peak_mib']:,.0f} MiB {row['memory']}" if row.get("peak_mib") else "-"


def render_markdown(results: dict) -> str:
    parts = results["parts"]
    lines = header(results) + status_lines(parts)
    for name, section in (("stage1_speed", stage1_speed_lines), ("stage1_cli", stage1_cli_lines),
                          ("stage2", stage2_lines), ("pipeline", pipeline_lines), ("celeba_train", celeba_train_lines)):
        lines += section(parts.get(name, {}))
    return "\n".join(lines) + "\n"


def header(results: dict) -> list[str]:
    env = results["parts"].get("env", {}).get("summary", {})
    return [f"Device: **{env.get('device_name', results['device'])}**; torch {env.get('torch', '?')}, CUDA "
            f"{env.get('cuda') or '-'}, cuDNN {env.get('cudnn') or '-'}, Python {env.get('python', '?')}"
            + (f"; transformers {env['packages'].get('transformers')}, accelerate "
               f"{env['packages'].get('accelerate')}" if env.get("packages") else "") + ".",
            f"Started {results['started']}, {results.get('wall_s', 0):.0f} s of a {results['minutes']:g}-minute "
            f"budget" + (", **--quick: tiny sizes, a dry run; these numbers measure nothing**" if results["quick"]
                        else "") + ".",
            f"Command: `{results['command']}`", ""]


def status_lines(parts: dict) -> list[str]:
    """One row per part (status, seconds, why skipped or the error), then each part's checks and failures."""
    lines = _table(["part", "status", "seconds", "detail"],
                   [[n, p["status"], _f(p.get("seconds")),
                     (p.get("skipped") or (p.get("error") or "").split("\n")[0])[:300]] for n, p in parts.items()])
    for name, part in parts.items():
        failed = [c for c in part.get("checks", []) if not c["ok"]]
        if part.get("checks"):
            lines += ["", f"Checks of {name}:", ""]
            lines += [f"- {'PASS' if c['ok'] else 'FAIL'}: {c['name']} ({(c['detail'] or ' ').splitlines()[0]})"
                      for c in part["checks"]]
        if failed or part.get("error"):
            detail = part.get("traceback") or "\n".join(c["detail"] for c in failed)
            lines += ["", "```", detail.strip()[-2000:], "```"]
    return lines


def stage1_speed_lines(part: dict) -> list[str]:
    rows = part.get("rows", [])
    if not rows:
        return []
    base = {r["config"]: r["images_per_s"] for r in rows if r.get("status") == "ok" and r["variant"] == "fp32"}
    lines = ["", "### Stage 1: one training step (`bench_stage1.train_step`), random images, same seed", ""]
    return lines + _table(["config", "variant", "batch", "images/s", "vs fp32 eager", "ms/step", "peak memory",
                           "first step (s)", "loss step 1", "loss last step", "notes"],
                          [[r["config"], r.get("label", r["variant"]), r["batch"], _f(r.get("images_per_s")),
                            f"{r['images_per_s'] / base[r['config']]:.2f}x" if r.get("status") == "ok"
                            and r["config"] in base else "-", _f(r.get("ms_per_step")), _memory(r),
                            _f(r.get("first_step_s"), 2), _f(r.get("loss_first"), 5), _f(r.get("loss_last"), 5),
                            _status_cell(r)] for r in rows])


def stage1_cli_lines(part: dict) -> list[str]:
    if not part.get("summary"):
        return []
    s = part["summary"]
    lines = ["", "### Stage 1 through the CLI (`accelerate launch stage1_tokenizer/train.py`, CelebA config, "
                 "bf16 + channels-last, synthetic images)", "",
             f"{s['steps']} steps at batch {s['batch']}: SIGKILL of the process group after the step-"
             f"{s['killed_after_step']} checkpoint ({_f(s['first_run_s'])} s after the launch), then "
             f"`--resume latest` to the end in {_f(s['resumed_run_s'])} s; {_f(s.get('images_per_s'))} "
             f"images/s in the resumed run's log (its first window, with the start-up, left out); final "
             f"loss {_f(s.get('final_loss'), 5)}.", ""]
    return lines + [f"- `{c}`" for c in part.get("commands", [])[:1]]


def stage2_lines(part: dict) -> list[str]:
    rows = part.get("rows", [])
    if not rows:
        return []
    fp32 = {r["size"]: r["tokens_per_s"] for r in rows if r["what"] == "train" and r.get("precision") == "fp32"
            and r.get("status") == "ok"}
    table = []
    for r in rows:
        if r["what"] == "train":
            what = f"train, {r['size']}, {r['precision']}, batch {r['batch']} x {r['tokens_per_sequence']} tokens"
            speed = f"{_f(r.get('tokens_per_s'), 0)} tokens/s"
            ratio = (f"{r['tokens_per_s'] / fp32[r['size']]:.2f}x fp32" if r.get("status") == "ok"
                     and r["size"] in fp32 else "")
        elif r["what"] == "sample":
            what = f"sample + decode {r['images']} faces, {r['size']}, KV cache"
            speed, ratio = f"{_f(r.get('images_per_s'), 2)} images/s", ""
        elif r["what"] == "guidance":
            what = (f"guidance 3, {r['size']}, {r['images']} images, "
                    + ("one batched forward" if r["batched"] else "two passes"))
            speed = f"{_f(r.get('images_per_s'), 2)} images/s"
            ratio = (f"{r['speedup_over_two_passes']:.2f}x two passes" if r.get("speedup_over_two_passes")
                     else "")
        else:
            what = f"FID Inception features, batch {r['batch']}" + (
                " (zero-weight timing stand-in)" if "standin" in str(r.get("weights", "")) else "")
            speed, ratio = f"{_f(r.get('images_per_s'), 1)} images/s", ""
        table.append([what, speed, _f(r.get("seconds"), 3), ratio, _memory(r), _status_cell(r)])
    lines = ["", "### Stage 2 (fresh priors: speed does not depend on the weights' values)", ""]
    return lines + _table(["what", "speed", "seconds", "ratio", "peak memory", "notes"], table)


def pipeline_lines(part: dict) -> list[str]:
    rows = part.get("rows", [])
    if not rows:
        return []
    lines = ["", "### The app's pipeline on the shipped pair (checkpoints/celeba64)", ""]
    return lines + _table(["call", "images", "seconds", "images/s", "notes"],
                          [[r["what"], r["images"], _f(r.get("seconds"), 3), _f(r.get("images_per_s"), 2),
                            f"PSNR {r['psnr']:.2f} dB, {r['distinct_codes']} codes" if r["what"] == "reconstruct"
                            else f"first call {_f(r.get('first_call_s'), 2)} s"] for r in rows])


def celeba_train_lines(part: dict) -> list[str]:
    if not part.get("summary"):
        return []
    s, m = part["summary"], part["summary"]["test"]
    lines = ["", "### Paper-width CelebA tokenizer trained with the time left (`stage1_tokenizer/train.py`)", "",
             f"{s['steps']} steps at batch {s['batch']} (schedules compressed with train.schedule_scale), "
             f"{_f(s['seconds'])} s, {_f(s['images_per_s'])} images/s; held-out split ({m.get('n_images')} "
             f"faces): MSE {_f(m.get('mse'), 5)}, PSNR {_f(m.get('psnr'), 2)} dB, perplexity "
             f"{_f(m.get('perplexity_split'))}, {m.get('codes_used')} codes used. Weights in fp16: "
             + ", ".join(f"`{k}` {v:.1f} MB" for k, v in s["files_mb"].items()) + ".", ""]
    return lines + [f"- `{c}`" for c in part.get("commands", [])[:1]]


def write_doc(results_path: Path, doc: Path) -> None:
    """Put the tables of a results.json into the doc, under a heading per device (other sections kept)."""
    results = json.loads(results_path.read_text())
    env = results["parts"].get("env", {}).get("summary", {})
    name = env.get("device_name", results["device"])
    cuda = results["device"].startswith("cuda") and not results["quick"]
    heading = f"## CUDA: {name}" if cuda else f"## Dry run: {name}" + (" (--quick)" if results["quick"] else "")
    section = f"{heading}\n\n{render_markdown(results)}"
    preamble, sections = split_sections(doc.read_text()) if doc.is_file() else ("# GPU check\n\n", [])
    kept = [(h, body) for h, body in sections if h.strip() != heading]
    if cuda:  # the first real measurement replaces the "not yet measured" status
        status = (f"## Status\n\nMeasured on {name} on {results['started'][:10]} (the section below); the dry run "
                  "on CPU stays in `make test` (tests/test_gpu_check.py).\n\n")
        kept = [(h, status if h.strip() == "## Status" else body) for h, body in kept]
    body = "".join(b.rstrip("\n") + "\n\n" for _, b in kept) + section
    write_atomic(doc, preamble.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n")
