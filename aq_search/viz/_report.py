"""``results_dir/report.html``: one self-contained page (PNG plots inlined, no scripts, opens offline).

Like AIMET's AutoQuant diagnostics (a score per stage), plus the whole search: every trial with how
it ended, the plots, and the settings used.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import yaml

from .._errors import InvalidInputError
from ._records import AMP_SENSITIVITY_TOP, StudySummary, TrialSummary, summarize_study

if TYPE_CHECKING:
    from ..search import AutoQuantResult

__all__ = ["REPORT_FILE", "render_report", "write_report"]

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666;margin-top:0}
.verdict{padding:.8em 1em;border-radius:6px;margin:1em 0;font-size:1.05em}
.met{background:#e8f5e9;border:1px solid #66bb6a} .missed{background:#fff3e0;border:1px solid #ffa726}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#fff8e1;font-weight:600} tr.PRUNED td{color:#666} tr.FAIL td{color:#b71c1c}
code{background:#f5f5f5;padding:0 .25em;border-radius:3px;font-size:.92em}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em;border-radius:4px}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#555;font-size:.9em}
.ok{color:#2e7d32} .no{color:#c62828} .muted{color:#888}
.grid{display:flex;flex-wrap:wrap;gap:1em} .grid figure{flex:1 1 520px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: float | None, spec: str = ".4f") -> str:
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _results_dir(study_or_result: Any, results_dir: str | os.PathLike[str] | None, s: StudySummary) -> Path:
    if results_dir is not None:
        return Path(results_dir)
    folder = getattr(study_or_result, "results_dir", None) or s.results_dir
    if not folder:
        raise InvalidInputError("write_report needs results_dir: the study records none.")
    return Path(folder)


def _png(make: Callable[[], Any], what: str, problems: list[str]) -> str | None:
    """A figure as a base64 PNG, or None (and a line in ``problems``) when it cannot be drawn."""
    try:
        from ._plots import figure_png

        return base64.b64encode(figure_png(make())).decode("ascii")
    except ImportError:
        problems.append(f"{what}: matplotlib is not installed (pip install 'aq-search[dashboard]')")
    except InvalidInputError as err:
        problems.append(f"{what}: {err}")
    except Exception as err:  # a plot must not cost the report
        logger.warning("report: could not draw %s: %s: %s", what, type(err).__name__, err)
        logger.debug("drawing %s failed", what, exc_info=True)
        problems.append(f"{what}: {type(err).__name__}: {err}")
    return None


def _recorded_png(folder: Path, name: str, anchor: str) -> str | None:
    """A chart the trial recorded itself (``folder/name``, see :func:`~aq_search.viz.record_trial`) as base64,
    or None. Only a file written no earlier than the trial's ``anchor`` file (its ``amp.json`` or
    ``encodings.json``, written just before the charts) counts: an older one is left over from another study
    in the same folder. Reusing it saves drawing the same figure twice."""
    png = folder / name
    try:
        if png.stat().st_mtime_ns >= (folder / anchor).stat().st_mtime_ns:
            return base64.b64encode(png.read_bytes()).decode("ascii")
    except OSError:
        pass
    return None


def _figure(data: str | None, fig_id: str, caption: str) -> str:
    if data is None:
        return ""
    return (
        f'<figure id="{fig_id}"><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _verdict(s: StudySummary, message: str) -> str:
    cls = "met" if s.target_met else "missed"
    head = "Target met" if s.target_met else "Target not met"
    b = s.best
    body = (
        f"<b>{head}.</b> Best: <b>{_num(b.value)}</b> (trial {b.number}) vs FP32 {_num(s.fp32_accuracy)}, "
        f"target {_num(s.target_accuracy)}."
        if b
        else f"<b>{head}.</b> No trial completed."
    )
    if message:
        body += f"<br><span class='muted'>{_e(message)}</span>"
    return f'<div class="verdict {cls}">{body}</div>'


def _overview(s: StudySummary) -> str:
    b = s.best
    wall = sum(t.wall_seconds or 0.0 for t in s.trials)
    rows = [
        ("FP32 accuracy", _num(s.fp32_accuracy)),
        ("Allowed drop / target", f"{_num(s.allowed_accuracy_drop)} / {_num(s.target_accuracy)}"),
        ("Best accuracy", f"{_num(b.value)} (trial {b.number})" if b else "none"),
        ("Drop from FP32", _num(s.fp32_accuracy - b.value) if b and b.value is not None else ""),
        ("Best pipeline", f"<code>{_e(b.applied)}</code>" if b else ""),
        ("Best stage", _e(b.best_stage_label) if b else ""),
        (
            "BOPs vs requested",
            (_num(b.relative_bops_requested, ".3f") + ("" if b.within_budget else " (over budget)")) if b else "",
        ),
        ("BOPs vs all-W8A8", _num(b.relative_bops, ".4f") if b else ""),
        (
            "Trials",
            f"{len(s.trials)}: {s.count('COMPLETE')} complete, {s.count('PRUNED')} pruned, {s.count('FAIL')} failed",
        ),
        ("Eval calls", f"{s.n_eval_calls} (FP32 included)"),
        ("Eval-equivalents", _num(sum(t.eval_equivalents or 0.0 for t in s.trials), ".2f") + " (trials; FP32 not included)"),
        ("Trial time", f"{wall:.1f} s (sum over trials)"),
    ]
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _stage_table(s: StudySummary, t: TrialSummary) -> str:
    head = (
        "<tr><th>#</th><th>stage</th><th>score</th><th>change</th><th>vs FP32</th><th>meets target</th>"
        "<th>scored on</th><th>seconds</th><th>eval calls</th><th>note</th></tr>"
    )
    rows = []
    prev = s.fp32_accuracy
    rows.append(
        f"<tr><td></td><td>FP32</td><td class='num'>{_num(s.fp32_accuracy)}</td><td></td><td></td><td></td>"
        "<td>all samples</td><td></td><td class='num'>1</td><td></td></tr>"
    )
    for st in t.stages:
        met = math.isfinite(s.target_accuracy) and st.score >= s.target_accuracy
        change = st.score - prev if math.isfinite(prev) else math.nan
        rows.append(
            f"<tr><td>{st.index + 1}</td><td><code>{_e(st.label)}</code></td><td class='num'>{_num(st.score)}</td>"
            f"<td class='num {'ok' if change >= 0 else 'no'}'>{_num(change, '+.4f')}</td>"
            f"<td class='num'>{_num(st.score - s.fp32_accuracy, '+.4f')}</td>"
            f"<td class='{'ok' if met else 'no'}'>{'yes' if met else 'no'}</td>"
            f"<td>{'all samples' if st.num_samples is None else f'{st.num_samples} samples'}</td>"
            f"<td class='num'>{st.seconds:.2f}</td><td class='num'>{st.eval_calls}</td><td>{_e(st.note)}</td></tr>"
        )
        prev = st.score
    return f"<table>{head}{''.join(rows)}</table>"


def _trial_table(s: StudySummary) -> str:
    head = (
        "<tr><th>#</th><th>state</th><th>score</th><th>BOPs</th><th>pipeline</th><th>how it ended</th>"
        "<th>eval calls</th><th>seconds</th></tr>"
    )
    rows = []
    for t in s.trials:
        best = s.best is not None and t.number == s.best.number
        cls = f"{t.state}{' best' if best else ''}"
        if t.value is not None:
            score = _num(t.value)
        elif t.last_score is not None:
            score = f"<span class='muted'>{_num(t.last_score)}</span>"
        else:
            score = ""
        pipeline = f"<code>{_e(t.applied)}</code>" if t.applied else ""
        if t.applied and t.pipeline and t.applied != t.pipeline:
            pipeline += f"<br><span class='muted'>planned: {_e(t.pipeline)}</span>"
        ended = _e(t.outcome)
        if t.reference_recipe:
            ended += " <span class='muted'>(AIMET recipe)</span>"
        if t.redraw_of is not None:
            ended += f" <span class='muted'>(AdaRound redraw of trial {t.redraw_of})</span>"
        if best:
            ended += " <b>(best)</b>"
        rows.append(
            f"<tr class='{cls}' id='trial-{t.number}'><td>{t.number}</td><td>{t.state}</td><td class='num'>{score}</td>"
            f"<td class='num'>{_num(t.relative_bops, '.3f')}</td><td>{pipeline}</td><td>{ended}</td>"
            f"<td class='num'>{t.eval_calls}</td><td class='num'>{_num(t.wall_seconds, '.1f')}</td></tr>"
        )
    return f"<table id='trials'>{head}{''.join(rows)}</table>"


def _ordering_table(s: StudySummary) -> str:
    groups = s.by_ordering()
    if not groups:
        return ""
    rows = []
    for name, ts in groups.items():
        values = [t.value for t in ts if t.value is not None]
        rows.append(
            f"<tr><td><code>{_e(name)}</code></td><td class='num'>{len(ts)}</td>"
            f"<td class='num'>{_num(max(values)) if values else ''}</td>"
            f"<td class='num'>{sum(t.state == 'PRUNED' for t in ts)}</td>"
            f"<td class='num'>{sum(t.state == 'FAIL' for t in ts)}</td></tr>"
        )
    return (
        "<table><tr><th>ordering</th><th>trials</th><th>best score</th><th>pruned</th><th>failed</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _amp_section(s: StudySummary, problems: list[str]) -> str:
    from ._plots import plot_amp_pareto, plot_amp_sensitivity

    t = s.amp_trial()
    if t is None:
        return ""
    amp = t.load_amp()
    if amp is None or t.amp_path is None:
        return f"<h2>Mixed precision</h2><p>Trial {t.number} ran AMP; its details ({_e(t.amp_path)}) are not on this machine.</p>"
    amp_json = Path(t.amp_path)
    lowered = {m.split("=", 1)[0] for m in amp.lowered_groups}
    config = "".join(
        f"<tr{' class=best' if g in lowered else ''}><td><code>{_e(g)}</code></td><td>{_e(c)}</td></tr>"
        for g, c in amp.group_config.items()
    )
    return (
        f"<h2 id='amp'>Mixed precision (trial {t.number})</h2>"
        f"<p>{_e(amp.message)}</p>"
        + "<div class='grid'>"
        + _figure(
            _recorded_png(amp_json.parent, "amp_sensitivity.png", amp_json.name)
            or _png(lambda: plot_amp_sensitivity(amp, top=AMP_SENSITIVITY_TOP), "AMP sensitivity", problems),
            "amp-sensitivity",
            f"Trial {t.number}: accuracy cost of lowering each layer group alone (phase 1), most sensitive first.",
        )
        + _figure(
            _recorded_png(amp_json.parent, "amp_pareto.png", amp_json.name)
            or _png(lambda: plot_amp_pareto(amp), "AMP Pareto front", problems),
            "amp-pareto",
            f"Trial {t.number}: the AMP accuracy-vs-BOPs front (phase 2) and the config chosen.",
        )
        + "</div>"
        + f"<details><summary>Chosen bit-widths per group ({len(amp.group_config)} groups, {len(lowered)} lowered)</summary>"
        + f"<table><tr><th>group</th><th>candidate</th></tr>{config}</table></details>"
    )


def _settings(s: StudySummary, folder: Path, summary: dict[str, Any]) -> str:
    space = dict(s.search_space)
    rows = [
        ("Study", f"<code>{_e(s.study_name)}</code>"),
        (
            "Storage",
            f"<code>{_e(summary.get('storage', ''))}</code>" if summary.get("storage") else "<span class='muted'>n/a</span>",
        ),
        ("Results folder", f"<code>{_e(folder.resolve())}</code>"),
        ("Default bit-widths", f"W{s.param_bw}A{s.output_bw}" if s.param_bw is not None else ""),
        ("Allowed accuracy drop", _num(s.allowed_accuracy_drop)),
        ("Target", _num(s.target_accuracy)),
        (
            "Search space",
            _e(
                f"{space.get('name', '')} ({len(space.get('orderings', []))} orderings, max_trials {space.get('max_trials', '')})"
            ),
        ),
        ("aq-search", _e(summary.get("aq_search_version", ""))),
    ]
    table = "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    dumped = yaml.safe_dump(space, sort_keys=False) if space else "(not recorded)"
    return table + f"<details><summary>The search space</summary><pre>{_e(dumped)}</pre></details>"


def _files(folder: Path) -> str:
    best = folder / "best"
    names = sorted(p.name for p in best.iterdir()) if best.is_dir() else []
    items = "".join(f"<li><code>{_e(best / n)}</code></li>" for n in names)
    return (
        f"<ul>{items}<li><code>{_e(folder / 'trials')}</code>: encodings and charts of every complete trial</li>"
        f"<li><code>{_e(folder / 'artifacts')}</code>: the same, as optuna-dashboard artifacts "
        f"(<code>aq-search dashboard {_e(folder)}</code>)</li></ul>"
    )


def render_report(study_or_result: optuna.Study | AutoQuantResult, results_dir: str | os.PathLike[str] | None = None) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    s = summarize_study(study_or_result)
    return _render(study_or_result, s, _results_dir(study_or_result, results_dir, s))


def _render(study_or_result: Any, s: StudySummary, folder: Path) -> str:
    from ..search._objective import TRIAL_ENCODINGS, trial_folder
    from ._plots import plot_accuracy_vs_bops, plot_optimization_history, plot_orderings, plot_stage_waterfall

    summary: dict[str, Any] = {}
    summary_path = folder / "best" / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = {}
    message = str(getattr(study_or_result, "message", "") or summary.get("message", ""))
    problems: list[str] = []
    b = s.best
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>aq-search report: {_e(s.study_name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>aq-search report: {_e(s.study_name)}</h1>",
        f"<p class='sub'>{_e(folder.resolve())} &middot; written {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}</p>",
        _verdict(s, message),
        _overview(s),
    ]
    if b is not None:
        parts += [
            f"<h2 id='best'>Stages of the best pipeline (trial {b.number})</h2>",
            f"<p><code>{_e(b.applied)}</code></p>",
            _stage_table(s, b) if b.stages else "<p>The trial recorded no stage scores.</p>",
        ]
        if b.stages:
            parts.append(
                _figure(
                    _recorded_png(trial_folder(folder, b.number), "stages.png", TRIAL_ENCODINGS)
                    or _png(lambda: plot_stage_waterfall(s, b.number), "best trial stages", problems),
                    "best-trial-stages",
                    f"Trial {b.number}: the score after each stage, from FP32 (green up, red down; hatched: scored on a subset).",
                )
            )
    parts += [
        "<h2 id='search'>The search</h2><div class='grid'>",
        _figure(
            _png(lambda: plot_optimization_history(s), "optimization history", problems),
            "optimization-history",
            "Every trial's score; pruned trials at the score of the stage they were pruned after.",
        ),
        _figure(
            _png(lambda: plot_accuracy_vs_bops(s), "accuracy vs BOPs", problems),
            "accuracy-vs-bops",
            "Score vs BOPs relative to all-W8A8, with the Pareto front of the complete trials.",
        ),
        _figure(
            _png(lambda: plot_orderings(s), "orderings", problems),
            "orderings",
            "Every trial's score by technique ordering.",
        ),
        "</div>",
        _ordering_table(s),
        _amp_section(s, problems),
        f"<h2 id='all-trials'>All trials ({len(s.trials)})</h2>",
        _trial_table(s),
        "<h2 id='settings'>Settings</h2>",
        _settings(s, folder, summary),
        "<h2 id='files'>Files</h2>",
        _files(folder),
    ]
    if problems:
        parts.append("<h2>Not shown</h2><ul>" + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def write_report(
    study_or_result: optuna.Study | AutoQuantResult,
    results_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``results_dir/report.html``: one self-contained page on the search (opens offline).

    It shows whether the target was met, the stages of the best pipeline with their scores (a table
    and a waterfall), the optimization history, score vs BOPs with the Pareto front, scores by
    technique ordering, AMP sensitivity per layer group (when a trial ran AMP), every trial with how
    it ended (pruned at which stage, the error of a failed one), and the settings used. Plots are
    PNGs inlined as base64 (matplotlib; without it the page has the tables only).

    Args:
        study_or_result: an :class:`~aq_search.AutoQuantResult` or an aq-search study (e.g.
            ``optuna.load_study(study_name=..., storage="sqlite:///aq_results/study.db")``).
        results_dir: where to write (default: the result's / the study's results folder).

    Returns:
        The path of the report.
    """
    s = summarize_study(study_or_result)
    folder = _results_dir(study_or_result, results_dir, s)
    text = _render(study_or_result, s, folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
