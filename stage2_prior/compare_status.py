"""Where each row of a generation comparison stands: ``python -m stage2_prior.compare ... --status``.

A comparison runs for hours to days, across machines and sessions, from a run folder (``--out``) and a
folder meant for git (``--archive``). This reads both, trains nothing, and answers per row: how far its
tokenizer and prior have trained (finished, or the step of the newest checkpoint a rerun resumes from),
their held-out numbers once finished, the rFID, how many of the sample sets have their FID, and whether a
driver is working on the row right now. ``--snapshot`` writes the same table into ``<archive>/STATUS.md``.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from edvae_common.io import read_json
from stage2_prior.driver import FolderLock


def _last_step(run: Path) -> int | None:
    """The last training step a run logged (``metrics.jsonl``), or None."""
    log = run / "metrics.jsonl"
    if not log.is_file():
        return None
    step = None
    for line in log.read_text().splitlines():
        try:
            step = json.loads(line).get("step", step)
        except json.JSONDecodeError:   # a line cut by a kill: the earlier ones still count
            continue
    return step


def _training(run: Path, archived: Path | None, partial: Path | None, max_steps: int) -> dict:
    """State of one training stage from its run folder, else the archive's finished copy or checkpoint."""
    from edvae_common.runs import list_checkpoints

    for folder, where in ((run, "run folder"), (archived, "archive")):
        if folder is not None and (folder / "metrics.json").is_file():
            metrics = read_json(folder / "metrics.json")
            if metrics.get("step") == max_steps:
                return {"state": "finished", "where": where, "metrics": metrics}
    checkpoints = [(s, "run folder") for s, _ in list_checkpoints(run)]
    if partial is not None:
        checkpoints += [(s, "archive") for s, _ in list_checkpoints(partial)]
    logged = _last_step(run)
    if not checkpoints and logged is None:
        return {"state": "not started"}
    step, where = max(checkpoints) if checkpoints else (None, None)
    return {"state": "training", "checkpoint": step, "checkpoint_where": where, "logged": logged}


def row_status(cmp: Any, quantizer: str, seed: int) -> dict:
    """Everything known about one row, from the run folder and the archive."""
    from stage2_prior.compare_report import NUCLEUS, UNFILTERED

    row, root = cmp.row_name(quantizer, seed), cmp.root
    kept = cmp.archive.folder / row if cmp.archive is not None else None

    def archived(name: str) -> Path | None:
        return kept / name if kept is not None else None

    def first_file(*paths: Path | None) -> Path | None:
        return next((p for p in paths if p is not None and p.is_file()), None)

    status: dict[str, Any] = {
        "row": row, "quantizer": quantizer, "seed": seed,
        "tokenizer": _training(root / "stage1" / row, archived("stage1"), archived("stage1.partial"),
                               cmp.s1.train.max_steps),
        "tokens": (root / "tokens" / row / "manifest.json").is_file(),
        "prior": _training(root / "stage2" / row, archived("stage2"), archived("stage2.partial"),
                           cmp.s2.train.max_steps),
        "driver": FolderLock(root / "rows" / row).held_elsewhere(),
    }
    rfid = first_file(root / "rows" / row / "rfid.json", archived("rows/rfid.json"))
    status["rfid"] = read_json(rfid)["fid"] if rfid else None
    times = first_file(root / "rows" / row / "times.json", archived("rows/times.json"))
    status["wall_s"] = round(sum(read_json(times).values()), 1) if times else 0.0
    sets = [(UNFILTERED, k) for k in cmp.args.sample_seeds[:1]] + [(NUCLEUS, k) for k in cmp.args.sample_seeds]
    fids: dict[str, list[float]] = {UNFILTERED.name: [], NUCLEUS.name: []}
    for setting, k in sets:
        name = f"{setting.name}_seed{k}"
        found = first_file(root / "samples" / row / name / "fid.json", archived(f"samples/{name}/fid.json"))
        if found:
            fids[setting.name].append(read_json(found)["fid"])
    status["fid"] = fids
    status["sample_sets"] = {"measured": sum(len(v) for v in fids.values()), "of": len(sets)}
    status["finished"] = first_file(root / "rows" / row / "results.json", archived("rows/results.json")) is not None
    return status


def rows_to_show(cmp: Any) -> list[tuple[str, int]]:
    """The rows the command names and every other row found in the run folder or the archive (e.g. the second
    training seed's, when the command names only the first), so STATUS.md always shows them all; by training
    seed, then in the registry's quantizer order, whichever command wrote it."""
    from stage1_tokenizer import QUANTIZERS

    named = [(q, seed) for q in cmp.args.quantizers for seed in cmp.args.seeds]
    places = [cmp.root / "rows", cmp.root / "stage1"] + ([cmp.archive.folder] if cmp.archive is not None else [])
    found = set()
    for place in places:
        for folder in (place.iterdir() if place.is_dir() else ()):
            match = re.fullmatch(r"(.+)_seed(\d+)", folder.name)
            row = (match.group(1), int(match.group(2))) if match else None
            # a row folder is one that cmp.row_name (the one naming rule) gives back for its quantizer and seed
            if folder.is_dir() and row and row[0] in QUANTIZERS and cmp.row_name(*row) == folder.name:
                found.add(row)
    order = {q: i for i, q in enumerate(QUANTIZERS)}
    return sorted(set(named) | found, key=lambda r: (r[1], order[r[0]]))


def _training_text(t: dict, max_steps: int) -> str:
    if t["state"] == "finished":
        return f"finished ({max_steps} steps)" + (" in the archive" if t["where"] == "archive" else "")
    if t["state"] == "not started":
        return "not started"
    parts = []
    if t["logged"] is not None:
        parts.append(f"step {t['logged']} of {max_steps}")
    if t["checkpoint"] is not None:
        parts.append(f"checkpoint {t['checkpoint']}" + (" in the archive" if t["checkpoint_where"] == "archive" else ""))
    else:
        parts.append("no checkpoint yet")
    return ", ".join(parts)


def status_markdown(cmp: Any, rows: list[dict]) -> str:
    """The table of every row's state, with the command that resumes the comparison."""
    from stage2_prior.compare_report import NUCLEUS, UNFILTERED

    s1_steps, s2_steps = cmp.s1.train.max_steps, cmp.s2.train.max_steps
    lines = [
        "# Generation comparison: where each row stands", "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `--status` / `--snapshot`, from the run folder "
        f"`{cmp.root}`" + (f" and the archive `{cmp.archive.folder}`" if cmp.archive is not None else "") +
        f". Budgets: tokenizer {s1_steps} steps, prior {s2_steps} steps; a training stage that has not finished "
        "resumes from its newest checkpoint.", "",
        "| row | tokenizer | PSNR (dB) / codes / split perplexity | prior | bits/token | rFID | sample sets with FID | "
        "FID T=1 | FID top-p 0.95 | wall time so far (min) | now |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tok, prior = r["tokenizer"], r["prior"]
        held_out = "-"
        if tok["state"] == "finished":
            m = tok["metrics"]
            held_out = f"{m['psnr']:.2f} / {m['codes_used']} / {m['perplexity_split']:.1f}"
        bits = f"{prior['metrics']['nll_bits_per_token']:.3f}" if prior["state"] == "finished" else "-"
        t1 = ", ".join(f"{v:.1f}" for v in r["fid"][UNFILTERED.name]) or "-"
        p95 = ", ".join(f"{v:.1f}" for v in r["fid"][NUCLEUS.name]) or "-"
        rfid = "-" if r["rfid"] is None else f"{r['rfid']:.1f}"
        now = f"driver pid {r['driver']} working" if r["driver"] else ("finished" if r["finished"] else "waiting")
        lines.append(
            f"| {r['row']} | {_training_text(tok, s1_steps)} | {held_out} | {_training_text(prior, s2_steps)} | {bits} | "
            f"{rfid} | "
            f"{r['sample_sets']['measured']} of {r['sample_sets']['of']} | {t1} | {p95} | {r['wall_s'] / 60:.0f} | {now} |")
    done = sum(r["finished"] for r in rows)
    lines += ["", f"{done} of {len(rows)} rows finished."]
    return "\n".join(lines) + "\n"
