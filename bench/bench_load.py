"""Load benchmark of the app's API through gradio_client: concurrent /classify calls, then two /train calls at once.

    python bench/bench_load.py                                  # launches the app in-process on a free loopback port
    python bench/bench_load.py --clients 8 --photos 25          # the defaults
    python bench/bench_load.py --url http://127.0.0.1:7860/ --run-id RUN_ID --model runs/SESSION/RUN_ID/model.onnx

1. Model: with --run-id, that run; otherwise a tiny model (ResNet-18, weights none, 32 px, 1 epoch on a zip
   of assets/sample) is trained through /train first.
2. Classify: --clients gradio_client sessions, each in its own thread, send --photos calls to /classify one
   after another (photos from assets/examples and assets/sample). Every answer is checked against
   OnnxClassifier(model.onnx).predict computed here; none may be lost or wrong. Prints throughput (calls/s)
   and p50/p95/p99 latency as the client sees it (upload, queue and inference), and the errors (must be 0).
3. Two trainings: two sessions call /train at the same moment (tiny configs, seeds 1 and 2). Training has
   one slot (concurrency_id "training", limit 1): the report says whether the second was seen waiting in
   the queue while the first ran and started only after it finished, whether each got its own run folder
   with its own config, and (in-process only) that neither session lists the other's run.

Traffic goes only to 127.0.0.1; every call has a timeout. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

ASSETS = ROOT / "assets"
CALL_TIMEOUT = 120.0  # seconds for one /classify call, queue included
TRAIN_TIMEOUT = 600.0  # seconds for both trainings together


def tiny_config(seed: int, epochs: int = 1) -> dict:
    """A /train config (the CLI's fields) that trains in seconds on two cores: random init, 32 px."""
    return {"arch": "resnet18", "weights": "none", "strategy": "full", "optimizer": "adamw", "lr": 1e-3,
            "epochs": epochs, "image_size": 32, "batch_size": 8, "augment": "none", "seed": seed}


def photos() -> list[str]:
    """The photos the app ships: its examples and the sample dataset."""
    return sorted(str(p) for folder in ("examples", "sample") for p in (ASSETS / folder).rglob("*.jpg"))


def loopback_only(url: str) -> str:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing {url}: this benchmark only talks to the loopback interface")
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_store():
    """The launched app's run store (this process's)."""
    from ui import session

    return session.STORE


def launch_app():
    """The app, in this process, on a free loopback port: (app module, url)."""
    # Runs go to a temporary folder unless the caller chose one; never into the working tree.
    os.environ.setdefault("TRANSFER_STUDIO_DATA_DIR", tempfile.mkdtemp(prefix="transfer-studio-bench-"))
    import app

    app.demo.queue(default_concurrency_limit=4)  # as app.main() does
    _, url, _ = app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                quiet=True)
    return app, url


def client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


# ---------------------------------------------------------------------------------------------
# Classify under load
# ---------------------------------------------------------------------------------------------


@dataclass
class ClassifyLoad:
    calls: int
    answered: int
    wrong: list[str]
    errors: list[str]
    latencies: list[float]  # seconds per call, as each client saw it
    server_ms: list[float]  # the endpoint's own latency_ms (preprocessing and inference)
    seconds: float

    @property
    def throughput(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]

    def summary(self) -> str:
        return (f"{self.calls} calls, {self.answered} answered, {len(self.wrong)} wrong, {len(self.errors)} errors; "
                f"{self.throughput:.1f} calls/s; latency p50 {self.percentile(50) * 1000:.0f} ms, "
                f"p95 {self.percentile(95) * 1000:.0f} ms, p99 {self.percentile(99) * 1000:.0f} ms; "
                f"server-side mean {statistics.fmean(self.server_ms) if self.server_ms else float('nan'):.1f} ms/photo")


def expected_predictions(model_path: Path, paths: list[str]) -> dict[str, list[tuple[str, float]]]:
    """path -> every (label, probability), most likely first: what /classify must answer for it."""
    from models.runtime import OnnxClassifier

    model = OnnxClassifier(model_path, providers="cpu")
    return dict(zip(paths, model.predict(paths, top_k=len(model.labels))))


def classify_load(url: str, run_id: str, expected: dict[str, list[tuple[str, float]]], clients: int,
                  per_client: int, tolerance: float = 1e-4) -> ClassifyLoad:
    """`clients` sessions at once, each sending `per_client` photos to /classify in turn; every answer checked."""
    from gradio_client import handle_file

    paths = sorted(expected)
    top_k = len(next(iter(expected.values())))
    sessions = [client(url) for _ in range(clients)]
    # One call first: the server loads the model on its first request, which is not what is measured.
    sessions[0].submit(handle_file(paths[0]), run_id, top_k, api_name="/classify").result(timeout=CALL_TIMEOUT)
    start = threading.Barrier(clients)
    lock = threading.Lock()
    load = ClassifyLoad(clients * per_client, 0, [], [], [], [], 0.0)

    def run(index: int) -> None:
        session = sessions[index]
        start.wait()
        for n in range(per_client):
            path = paths[(index * per_client + n) % len(paths)]  # clients start at different photos
            began = time.perf_counter()
            try:
                answer = session.submit(handle_file(path), run_id, top_k, api_name="/classify").result(
                    timeout=CALL_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 -- counted and reported, never lost
                with lock:
                    load.errors.append(f"{Path(path).name}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - began
            got = [(p["label"], p["score"]) for p in answer["predictions"]]
            want = expected[path]
            right = [label for label, _ in got] == [label for label, _ in want] and all(
                abs(a - b) <= tolerance for (_, a), (_, b) in zip(got, want))
            with lock:
                load.answered += 1
                load.latencies.append(elapsed)
                load.server_ms.append(answer["latency_ms"])
                if not right:
                    load.wrong.append(f"{Path(path).name}: got {got}, expected {want}")

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    load.seconds = time.perf_counter() - began
    return load


# ---------------------------------------------------------------------------------------------
# Two trainings at once
# ---------------------------------------------------------------------------------------------


RUNNING = ("PROCESSING", "ITERATING")


@dataclass
class JobTrace:
    """What one /train job's status looked like over time, as its client saw it."""

    session: str
    config: dict
    changes: list[tuple[float, str, int | None]] = field(default_factory=list)  # (seconds, status, queue rank)
    result: dict | None = None
    error: str | None = None

    def first(self, status: str) -> float | None:
        return next((t for t, code, _ in self.changes if code == status), None)

    @property
    def started(self) -> float | None:
        # /train streams its progress: a running job is PROCESSING, then ITERATING from its first update.
        return next((t for t, code, _ in self.changes if code in RUNNING), None)

    @property
    def finished(self) -> float | None:
        return self.first("FINISHED")

    @property
    def ranks(self) -> list[int]:
        return [rank for _, code, rank in self.changes if code == "IN_QUEUE" and rank is not None]


@dataclass
class TwoTrainings:
    jobs: list[JobTrace]
    waited: bool  # the later job was seen IN_QUEUE while the earlier one was PROCESSING
    started_after: bool  # the later job started only once the earlier had finished (within the polling step)
    seconds: float

    def ordered(self) -> tuple[JobTrace, JobTrace]:
        a, b = self.jobs
        return (a, b) if (a.started or 1e9) <= (b.started or 1e9) else (b, a)


def two_trainings(url: str, zip_path: Path, configs: tuple[dict, dict], poll: float = 0.02) -> TwoTrainings:
    """Start /train from two sessions at the same moment and watch both jobs' status until both end."""
    from gradio_client import handle_file

    sessions = [client(url) for _ in configs]
    traces = [JobTrace(s.session_hash, c) for s, c in zip(sessions, configs)]
    both_seen: list[tuple[str, str]] = []  # (status of job 0, status of job 1) at each poll
    began = time.perf_counter()
    jobs = [s.submit(handle_file(str(zip_path)), c, api_name="/train") for s, c in zip(sessions, configs)]
    deadline = began + TRAIN_TIMEOUT
    while not all(job.done() for job in jobs) and time.perf_counter() < deadline:
        now = time.perf_counter() - began
        codes = []
        for job, trace in zip(jobs, traces):
            status = job.status()
            code = "FINISHED" if job.done() else status.code.value
            codes.append(code)
            if not trace.changes or trace.changes[-1][1:] != (code, status.rank):
                trace.changes.append((now, code, status.rank))
        both_seen.append(tuple(codes))
        time.sleep(poll)
    seconds = time.perf_counter() - began
    for job, trace in zip(jobs, traces):
        if trace.finished is None:
            trace.changes.append((seconds, "FINISHED", None))
        try:
            trace.result = job.result(timeout=1)
        except Exception as exc:  # noqa: BLE001 -- reported
            trace.error = f"{type(exc).__name__}: {exc}"
    result = TwoTrainings(traces, False, False, seconds)
    first, second = result.ordered()
    i_first = traces.index(first)
    result.waited = any(codes[i_first] in RUNNING and codes[1 - i_first] == "IN_QUEUE" for codes in both_seen)
    if first.finished is not None and second.started is not None:
        # The two sessions hear "finished" and "started" on separate streams, so allow half a second of
        # skew: overlapping trainings would show the second starting seconds before the first ended.
        result.started_after = second.started >= first.finished - max(2 * poll, 0.5)
    return result


def check_runs(result: TwoTrainings, store=None) -> list[str]:
    """Problems with the two runs: ids, folders, configs, and (given the app's STORE) session listings."""
    problems = []
    traces = result.jobs
    ids = [t.result and t.result.get("run_id") for t in traces]
    for trace in traces:
        if trace.error or not trace.result:
            problems.append(f"session {trace.session[:8]}: /train failed: {trace.error}")
    if None in ids or len(set(ids)) != 2:
        problems.append(f"the two trainings did not get two distinct run ids: {ids}")
        return problems
    if not (result.waited and result.started_after):
        problems.append("the second training did not wait for the first (training has one slot)")
    if store is None:
        return problems
    for trace, run_id in zip(traces, ids):
        folder = store.find(run_id)
        from models.run_folder import RunFolder

        saved = RunFolder(folder).read_config().train
        if saved["seed"] != trace.config["seed"]:
            problems.append(f"run {run_id} saved seed {saved['seed']}, its session asked for {trace.config['seed']}")
        listed = [r.run_id for r in store.runs(trace.session)]
        if listed != [run_id]:
            problems.append(f"session {trace.session[:8]} lists {listed}, expected only its own run {run_id}")
        if folder.parent.name != trace.session:
            problems.append(f"run {run_id} is in {folder.parent.name}'s folder, not its session's")
    return problems


def describe(result: TwoTrainings) -> list[str]:
    first, second = result.ordered()
    lines = [f"two /train calls submitted together; both done in {result.seconds:.1f} s"]
    for name, trace in (("first ", first), ("second", second)):
        run = trace.result.get("run_id") if trace.result else trace.error
        ranks = f", queue ranks seen {sorted(set(trace.ranks))}" if trace.ranks else ""
        started = f"{trace.started:.1f}" if trace.started is not None else "?"
        finished = f"{trace.finished:.1f}" if trace.finished is not None else "?"
        lines.append(f"  {name} (session {trace.session[:8]}, seed {trace.config['seed']}): "
                     f"started {started} s, finished {finished} s{ranks}; run {run}")
    lines.append(f"  second seen waiting in the queue while the first ran: {'yes' if result.waited else 'NO'}; "
                 f"started after the first finished: {'yes' if result.started_after else 'NO'}")
    return lines


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running app (loopback only); default: launch one in this process")
    parser.add_argument("--run-id", help="classify with this run instead of training a tiny one first")
    parser.add_argument("--model", type=Path, help="the run's model.onnx, for the expected answers (needed with --url)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent gradio_client sessions")
    parser.add_argument("--photos", type=int, default=25, help="/classify calls per session")
    parser.add_argument("--skip-trainings", action="store_true", help="skip the two-trainings part")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    app = None
    if args.url:
        if not (args.run_id and args.model):
            parser.error("with --url, give --run-id and --model (that run's model.onnx, for the expected answers)")
        url = loopback_only(args.url)
    else:
        app, url = launch_app()
    print(f"app at {url} ({'in this process' if app else 'external'}); {os.cpu_count()} CPU cores")
    failed = False
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    sample_zip = Path(shutil.make_archive(str(workdir / "sample"), "zip", root_dir=ASSETS / "sample"))

    from gradio_client import handle_file

    run_id = args.run_id
    if run_id is None:
        began = time.perf_counter()
        answer = client(url).submit(handle_file(str(sample_zip)), tiny_config(seed=0), api_name="/train").result(
            timeout=TRAIN_TIMEOUT)
        run_id = answer["run_id"]
        print(f"trained run {run_id} (resnet18, weights none, 32 px, 1 epoch on assets/sample) in "
              f"{time.perf_counter() - began:.1f} s; val accuracy {answer['metrics']['val']['accuracy']:.2f}")
    from models.runtime import resolve_model

    model = args.model or resolve_model(run_store().find(run_id))

    paths = photos()
    load = classify_load(url, run_id, expected_predictions(model, paths), args.clients, args.photos)
    print(f"classify: {args.clients} clients x {args.photos} photos ({len(paths)} distinct), model {run_id}")
    print(f"  {load.summary()}")
    for problem in (load.wrong + load.errors)[:10]:
        print(f"  ! {problem}")
    if load.errors or load.wrong or load.answered != load.calls:
        failed = True

    if not args.skip_trainings:
        result = two_trainings(url, sample_zip, (tiny_config(seed=1), tiny_config(seed=2)))
        print("\n".join(describe(result)))
        problems = check_runs(result, run_store() if app else None)
        if app:
            print("  each run has its own folder and config (seeds 1 and 2); each session lists only its own run: "
                  + ("yes" if not problems else "NO"))
        for problem in problems:
            print(f"  ! {problem}")
        failed = failed or bool(problems)

    if app:
        app.demo.close()
    print("FAILED" if failed else "all checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
