"""What optuna-dashboard shows: per-trial artifacts and AMP attributes, the study note and custom plots.

:func:`record_trial` runs at the end of each successful trial (the trial is still running, so
artifacts can be attached); :func:`annotate_study` after the search. Both fail soft: inspection
never fails a trial or a search (it logs a warning instead), and optuna-dashboard, plotly and
matplotlib are optional (``pip install 'aq-search[dashboard]'``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from .._errors import InvalidInputError
from .._side_effects import record_side_effect_error
from ._records import AMP_FILE, AMP_SENSITIVITY_TOP, AmpSummary, StudySummary, summarize_study

if TYPE_CHECKING:
    from ..search import AutoQuantResult
    from ..search._pipeline import PipelineRun

__all__ = [
    "ARTIFACTS_DIR",
    "DashboardServer",
    "amp_user_attrs",
    "annotate_study",
    "artifact_store",
    "dashboard_storage",
    "make_dashboard_server",
    "record_trial",
    "study_note",
]

logger = logging.getLogger(__name__)

#: Folder (under ``results_dir``) of the file-system artifact store.
ARTIFACTS_DIR = "artifacts"
#: where a search with a custom ``artifact_store=`` notes it, for :func:`make_dashboard_server`
ARTIFACT_STORE_FILE = "artifact_store.json"
#: ids of the custom plots saved to the study (saving again replaces them).
PLOT_IDS = ("aq-accuracy-vs-bops", "aq-best-trial-stages", "aq-orderings")

_warned: set[str] = set()


def _once(key: str, message: str, *args: Any) -> None:
    """Log a missing optional dependency once per process (info level: it is a choice, not a fault)."""
    if key not in _warned:
        _warned.add(key)
        logger.info(message, *args)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def artifact_store(results_dir: str | os.PathLike[str], *, create: bool = True) -> Any:
    """The file-system artifact store of a results folder (``results_dir/artifacts``)."""
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(results_dir) / ARTIFACTS_DIR
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(path)


# -- per trial ---------------------------------------------------------------------------------------------


def record_trial(
    trial: optuna.Trial,
    run: PipelineRun,
    results_dir: str | os.PathLike[str],
    *,
    fp32_accuracy: float,
    target_accuracy: float,
    store: Any = None,
) -> None:
    """Attach what the dashboard shows to a finished-but-still-running trial; never raises (a failure is
    logged and listed in the trial's ``side_effect_errors`` user attribute).

    * user attributes ``amp_*`` (relative BOPs, accuracy, groups lowered, most sensitive moves,
      ``amp_path``) when the trial ran AMP, and its :class:`AmpSummary` as ``trial_NNNN/amp.json``;
    * artifacts: the trial's encodings JSON, ``stages.png`` (per-stage waterfall) and, with AMP,
      ``amp_pareto.png``, ``amp_sensitivity.png`` and ``amp.json``, uploaded to ``store`` (an Optuna
      artifact store; default: ``results_dir/artifacts``).
    """
    try:
        _record_trial(trial, run, Path(results_dir), fp32_accuracy, target_accuracy, store)
    except Exception as err:  # inspection must never fail a trial: logged and recorded on it (side_effect_errors)
        logger.debug("recording trial %d failed", trial.number, exc_info=True)
        record_side_effect_error(trial, "recording it for the dashboard (charts, artifacts, note)", err)


def amp_user_attrs(amp: AmpSummary) -> dict[str, Any]:
    """The ``amp_*`` user attributes of a trial that ran AMP (besides ``amp_path``).

    * ``amp_relative_bops``: the chosen configuration's BOPs relative to all-W8A8, 4 decimals;
    * ``amp_accuracy``: its accuracy; ``amp_groups``: the number of quantizer groups;
    * ``amp_lowered``: how many groups AMP lowered below their highest candidate (0 or more);
    * ``amp_most_sensitive``: the (up to) three most sensitive moves, ``"group\u2192candidate (sensitivity)"``
      joined by ``", "``. It is ``""`` when AMP measured no sensitivity, so lowered nothing: when every
      group at its highest candidate already misses the target (AMP returns that configuration), or
      when no group has a cheaper candidate. An empty value is a result, not a missing record.
    """
    return {
        "amp_relative_bops": round(amp.relative_bops, 4),
        "amp_accuracy": amp.accuracy,
        "amp_groups": amp.n_groups,
        "amp_lowered": sum(1 for _ in amp.lowered_groups),
        "amp_most_sensitive": ", ".join(f"{e.group}\u2192{e.candidate} ({e.sensitivity:.3g})" for e in amp.most_sensitive(3)),
    }


def _record_trial(
    trial: optuna.Trial, run: PipelineRun, results_dir: Path, fp32: float, target: float, store: Any = None
) -> None:
    from ..search._objective import trial_folder

    folder = trial_folder(results_dir, trial.number)
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    encodings = trial.user_attrs.get("encodings_path")
    if encodings and Path(encodings).is_file():
        files.append(Path(encodings))
    amp: AmpSummary | None = None
    if run.amp_result is not None:
        amp = AmpSummary.from_result(run.amp_result)
        path = folder / AMP_FILE
        path.write_text(json.dumps(amp.to_dict(), indent=1), encoding="utf-8")
        files.append(path)
        trial.set_user_attr("amp_path", str(path))
        for key, value in amp_user_attrs(amp).items():
            trial.set_user_attr(key, value)
    if _has("matplotlib"):
        from ._plots import figure_png, plot_amp_pareto, plot_amp_sensitivity
        from ._plots_study import waterfall_figure
        from ._records import stage_scores

        stages = stage_scores(str(run.pipeline), [s.to_dict() for s in run.stages])
        charts: list[tuple[str, Any]] = []
        if stages:
            title = f"trial {trial.number}: {run.score:.4f} ({run.applied})"
            charts.append(("stages.png", lambda: waterfall_figure(stages, fp32, target, title=_short(title, 90))))
        if amp is not None:
            charts.append(("amp_pareto.png", lambda: plot_amp_pareto(amp)))
            charts.append(("amp_sensitivity.png", lambda: plot_amp_sensitivity(amp, top=AMP_SENSITIVITY_TOP)))
        for name, make in charts:
            path = folder / name
            path.write_bytes(figure_png(make()))
            files.append(path)
    else:
        _once("matplotlib", "matplotlib is not installed: no per-trial charts (pip install 'aq-search[dashboard]')")
    if _has("optuna_dashboard"):
        import optuna_dashboard

        optuna_dashboard.save_note(trial, _trial_note(run, amp))
    if store is None:
        store = artifact_store(results_dir)
    from optuna.artifacts import upload_artifact

    for path in files:
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)


def _trial_note(run: PipelineRun, amp: AmpSummary | None) -> str:
    """A trial's markdown note: its pipeline and the score after each stage."""
    lines = [
        f"**{run.score:.4f}** with `{run.applied}`",
        "",
        "| # | stage | score | scored on | seconds | note |",
        "|---|---|---|---|---|---|",
    ]
    labels = str(run.pipeline).split(" > ")
    for i, st in enumerate(run.stages):
        label = labels[i] if i < len(labels) else st.stage
        samples = "all samples" if st.num_samples is None else f"{st.num_samples} samples"
        score = "not evaluated" if math.isnan(st.score) else f"{st.score:.4f}"  # lazy stage scoring (search/_screen.py)
        lines.append(
            f"| {i + 1} | `{label}` | {score} | {samples} | {st.seconds:.2f} | {_short(st.note.replace('|', '/'), 120)} |"
        )
    if run.completed_early:
        lines += ["", f"Met the target after stage {len(run.stages)}; the rest of `{run.pipeline}` was not needed."]
    if amp is not None:
        lines += ["", f"AMP: {amp.message}"]
    lines += ["", "Charts and encodings: **Artifacts** below."]
    return "\n".join(lines)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# -- the study ---------------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def study_note(study_or_result: optuna.Study | AutoQuantResult, results_dir: str | os.PathLike[str] | None = None) -> str:
    """The study's markdown note: goal, best result, what won, what it cost, by ordering."""
    s = summarize_study(study_or_result)
    folder = results_dir or s.results_dir
    return _note(s, folder)


def _note(s: StudySummary, folder: Any) -> str:
    b = s.best
    bw = f"W{s.param_bw}A{s.output_bw}" if s.param_bw is not None else "n/a"
    verdict = (
        f"**Target met** by trial {s.target_met_by if s.target_met_by is not None else b.number if b else '?'}"
        if s.target_met
        else "**Target not met**: the best trial is returned"
    )
    lines = [
        f"# aq-search: {s.study_name}",
        "",
        verdict + ".",
        "",
        "| | |",
        "|---|---|",
        f"| FP32 accuracy | {_fmt(s.fp32_accuracy)} |",
        f"| Target (FP32 - allowed drop {_fmt(s.allowed_accuracy_drop)}) | {_fmt(s.target_accuracy)} |",
        f"| Best accuracy | {_fmt(b.value) if b else 'n/a'}{f' (trial {b.number})' if b else ''} |",
        f"| Best pipeline | `{b.applied}` |" if b else "| Best pipeline | none completed |",
        f"| Best stage | {b.best_stage_label or 'n/a'} |" if b else "| Best stage | n/a |",
        f"| BOPs vs requested {bw} | {_fmt(b.relative_bops_requested, '.3f') if b else 'n/a'}"
        f"{'' if not b or b.within_budget else ' (over budget)'} |",
        f"| BOPs vs all-W8A8 | {_fmt(b.relative_bops, '.3f') if b else 'n/a'} |",
        f"| Default bit-widths | {bw} |",
        f"| Trials | {len(s.trials)}: {s.count('COMPLETE')} complete, {s.count('PRUNED')} pruned, {s.count('FAIL')} failed |",
        f"| Eval calls | {s.n_eval_calls} (FP32 included) |",
        "",
    ]
    if b is not None and b.stages:
        lines += ["## What won", "", "| # | stage | score | samples | seconds | note |", "|---|---|---|---|---|---|"]
        for st in b.stages:
            note = st.note.replace("|", "/")
            lines.append(
                f"| {st.index + 1} | `{st.label}` | {st.score:.4f} | {'all' if st.num_samples is None else st.num_samples} "
                f"| {st.seconds:.1f} | {_short(note, 120)} |"
            )
        lines.append("")
    groups = s.by_ordering()
    if groups:
        lines += ["## By technique ordering", "", "| ordering | trials | best score | pruned | failed |", "|---|---|---|---|---|"]
        for name, ts in groups.items():
            values = [t.value for t in ts if t.value is not None]
            lines.append(
                f"| `{name}` | {len(ts)} | {_fmt(max(values)) if values else 'n/a'} | "
                f"{sum(t.state == 'PRUNED' for t in ts)} | {sum(t.state == 'FAIL' for t in ts)} |"
            )
        lines.append("")
    if folder:
        lines += [
            f"Report: `{Path(folder) / 'report.html'}`; best model, encodings and pipeline: `{Path(folder) / 'best'}`.",
            "Each complete trial has its encodings and charts under **Artifacts** on its trial page.",
        ]
    return "\n".join(lines)


def annotate_study(study_or_result: optuna.Study | AutoQuantResult, results_dir: str | os.PathLike[str] | None = None) -> bool:
    """Save the study note and the custom plots (accuracy vs BOPs, best trial's stages, orderings); never raises.

    Returns:
        Whether the note was saved (False when optuna-dashboard is not installed or saving failed).
    """
    try:
        import optuna_dashboard
    except ImportError:
        _once(
            "optuna_dashboard",
            "optuna-dashboard is not installed: no study note or custom plots (pip install 'aq-search[dashboard]')",
        )
        return False
    try:
        s = summarize_study(study_or_result)
        study = study_or_result if isinstance(study_or_result, optuna.Study) else study_or_result.study
        optuna_dashboard.save_note(study, _note(s, results_dir or s.results_dir))
    except Exception as err:  # inspection must never fail the search
        logger.warning("could not save the study note for the dashboard: %s: %s", type(err).__name__, err)
        logger.debug("saving the note failed", exc_info=True)
        return False
    if not _has("plotly"):
        _once("plotly", "plotly is not installed: no custom plots on the dashboard (pip install 'aq-search[dashboard]')")
        return True
    from ._plots import plot_accuracy_vs_bops, plot_orderings, plot_stage_waterfall

    makers = {
        "aq-accuracy-vs-bops": lambda: plot_accuracy_vs_bops(s, backend="plotly"),
        "aq-best-trial-stages": lambda: plot_stage_waterfall(
            s, backend="plotly", title=f"best trial {s.best.number}: score after each stage" if s.best else None
        ),
        "aq-orderings": lambda: plot_orderings(s, backend="plotly"),
    }
    for graph_id, make in makers.items():
        try:
            if graph_id == "aq-best-trial-stages" and (s.best is None or not s.best.stages):
                continue
            optuna_dashboard.save_plotly_graph_object(study, make(), graph_object_id=graph_id)
        except Exception as err:  # inspection must never fail the search
            logger.warning("could not save plot %s for the dashboard: %s: %s", graph_id, type(err).__name__, err)
            logger.debug("saving plot %s failed", graph_id, exc_info=True)
    return True


def record_artifact_store(results_dir: str | os.PathLike[str], store: Any) -> None:
    """Note a custom artifact store in ``results_dir/artifact_store.json`` (a file-system store by its
    folder; another kind by its type), so the dashboard of that folder shows its artifacts."""
    base = getattr(store, "_base_path", None)
    note = {"type": type(store).__name__, "path": str(Path(base).resolve()) if base is not None else None}
    path = Path(results_dir) / ARTIFACT_STORE_FILE
    if not path.is_file() or json.loads(path.read_text(encoding="utf-8")) != note:
        path.write_text(json.dumps(note), encoding="utf-8")


def _dashboard_store(results_dir: str | os.PathLike[str], given: Any) -> Any:
    """The artifact store to serve: the one given, the custom one the search noted, else ``results_dir/artifacts``."""
    if given is not None:
        return given
    noted = Path(results_dir) / ARTIFACT_STORE_FILE
    if noted.is_file():
        try:
            note = json.loads(noted.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            note = {}
        if isinstance(note, dict) and note.get("path") and Path(str(note["path"])).is_dir():
            from optuna.artifacts import FileSystemArtifactStore

            return FileSystemArtifactStore(str(note["path"]))
        logger.warning(
            "the search in %s wrote its artifacts to a %s; pass that store as make_dashboard_server(artifact_store=...) "
            "to see them in the dashboard",
            results_dir,
            note.get("type", "custom store") if isinstance(note, dict) else "custom store",
        )
    return artifact_store(results_dir, create=False) if (Path(results_dir) / ARTIFACTS_DIR).is_dir() else None


# -- serving -----------------------------------------------------------------------------------------------


def dashboard_storage(results_dir: str | os.PathLike[str], storage: str | None = None) -> str:
    """The storage of the study in ``results_dir``: ``storage`` if given, ``study.db`` there, or the summary's.

    Raises:
        InvalidInputError: nothing in ``results_dir`` names a study storage.
    """
    if storage:
        return storage
    folder = Path(results_dir)
    db = folder / "study.db"
    if db.is_file():
        return f"sqlite:///{db.resolve()}"
    summary = folder / "best" / "summary.json"
    if summary.is_file():
        try:
            recorded = str(json.loads(summary.read_text(encoding="utf-8")).get("storage", ""))
        except (OSError, ValueError):
            recorded = ""
        if ("://" in recorded and "***" not in recorded) or recorded.endswith(".log"):
            return recorded
        if recorded:
            raise InvalidInputError(
                f"{summary} names the storage {recorded!r}, which cannot be opened as is (a hidden password?); "
                "pass it with --storage URL."
            )
    raise InvalidInputError(
        f"no study found in {folder}: it has no study.db and no best/summary.json naming a storage. "
        "Pass the folder given to AutoQuant(results_dir=...), or --storage URL."
    )


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("dashboard: " + format, *args)


class DashboardServer:
    """optuna-dashboard on a study and its artifact folder, served by a threading WSGI server.

    ``url`` is where to point a browser; :meth:`serve_forever` blocks (stop it with :meth:`shutdown`
    from another thread, or Ctrl-C).
    """

    def __init__(self, server: WSGIServer, storage: str) -> None:
        self._server = server
        self.storage = storage
        host, port = server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        shown = host if ":" not in host else f"[{host}]"
        self.host = host
        self.port = int(port)
        self.url = f"http://{shown}:{port}/dashboard/"

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def shutdown(self) -> None:
        self._server.shutdown()


def make_dashboard_server(
    results_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    storage: str | None = None,
    artifact_store: Any = None,
) -> DashboardServer:
    """Bind optuna-dashboard for the study in ``results_dir`` (``port=0`` picks a free port).

    Its artifacts come from ``artifact_store`` when given; else from the file-system store that a search
    with ``AutoQuant(artifact_store=...)`` noted in ``results_dir/artifact_store.json``; else from
    ``results_dir/artifacts``.

    Raises:
        ImportError: optuna-dashboard is not installed.
        InvalidInputError: no study storage in ``results_dir``.
        OSError: the address cannot be bound (port in use).
    """
    try:
        import optuna_dashboard
    except ImportError as err:
        raise ImportError("The dashboard needs optuna-dashboard: pip install 'aq-search[dashboard]'.") from err
    url = dashboard_storage(results_dir, storage)
    app = optuna_dashboard.wsgi(url, artifact_store=_dashboard_store(results_dir, artifact_store))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(_ThreadingServer):
        address_family = family

    server = make_server(host, port, app, server_class=Server, handler_class=_QuietHandler)
    return DashboardServer(server, url)
