"""A generation comparison's archive: the small, final outputs of each row kept in a folder meant for git
(``python -m stage2_prior.compare ... --archive DIR``), and put back from it into a run folder, so that a
comparison that runs for days resumes on a fresh clone and its finished rows can be re-measured."""

from __future__ import annotations

from pathlib import Path

from stage2_prior.compare_report import FIGURE_IMAGES


class Archive:
    """The small, final outputs of finished stages, kept in a folder meant for git, and put back from it.

    Per row: ``stage1/`` (the tokenizer export in fp32, so its codes are exact, with its metrics and config),
    ``stage2/`` (the prior export in fp16, loadable with ``Pipeline.from_pretrained``, and its final metrics),
    ``rows/`` (rfid.json, times.json) and ``samples/<setting>/`` (samples.json, fid.json and the first
    images, for the figure). Tokens, checkpoints and the other samples stay in the run folder (regenerated
    when needed: a restored prior means the tokens are not needed again).
    """

    STAGE1 = ("metrics.json", "metrics.jsonl", "config.yaml", "codebook_usage.png")
    STAGE2 = ("metrics.json", "metrics.jsonl", "config.yaml")

    def __init__(self, folder: Path, root: Path):
        self.folder, self.root = folder, root

    def save(self, row: str, partial: bool = False) -> None:
        """Copy the row's finished outputs (and with ``partial`` the latest checkpoint of each unfinished
        training stage) into the archive."""
        import shutil

        src, dst = self.root, self.folder / row
        if partial:
            self._save_partial(row)
        s1, s2 = src / "stage1" / row, src / "stage2" / row
        if (s1 / "tokenizer").is_dir() and (s1 / "metrics.json").is_file() and not (dst / "stage1").is_dir():
            self._copy(s1, dst / "stage1", self.STAGE1, export="tokenizer")
        if (s2 / "prior").is_dir() and (s2 / "metrics.json").is_file() and not (dst / "stage2").is_dir():
            self._copy(s2, dst / "stage2", self.STAGE2, export="prior", half=True)
        for name in ("rfid.json", "times.json", "results.json"):
            if (src / "rows" / row / name).is_file():
                (dst / "rows").mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / "rows" / row / name, dst / "rows" / name)
        for run in sorted((src / "samples" / row).glob("*/fid.json")):
            keep = dst / "samples" / run.parent.name
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("fid.json", "samples.json"):
                shutil.copy2(run.parent / name, keep / name)
            first = keep / "first.npz"
            if not first.is_file() and (run.parent / "samples.npz").is_file():
                import numpy as np

                with np.load(run.parent / "samples.npz") as f:
                    np.savez_compressed(first, images=f["images"][:FIGURE_IMAGES])

    def restore(self, row: str) -> None:
        import shutil

        src, dst = self.folder / row, self.root
        if not src.is_dir():
            return
        self._restore_partial(row)
        for stage in ("stage1", "stage2"):
            if (src / stage).is_dir() and not (dst / stage / row / "metrics.json").is_file():
                if (dst / stage / row).exists():
                    shutil.rmtree(dst / stage / row)   # an unfinished run of a stage the archive holds finished
                shutil.copytree(src / stage, dst / stage / row)
                print(f"[{row}] {stage} restored from {src / stage}", flush=True)
        for name in ("rfid.json", "times.json"):
            if (src / "rows" / name).is_file() and not (dst / "rows" / row / name).is_file():
                (dst / "rows" / row).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / "rows" / name, dst / "rows" / row / name)
        for kept in sorted((src / "samples").glob("*/fid.json")):
            run = dst / "samples" / row / kept.parent.name
            if not (run / "fid.json").is_file():
                run.mkdir(parents=True, exist_ok=True)
                for f in kept.parent.iterdir():
                    shutil.copy2(f, run / f.name)

    PARTIAL = ("config.yaml", "metrics.jsonl", "tokens.json")   # what a resume reads beside the checkpoint

    def _save_partial(self, row: str) -> None:
        """``<archive>/<row>/<stage>.partial/``: an unfinished stage's newest complete checkpoint and run files."""
        import shutil

        from edvae_common.runs import list_checkpoints

        for stage in ("stage1", "stage2"):
            run, keep = self.root / stage / row, self.folder / row / f"{stage}.partial"
            found = list_checkpoints(run)
            if (run / "metrics.json").is_file() or not found:
                shutil.rmtree(keep, ignore_errors=True)   # finished (kept whole by save) or never started
                continue
            step, checkpoint = found[-1]
            tmp = keep.with_name(keep.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint, tmp / "checkpoints" / checkpoint.name)
            for name in self.PARTIAL:
                if (run / name).is_file():
                    shutil.copy2(run / name, tmp / name)
            shutil.rmtree(keep, ignore_errors=True)
            tmp.rename(keep)
            print(f"[{row}] {stage}: checkpoint of step {step} archived in {keep}", flush=True)

    def _restore_partial(self, row: str) -> None:
        """Put an archived checkpoint back where the stage resumes from it, unless the run folder is further."""
        import shutil

        from edvae_common.runs import list_checkpoints

        for stage in ("stage1", "stage2"):
            keep, run = self.folder / row / f"{stage}.partial", self.root / stage / row
            kept = list_checkpoints(keep)
            if not kept or (run / "metrics.json").is_file() or (self.folder / row / stage).is_dir():
                continue
            have = list_checkpoints(run)
            if have and have[-1][0] >= kept[-1][0]:
                continue
            (run / "checkpoints").mkdir(parents=True, exist_ok=True)
            shutil.copytree(kept[-1][1], run / "checkpoints" / kept[-1][1].name, dirs_exist_ok=True)
            for name in self.PARTIAL:
                if (keep / name).is_file() and not (run / name).is_file():
                    shutil.copy2(keep / name, run / name)
            print(f"[{row}] {stage}: resumes from the archived checkpoint of step {kept[-1][0]}", flush=True)

    @staticmethod
    def _copy(run: Path, out: Path, files: tuple[str, ...], export: str, half: bool = False) -> None:
        import shutil

        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in files:
            if (run / name).is_file():
                shutil.copy2(run / name, tmp / name)
        shutil.copytree(run / export, tmp / export)
        if half:   # fp16 weights: half the size in git; loads back as float32 (Pipeline.from_pretrained, load_prior)
            from safetensors.torch import load_file, save_file

            weights = tmp / export / "model.safetensors"
            tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(weights).items()}
            save_file(tensors, weights, metadata={"format": "pt"})
        tmp.rename(out)
