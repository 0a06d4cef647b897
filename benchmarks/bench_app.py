"""Load test of the app: N concurrent gradio_client clients against ``python -m app`` on loopback, for a bounded time.

For each ``--clients`` count it starts a fresh server on 127.0.0.1 (one torch thread, sign-in on, its
Gradio cache and temporary files in a private folder, ``--keep-files`` minutes of file lifetime),
warms it up with the largest requests, then lets N clients (each its own ``gradio_client.Client``,
signed in, one request at a time) send a random mix for ``--seconds`` (or until ``--requests`` in
all): generate (1-16 images), reconstruct and complete (an upload each), and bad uploads (text, an
empty file, a truncated PNG, a 1 x 1 image) that must get a message. Requests in flight at the end
are waited for. Then one fresh client must still be served.

Reported: requests served, bad uploads answered with a message, refused (queue full: the message
the client saw), failed (anything else: should be 0), latency p50 / p95 / max per endpoint (client
side, from the call to its result, uploads and downloads included), the server's RSS after warm-up
and at the end, the size of its Gradio cache (peak and end; the oldest file against the
``delete_cache`` bound: every ``keep/2`` s, files older than ``keep`` s are removed) and of its
other temporary files, and whether it still answered afterwards.

    python benchmarks/bench_app.py --clients 8 32 --seconds 300                 # the shipped faces; docs/benchmarks.md
    python benchmarks/bench_app.py --clients 4 --seconds 10 --no-write --app-args "--tokenizer DIR --prior DIR"
    python benchmarks/bench_app.py --clients 6 --seconds 20 --queue-size 2 --no-write   # provoke queue-full refusals

The results are printed and written to ``docs/benchmarks.md`` (``--out``; ``--no-write`` skips it)
as the section ``## App under load``; other sections are kept. ``--json PATH`` saves the raw numbers.
Exits with status 1 when a request failed, a refusal had no clear message or the server stopped answering.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import atexit  # noqa: E402
import datetime as dt  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import secrets  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402

import numpy as np  # noqa: E402

from app.process import AppProcess  # noqa: E402
from doc_section import write_section  # noqa: E402  (benchmarks/ is on the path: this script's folder)

HEADING = "## App under load: `bench_app.py`"
KINDS = ("generate", "reconstruct", "complete", "bad upload")
WEIGHTS = (4, 3, 2, 1)
# what the app answers to each kind of bad upload (app/handlers.py, stage2_prior/inputs.py): a user-facing message
BAD_UPLOAD_MESSAGES = ("not an image", "empty", "damaged or truncated", "only 1 x 1 pixels")
REFUSAL_MESSAGE = "Queue is full"
MUST_SHOW = ("no failed request; every refusal a clear message; the server's RSS at the end within 1.2x of its "
             "value after warm-up; no cached file older than the delete_cache bound (frequency + age, files cached "
             "at start such as the examples excepted); a fresh request served afterwards")
FOUND = ("Gradio's own delete_cache sweep stopped for good under steady uploads (it iterates live sets: \"Set "
         "changed size during iteration\"), so the cache grew without bound: app.render.sweep_cache now runs "
         "beside it; the server's RSS crept up 20-28% in five minutes (memory freed by requests kept in glibc's "
         "per-thread heaps): every request now ends with malloc_trim (app.handlers.release_freed_memory)")
USER = "bench"


# ---------------------------------------------------------------------------- the server
def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of a process (Linux /proc), MiB: ``rss`` in all, ``anon`` (heap: what requests could
    leak) and ``file`` (pages of the libraries and weights mapped from disk, paged in as code paths are first used)."""
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    try:
        with open(f"/proc/{pid}/status") as f:
            return {keys[k]: int(v[0]) / 1024 for k, *v in (line.split() for line in f) if k in keys}
    except OSError:
        return {}


def folder_stats(folder: Path, exempt: set[Path] = frozenset()) -> tuple[int, int, float]:
    """(bytes, files, age in s of the oldest file not in ``exempt``) under ``folder``."""
    size = count = 0
    oldest = now = time.time()
    for path in folder.rglob("*"):
        try:
            st = path.lstat()
        except FileNotFoundError:  # deleted while we walk
            continue
        if path.is_file():
            size, count = size + st.st_size, count + 1
            if path not in exempt:
                oldest = min(oldest, st.st_ctime)
    return size, count, now - oldest


class Server(AppProcess):
    """``python -m app`` on 127.0.0.1 (app.process.AppProcess) with a private cache and temporary folder and
    random credentials."""

    def __init__(self, work: Path, app_args: list[str], threads: int, keep_minutes: int):
        self.cache, self.tmp = work / "gradio_cache", work / "tmp"
        self.cache.mkdir()
        self.tmp.mkdir()
        self.password = secrets.token_urlsafe(12)
        self.keep_s = keep_minutes * 60
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "GRADIO_TEMP_DIR": str(self.cache),
               "TMPDIR": str(self.tmp), "EDVAE_APP_AUTH": f"{USER}:{self.password}", "EDVAE_APP_AUTH_FILE": None}
        super().__init__(["--host", "127.0.0.1", "--keep-files", str(keep_minutes), *app_args], work / "server.log",
                         env=env, timeout=600)

    @property
    def auth(self) -> tuple[str, str]:
        return USER, self.password

    def memory(self) -> dict[str, float]:
        return memory_mib(self.proc.pid)

    def rss(self) -> float | None:
        return self.memory().get("rss")


# ---------------------------------------------------------------------------- the clients
def random_picture(rng: random.Random, folder: Path) -> str:
    """A smooth random RGB picture of 48-256 pixels, a new file each time (so uploads are not deduplicated)."""
    from PIL import Image

    side = rng.randint(48, 256)
    cells = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, size=(side // 16 + 1, side // 16 + 1, 3))
    img = Image.fromarray(cells.astype(np.uint8)).resize((side, side), Image.BILINEAR)
    path = folder / f"up_{rng.randrange(16**8):08x}.png"
    img.save(path)
    return str(path)


def bad_upload(rng: random.Random, folder: Path) -> str:
    from PIL import Image

    choice = rng.randrange(4)
    path = folder / f"bad_{rng.randrange(16**8):08x}.png"
    if choice == 0:
        path.write_bytes(b"this is text, not a picture")
    elif choice == 1:
        path.write_bytes(b"")
    elif choice == 2:
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), (10, 200, 30)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue()[:60])
    else:
        Image.new("RGB", (1, 1)).save(path)
    return str(path)


class Load:
    """Shared counters of one run (thread-safe)."""

    def __init__(self, requests: int, deadline: float):
        self.lock = threading.Lock()
        self.requests, self.deadline = requests, deadline
        self.started = 0
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.images = 0
        self.refusals: Counter = Counter()
        self.bad_messages: Counter = Counter()   # the kind of message (BAD_UPLOAD_MESSAGES) -> count
        self.bad_examples: dict[str, str] = {}   # one full message of each kind
        self.failures: list[str] = []

    def take(self) -> bool:
        """May one more request start? (bounded by time and by count)"""
        with self.lock:
            if time.monotonic() >= self.deadline or self.started >= self.requests:
                return False
            self.started += 1
            return True


def one_request(client, kind: str, rng: random.Random, folder: Path, model: str, rows: int, max_images: int):
    """Send one request of ``kind``; returns the number of images it produced."""
    from gradio_client import handle_file

    if kind == "generate":
        gallery, _, _ = client.predict(model, rng.randint(1, max_images), seed=rng.randrange(2**31 - 1),
                                       api_name="/generate")
        return len(gallery)
    if kind == "reconstruct":
        client.predict(model, handle_file(random_picture(rng, folder)), api_name="/reconstruct")
        return 0
    if kind == "complete":
        n = rng.randint(1, max(1, max_images // 2))
        _, gallery, _ = client.predict(model, handle_file(random_picture(rng, folder)), rng.randint(0, rows - 1), n,
                                       rng.randrange(2**31 - 1), api_name="/complete")
        return len(gallery)
    endpoint = rng.choice(["/reconstruct", "/complete"])
    args = (model, handle_file(bad_upload(rng, folder))) + ((1, 1, 0) if endpoint == "/complete" else ())
    client.predict(*args, api_name=endpoint)
    raise AssertionError("a bad upload was accepted")


def client_loop(index: int, server: Server, load: Load, work: Path, info: dict, seed: int) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    rng = random.Random(seed * 1000 + index)
    folder = work / f"client_{index:02d}"
    folder.mkdir()
    try:
        client = Client(server.url, auth=server.auth, verbose=False, download_files=str(folder / "downloads"))
    except Exception as err:  # noqa: BLE001 - counted, reported
        with load.lock:
            load.failures.append(f"client {index} could not connect: {type(err).__name__}: {err}")
        return
    while load.take():
        kind = rng.choices(KINDS, WEIGHTS)[0]
        tic = time.perf_counter()
        try:
            images = one_request(client, kind, rng, folder, info["model"], info["rows"], info["max_images"])
            with load.lock:
                load.latency[kind].append(time.perf_counter() - tic)
                load.images += images
        except QueueError as err:
            with load.lock:
                load.refusals[str(err)] += 1
            time.sleep(rng.uniform(0.5, 2.0))  # as a polite user would: wait, then try again
        except AppError as err:
            message = str(err)
            with load.lock:
                known = next((m for m in BAD_UPLOAD_MESSAGES if m in message), None)
                if kind == "bad upload" and known:
                    load.latency[kind].append(time.perf_counter() - tic)
                    load.bad_messages[known] += 1
                    load.bad_examples.setdefault(known, message)
                else:
                    load.failures.append(f"{kind}: AppError: {message}")
        except Exception as err:  # noqa: BLE001 - a failure, counted and reported
            with load.lock:
                load.failures.append(f"{kind}: {type(err).__name__}: {err}")
        finally:
            shutil.rmtree(folder / "downloads", ignore_errors=True)  # keep the client side small
    client.close()


def endpoint_info(client) -> dict:
    """The default model and its number of token rows, read from the API."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    defaults = {e: {p["parameter_name"]: p.get("parameter_default") for p in api[e]["parameters"]}
                for e in ("/generate", "/complete")}
    return {"model": defaults["/generate"]["model"], "rows": 2 * int(defaults["/complete"]["keep_rows"]) or 2}


# ---------------------------------------------------------------------------- one run
def run(clients: int, args: argparse.Namespace) -> dict:
    from gradio_client import Client, handle_file
    from gradio_client.utils import QueueError

    work = Path(tempfile.mkdtemp(prefix="bench_app_"))
    server = Server(work, args.app_args, args.threads, args.keep_files)
    try:
        warm = work / "warmup"
        warm.mkdir()
        client = Client(server.url, auth=server.auth, verbose=False, download_files=str(warm / "downloads"))
        info = {**endpoint_info(client), "max_images": args.max_images}
        examples = {p for p in server.cache.rglob("*") if p.is_file()}  # cached at start, kept by design
        rng = random.Random(0)
        for _ in range(args.warmup):  # the largest requests, all at once as under load: memory reaches its working size
            calls = [((info["model"], args.max_images), "/generate"),
                     ((info["model"], handle_file(random_picture(rng, warm)), 0, args.max_images, 1), "/complete"),
                     ((info["model"], handle_file(random_picture(rng, warm))), "/reconstruct"),
                     ((info["model"], handle_file(random_picture(rng, warm))), "/reconstruct")]
            jobs = [client.submit(*call, api_name=name) for call, name in calls]
            for job, (call, name) in zip(jobs, calls):
                while True:
                    try:
                        job.result(timeout=600)
                        break
                    except QueueError:  # a queue smaller than the warm-up: that one again, after the others
                        time.sleep(1)
                        job = client.submit(*call, api_name=name)
        client.close()
        time.sleep(2)
        memory_start = server.memory()
        rss_start = memory_start.get("rss")
        cache_peak, timeline = [0], []
        stop_watch = threading.Event()
        t0 = time.monotonic()

        def watch() -> None:  # the cache size and the server's memory every 5 s: their peaks and course
            while not stop_watch.wait(5):
                cache_peak[0] = max(cache_peak[0], folder_stats(server.cache)[0])
                timeline.append({"t": round(time.monotonic() - t0, 1), **server.memory()})

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        load_avg = os.getloadavg() if hasattr(os, "getloadavg") else None
        tic = time.monotonic()
        load = Load(args.requests, tic + args.seconds)
        threads = [threading.Thread(target=client_loop, args=(i, server, load, work, info, args.seed))
                   for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - tic
        # afterwards: a fresh client must still be served
        tic_fresh = time.perf_counter()
        try:
            fresh = Client(server.url, auth=server.auth, verbose=False, download_files=str(warm / "downloads"))
            gallery, _, _ = fresh.predict(info["model"], 1, seed=7, api_name="/generate")
            answered = len(gallery) == 1
            fresh.close()
        except Exception as err:  # noqa: BLE001 - reported
            answered = False
            load.failures.append(f"fresh request afterwards: {type(err).__name__}: {err}")
        fresh_s = time.perf_counter() - tic_fresh
        stop_watch.set()
        watcher.join()
        memory_end = server.memory()
        rss_end = memory_end.get("rss")
        rss_peak = max([m.get("rss", 0.0) for m in timeline] + [rss_end or 0.0])
        half = [m["rss"] for m in timeline if "rss" in m and m["t"] <= elapsed / 2]
        cache_bytes, cache_files, cache_oldest = folder_stats(server.cache, examples)
        cache_peak[0] = max(cache_peak[0], cache_bytes)
        tmp_bytes, tmp_files, _ = folder_stats(server.tmp)
        served = sum(len(v) for k, v in load.latency.items() if k != "bad upload")
        result = {
            "clients": clients, "seconds": args.seconds, "elapsed_s": elapsed, "requests_started": load.started,
            "served": served, "images": load.images, "bad_uploads_answered": len(load.latency["bad upload"]),
            "bad_upload_messages": dict(load.bad_messages), "bad_upload_examples": load.bad_examples,
            "refused": sum(load.refusals.values()),
            "refusal_messages": dict(load.refusals), "failed": len(load.failures), "failures": load.failures[:20],
            "latency_s": {k: summary(load.latency[k]) for k in KINDS},
            "rss_start_mib": rss_start, "rss_end_mib": rss_end, "rss_peak_mib": rss_peak,
            "rss_half_mib": half[-1] if half else None, "memory_start_mib": memory_start, "memory_end_mib": memory_end,
            "memory_timeline_mib": timeline,
            "example_files": len(examples),
            "cache_end_bytes": cache_bytes, "cache_files": cache_files, "cache_peak_bytes": cache_peak[0],
            "cache_oldest_s": cache_oldest, "cache_bound_s": server.keep_s + server.keep_s // 2,
            "tmp_end_bytes": tmp_bytes, "tmp_files": tmp_files,
            "answered_afterwards": answered, "fresh_request_s": fresh_s, "model": info["model"],
            "load_average_at_start": load_avg, "server_command": shlex.join(["python", *server.command[1:]]),
        }
        if verdict(result):  # what the server said, for the diagnosis
            result["server_log_tail"] = server.log.read_text(errors="replace")[-4000:]
            print(result["server_log_tail"], file=sys.stderr)
        return result
    except BaseException:
        print(server.log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    p50, p95 = np.percentile(values, [50, 95])
    return {"n": len(values), "p50": float(p50), "p95": float(p95), "max": float(max(values))}


def verdict(r: dict) -> list[str]:
    """What a run must show; each problem in one line (empty: all met)."""
    problems = []
    if r["failed"]:
        problems.append(f"{r['failed']} request(s) failed: {r['failures'][:3]}")
    unclear = [m for m in r["refusal_messages"] if REFUSAL_MESSAGE not in m]
    if unclear:
        problems.append(f"refusals without a clear message: {unclear}")
    if not r["answered_afterwards"]:
        problems.append("the server did not answer a fresh request afterwards")
    if r["rss_start_mib"] and r["rss_end_mib"] and r["rss_end_mib"] > 1.2 * r["rss_start_mib"]:
        problems.append(f"server RSS grew {r['rss_end_mib'] / r['rss_start_mib']:.2f}x (limit 1.2x)")
    if r["cache_files"] and r["cache_oldest_s"] > r["cache_bound_s"] + 30 and r["elapsed_s"] > r["cache_bound_s"]:
        problems.append(f"a cached file is {r['cache_oldest_s']:.0f} s old, past the delete_cache bound")
    return problems


# ---------------------------------------------------------------------------- report
def mib(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.0f} KiB"


def ratio(r: dict) -> str:
    return f"{r['rss_end_mib'] / r['rss_start_mib']:.3f}x" if r["rss_start_mib"] and r["rss_end_mib"] else "n/a"


def tables(results: list[dict]) -> str:
    lines = ["| clients | load for | served | images | bad uploads answered | refused (queue full) | failed | "
             "server RSS end / warm-up | Gradio cache at end (peak) | oldest cached file (bound) | other temp files | "
             "fresh request afterwards |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(
            f"| {r['clients']} | {r['seconds']} s (+{r['elapsed_s'] - r['seconds']:.0f} s to finish) | {r['served']} | "
            f"{r['images']} | {r['bad_uploads_answered']} | {r['refused']} | {r['failed']} | {ratio(r)} | "
            f"{mib(r['cache_end_bytes'])} in {r['cache_files']} files ({mib(r['cache_peak_bytes'])}) | "
            f"{r['cache_oldest_s']:.0f} s ({r['cache_bound_s']} s) | {mib(r['tmp_end_bytes'])} | "
            f"{'yes' if r['answered_afterwards'] else 'NO'} ({r['fresh_request_s']:.1f} s) |")
    lines += ["", "Server memory (MiB; anon = heap and other private memory, file = library and weight pages "
              "mapped from disk):", "",
              "| clients | RSS after warm-up | halfway | at end | peak | end / warm-up | anon: warm-up -> end | "
              "file: warm-up -> end |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        a, b = r["memory_start_mib"], r["memory_end_mib"]
        half = f"{r['rss_half_mib']:,.0f}" if r.get("rss_half_mib") else "n/a"
        lines.append(f"| {r['clients']} | {r['rss_start_mib']:,.0f} | {half} | {r['rss_end_mib']:,.0f} | "
                     f"{r['rss_peak_mib']:,.0f} | {ratio(r)} | {a.get('anon', 0):,.0f} -> {b.get('anon', 0):,.0f} | "
                     f"{a.get('file', 0):,.0f} -> {b.get('file', 0):,.0f} |")
    lines += ["", "Latency per endpoint, client side (seconds; queue wait, upload and download included):", "",
              "| clients | endpoint | requests | p50 | p95 | max |", "|---:|---|---:|---:|---:|---:|"]
    for r in results:
        for kind in KINDS:
            s = r["latency_s"][kind]
            cells = f"{s['p50']:.2f} | {s['p95']:.2f} | {s['max']:.2f}" if s["n"] else "- | - | -"
            lines.append(f"| {r['clients']} | {kind} | {s['n']} | {cells} |")
    messages = Counter()
    for r in results:
        messages.update(r["refusal_messages"])
    bad, examples = Counter(), {}
    for r in results:
        bad.update(r["bad_upload_messages"])
        examples.update(r["bad_upload_examples"])
    lines += ["", "Refusals as the client saw them: " + ("; ".join(f"\"{m}\" x {n}" for m, n in messages.items())
                                                          or "none (the queue never filled: each client waits "
                                                          "for its answer; --queue-size provokes refusals, as "
                                                          "tests/test_bench_app.py does with a queue of one)") + ".",
              "",
              "Bad uploads were answered with messages (one example of each kind, with its count): "
              + "; ".join(f"\"{examples[m]}\" x {n}" for m, n in sorted(bad.items())) + ".", ""]
    for r in results:
        problems = verdict(r)
        lines.append(f"- {r['clients']} clients: " + ("; ".join(problems) if problems else
                                                       "no failed request, every refusal a clear message, RSS within "
                                                       "1.2x, cache within its bound, still answering afterwards"))
    return "\n".join(lines)


def section(results: list[dict], args: argparse.Namespace, notes: str) -> str:
    import torch

    first = results[0]
    return "\n".join([
        HEADING, "",
        f"- date: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        f"- server: `{first['server_command']}` (model `{first['model']}`), {args.threads} torch thread(s), sign-in on",
        "- load average at the start of each run (1/5/15 min): " + "; ".join(
            f"{r['clients']} clients: " + (" / ".join(f"{x:.2f}" for x in r["load_average_at_start"])
                                           if r["load_average_at_start"] else "n/a") for r in results),
        f"- mix: generate (1-{args.max_images} images), reconstruct, complete (1-{max(1, args.max_images // 2)}), "
        f"bad uploads, weights {'/'.join(map(str, WEIGHTS))}; each client one request at a time, "
        f"{args.warmup} warm-up round(s) of the largest requests before the RSS baseline",
        f"- command: `{shlex.join(['python', 'benchmarks/bench_app.py', *sys.argv[1:]])}`",
        *([f"- notes: {notes}"] if notes else []),
        f"- must show (checked, the last lines below): {MUST_SHOW}",
        f"- found by this benchmark and fixed in the app: {FOUND}",
        "", tables(results), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[8], help="concurrent clients; several: one run each")
    p.add_argument("--seconds", type=int, default=60, help="how long the clients send requests (then in-flight "
                   "requests are waited for)")
    p.add_argument("--requests", type=int, default=1_000_000, help="stop earlier after this many requests in all")
    p.add_argument("--app-args", type=shlex.split, default=[], help="more flags for python -m app (e.g. "
                   "\"--tokenizer DIR --prior DIR\")")
    p.add_argument("--queue-size", type=int, default=None,
                   help="run the server with this queue size (a copy of configs/app.yaml, or of --config in "
                   "--app-args, with limits.queue_size changed)")
    p.add_argument("--max-images", type=int, default=16, help="largest generate request (default 16, the app's limit)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server (default 1)")
    p.add_argument("--keep-files", type=int, default=3, help="the server's --keep-files, minutes (default 3: the "
                   "cache is swept every 90 s during the run; it must exceed the longest queue wait, or waiting "
                   "uploads are deleted before their turn)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds before the RSS baseline (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--notes", default="", help="a sentence for the results (e.g. what else ran on the machine)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--json", type=Path, default=None, help="also save the raw results here")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still stop the server (finally in run())
    if args.queue_size is not None:
        args.app_args = with_queue_size(args.app_args, args.queue_size)
    results = []
    for n in args.clients:
        print(f"{n} clients for {args.seconds} s ...", flush=True)
        results.append(run(n, args))
        print(tables(results[-1:]), flush=True)
    text = section(results, args, args.notes)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not args.no_write:
        write_section(args.out, HEADING, text)
        print(f"written to {args.out}")
    problems = [f"{r['clients']} clients: {x}" for r in results for x in verdict(r)]
    for line in problems:
        print("PROBLEM:", line, file=sys.stderr)
    return 1 if problems else 0


def with_queue_size(app_args: list[str], size: int) -> list[str]:
    """App flags pointing --config at a copy of the registry with ``limits.queue_size = size``."""
    import yaml

    args = list(app_args)
    source = ROOT / "configs" / "app.yaml"
    if "--config" in args:
        i = args.index("--config")
        source = Path(args.pop(i + 1))
        args.pop(i)
    registry = yaml.safe_load(source.read_text())
    registry.setdefault("limits", {})["queue_size"] = size
    folder = tempfile.mkdtemp(prefix="bench_app_config_")
    atexit.register(shutil.rmtree, folder, True)
    copy = Path(folder) / "app.yaml"
    copy.write_text(yaml.safe_dump(registry))
    return [*args, "--config", str(copy)]


if __name__ == "__main__":
    sys.exit(main())
