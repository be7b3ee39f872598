"""The storage benchmark (issue 8): storage overhead per trial, and trials per minute with 1 vs 2 workers.

Side by side in one run, for SQLite, PostgreSQL (a throwaway cluster started here, or ``--postgres
URL``) and a JournalStorage file:

* **overhead per trial (ms)**: the same aq-search study (a tiny MLP, unreachable target, fixed
  seed, so every storage runs the same trials) on each storage, with every call into the storage
  timed (the outermost call, on the trial's thread: the sampler's and pruner's reads, the per-stage
  reports and user attributes, creating and finishing the trial; the heartbeat thread is not counted,
  it does not hold a trial up). Optuna's in-memory storage is the baseline.
* **trials per minute**: the digits CNN at W4A8 with a quick space (short AdaRound, unreachable
  target), run as real ``aq-search`` processes (``OMP_NUM_THREADS=1`` each) for ``--seconds``:
  ``aq-search run`` alone, then ``aq-search run`` + ``aq-search worker`` on one study. Counted from
  the first trial's start to the last trial's end (process start-up excluded).

    flock /tmp/aq_cpu.lock python benchmarks/bench_storage.py [--trials 40] [--seconds 45] [--postgres URL]

This file is also the task the worker processes run (``benchmarks/bench_storage.py:build_task``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def quick_space(max_trials: int) -> dict[str, Any]:
    from aq_search.search import load_search_space

    space = load_search_space("default").to_dict()
    space.update(
        {
            "orderings": ["scheme>bnf>cle>adaround", "bnf>cle>scheme", "bnf>scheme", "bnf>cle>scheme>bc"],
            "max_trials": max_trials,
            "n_startup_trials": 4,
        }
    )
    space["adaround"].update({"num_iterations": 60, "num_batches": 2})
    return space


def build_task() -> dict[str, Any]:
    """The trials-per-minute task: the digits case at W4A8 per-tensor, quick space, never at the target.

    Some trials score above FP32 on this small test split, so the target could be met and the
    study stop early; the FP32 model's score is offset by +1 instead (the eval callback sees no
    fake quantizer in it), so no trial meets the target and every run searches for its whole window.
    """
    from torch import nn

    from aq_search import FakeQuantizer
    from aq_search.examples.digits import digits_case

    case = digits_case(os.environ["AQ_BENCH_CACHE"])

    def eval_callback(model: nn.Module, num_samples: int | None = None) -> float:
        fp32 = not any(isinstance(m, FakeQuantizer) for m in model.modules())
        return case.eval_callback(model, num_samples) + (1.0 if fp32 else 0.0)

    kwargs = {"param_bw": 4, "output_bw": 8, "per_channel": False, "search_space": quick_space(10_000), "seed": 0}
    return {**case.as_kwargs(), "eval_callback": eval_callback, **kwargs}


# -- storage overhead per trial -----------------------------------------------------------------------------


def _tiny_case() -> dict[str, Any]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(64, 16)
    with torch.no_grad():
        ref = model(x)

    def eval_callback(m: nn.Module, num_samples: int | None = None) -> float:
        with torch.no_grad():
            return -float((m(x) - ref).pow(2).mean())  # FP32 scores 0; a quantized model never does

    return {"model": model, "dummy_input": x[:1], "data_loader": [x[:32], x[32:]], "eval_callback": eval_callback}


def _time_calls(storage: Any) -> dict[str, float]:
    """Patch ``storage``'s public methods to add up their time (outermost calls on the main thread)."""
    import threading
    import time

    import optuna

    totals = {"seconds": 0.0, "calls": 0.0}
    local = threading.local()

    def wrap(fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(local, "depth", 0)
            local.depth = depth + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                local.depth = depth
                if depth == 0 and threading.current_thread() is threading.main_thread():
                    totals["seconds"] += time.perf_counter() - start
                    totals["calls"] += 1

        return timed

    for name in dir(optuna.storages.BaseStorage):
        if not name.startswith("_") and callable(getattr(storage, name, None)):
            setattr(storage, name, wrap(getattr(storage, name)))
    return totals


def overhead_run(storage: Any, n_trials: int, workdir: Path) -> tuple[float, float, float]:
    """(storage ms, storage calls, wall ms) per trial of the same tiny study on ``storage``."""
    import time

    from aq_search import AutoQuant
    from aq_search.search import make_storage

    backend = make_storage(storage)  # what AutoQuant builds from a URL or path (heartbeats on RDB)
    totals = _time_calls(backend)

    space = quick_space(n_trials)
    space.update({"orderings": ["bnf>scheme", "bnf>cle>scheme", "scheme>bnf", "bnf>cle>scheme>bc"], "replay_reference": False})
    space["pruner"] = {"type": "none"}
    aq = AutoQuant(**_tiny_case(), param_bw=4, output_bw=8, results_dir=workdir, search_space=space, storage=backend, seed=0)
    aq.optimize(allowed_accuracy_drop=0.0, n_trials=1)  # set-up (study, FP32 eval) and a first trial: not counted
    totals.update(seconds=0.0, calls=0.0)
    start = time.perf_counter()
    result = aq.optimize(allowed_accuracy_drop=0.0, n_trials=n_trials)
    wall = time.perf_counter() - start
    assert len(result.study.trials) == n_trials + 1 and not result.target_met, result.message
    return 1000.0 * totals["seconds"] / n_trials, totals["calls"] / n_trials, 1000.0 * wall / n_trials


# -- trials per minute, 1 vs 2 worker processes -------------------------------------------------------------


def throughput(storage: str, workers: int, seconds: float, workdir: Path) -> tuple[int, float]:
    """(finished trials, trials per minute) of ``workers`` processes on one fresh study for ``seconds``."""
    import optuna

    from aq_search.search import make_storage

    task = f"{Path(__file__).resolve()}:build_task"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AQ_BENCH_CACHE": str(workdir.parent / "digits-cache")}
    common = ["--storage", storage, "--study", f"tp{workers}", "--timeout", str(seconds)]
    procs = []
    for i in range(workers):
        cmd = ["run", task, "--allowed-drop", "0"] if i == 0 else ["worker", task, "--wait", "120"]
        log = open(workdir / f"w{workers}-{i}.log", "wb")  # noqa: SIM115 (closed after the process)
        args = [sys.executable, "-m", "aq_search", *cmd, *common, "--results-dir", str(workdir / f"w{workers}-{i}")]
        procs.append((subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log))
    for proc, log in procs:
        proc.wait(timeout=seconds + 600)
        log.close()
    study = optuna.load_study(study_name=f"tp{workers}", storage=make_storage(storage, heartbeat_interval=None))
    done = [t for t in study.trials if t.state.is_finished() and t.datetime_start and t.datetime_complete]
    if not done:
        raise RuntimeError(f"no trial finished; see {workdir}/w{workers}-*.log")
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)  # type: ignore[type-var]
    return len(done), 60.0 * len(done) / span.total_seconds()


@contextlib.contextmanager
def _postgres(url: str | None) -> Iterator[tuple[str | None, str]]:
    if url:
        yield url, "given"
        return
    sys.path.insert(0, str(REPO))
    from tests._postgres import PostgresUnavailable, throwaway_postgres

    try:
        with throwaway_postgres() as started:
            yield started, "throwaway cluster on 127.0.0.1"
    except PostgresUnavailable as err:
        yield None, str(err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40, help="trials of the overhead study (per storage)")
    parser.add_argument("--seconds", type=float, default=45.0, help="how long each throughput run searches")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL to use instead of a throwaway cluster")
    args = parser.parse_args()

    os.environ["TQDM_DISABLE"] = "1"  # no progress bars from the in-process studies
    import optuna
    import torch

    from aq_search.examples.digits import digits_case

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="aq-bench-storage-") as tmp, _postgres(args.postgres) as (pg, pg_note):
        root = Path(tmp)
        digits_case(root / "digits-cache")  # the shipped weights (nothing to train); checks the case loads
        storages: dict[str, Any] = {
            "sqlite": lambda name: f"sqlite:///{root / name}.db",
            "postgresql": (lambda name: pg) if pg else None,
            "journal": lambda name: str(root / f"{name}.log"),
        }
        print(
            f"aq-search storage benchmark: {platform.node()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, optuna {optuna.__version__}"
        )
        print(f"PostgreSQL: {pg_note}")
        memory = overhead_run(optuna.storages.InMemoryStorage(), args.trials, root / "mem")
        rows: list[tuple[str, Any, Any, Any]] = [("in-memory", memory, None, None)]
        for kind, make in storages.items():
            if make is None:
                rows.append((kind, None, None, None))
                continue
            ov = overhead_run(make("overhead"), args.trials, root / f"ov-{kind}")
            one = throughput(make("tp1"), 1, args.seconds, _mk(root / f"tp1-{kind}"))
            two = throughput(make("tp2"), 2, args.seconds, _mk(root / f"tp2-{kind}"))
            rows.append((kind, ov, one, two))
        print(f"\noverhead: {args.trials} trials of a tiny-MLP aq-search study per storage (time inside storage calls)")
        print(f"throughput: digits CNN W4A8, quick space, {args.seconds:.0f} s per run, OMP_NUM_THREADS=1 per process")
        print(
            f"{'storage':11} {'storage ms/trial':>16} {'calls/trial':>11} {'wall ms/trial':>13} "
            f"{'1 worker trials/min':>21} {'2 workers trials/min':>22} {'speed-up':>8}"
        )
        for kind, ov, one, two in rows:
            if ov is None:
                print(f"{kind:11} skipped")
                continue
            line = f"{kind:11} {ov[0]:16.1f} {ov[1]:11.0f} {ov[2]:13.1f}"
            if one is not None and two is not None:
                line += f" {one[1]:14.1f} ({one[0]:3d}) {two[1]:15.1f} ({two[0]:3d}) {two[1] / one[1]:7.2f}x"
            print(line)
        print("(trials counted in parentheses)")


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    main()
