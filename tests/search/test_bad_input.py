"""Bad input gets a clear error naming the problem and the fix (or is accepted when a user would expect it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from aq_search import AutoQuant, CalibrationError, EvalCallbackError, InvalidInputError, QuantSim
from aq_search.search._autoquant import CountingEval

from ._tiny import Tiny

MODEL = nn.Linear(3, 2)


@pytest.mark.parametrize(
    "value",
    [np.float32(0.75), np.float64(0.75), np.array(0.75), np.array([0.75], dtype=np.float32), torch.tensor(0.75), 0.75, 1],
    ids=["np.float32", "np.float64", "0-d ndarray", "1-element ndarray", "0-d tensor", "float", "int"],
)
def test_eval_callback_may_return_numpy_and_0d_arrays(value: Any) -> None:
    assert CountingEval(lambda m, n: value)(MODEL) == pytest.approx(0.75 if value != 1 else 1.0)


@pytest.mark.parametrize("value", [np.bool_(True), np.array([0.5, 0.7]), "0.75", None, float("nan")])
def test_eval_callback_must_return_one_finite_number(value: Any) -> None:
    with pytest.raises(EvalCallbackError, match="eval callback"):
        CountingEval(lambda m, n: value)(MODEL)


def test_num_samples_beyond_the_eval_set_is_a_clear_error() -> None:
    data = list(range(100))

    def strict(model: nn.Module, num_samples: int | None = None) -> float:
        return sum(data[i] for i in range(num_samples or len(data))) / 1e4  # IndexError past 100

    evaluate = CountingEval(strict)
    assert evaluate(MODEL, 50) == pytest.approx(0.1225)
    with pytest.raises(EvalCallbackError, match=r"IndexError.*num_samples=400.*data\[:num_samples\].*intermediate_num_samples"):
        evaluate(MODEL, 400)


def test_a_numpy_score_through_autoquant(tmp_path: Path, aq_seed: int) -> None:
    tiny = Tiny(aq_seed)
    aq = tiny.make(tmp_path)
    aq.eval_callback = lambda m, n=None: np.float32(tiny.eval_callback(m, n))
    _, score = aq.run_inference()
    assert isinstance(score, float) and 0.0 <= score <= 1.0


def test_labelled_batches_for_a_one_input_model_fail_on_the_first_batch(tmp_path: Path, aq_seed: int) -> None:
    tiny = Tiny(aq_seed)
    labelled = [(tiny.x[i : i + 64], tiny.labels[i : i + 64]) for i in range(0, 256, 64)]
    aq = AutoQuant(tiny.model, tiny.x[:1], labelled, tiny.eval_callback, results_dir=tmp_path / "a", seed=0)
    fix = r"forward_fn=lambda model, batch: model\(batch\[0\]\).*\[x for x, _ in loader\]"
    what = r"tuple of 2 items \(Tensor\[64, 8\], Tensor\[64\]\).*takes 1 positional input.*"
    with pytest.raises(InvalidInputError, match=what + fix):
        aq.run_inference()
    # the fix the message names works
    ok = AutoQuant(tiny.model, tiny.x[:1], labelled, tiny.eval_callback, results_dir=tmp_path / "b", seed=0,
                   forward_fn=lambda model, batch: model(batch[0]))  # fmt: skip
    assert ok.run_inference()[1] > 0.5
    # QuantSim directly: the first batch fails, with the same message
    seen: list[int] = []

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, b in enumerate(labelled):
            seen.append(i)
            yield b

    sim = QuantSim(tiny.model, tiny.x[:1])
    with pytest.raises(InvalidInputError, match=fix):
        sim.compute_encodings(batches())
    assert seen == [0]


def test_a_generator_data_loader_is_read_once_and_kept(tmp_path: Path, aq_seed: int) -> None:
    """AutoQuant reads a generator once, at its first use, and keeps the batches: every later stage reuses them."""
    tiny = Tiny(aq_seed)
    aq = AutoQuant(tiny.model, tiny.x[:1], (tiny.x[i : i + 64] for i in range(0, 256, 64)), tiny.eval_callback,
                   results_dir=tmp_path / "a", seed=0)  # fmt: skip
    first, again = aq.run_inference()[1], aq.run_inference()[1]
    assert first == again
    # a generator that is already spent says so
    spent = (b for b in [tiny.x[:64]])
    list(spent)
    spent_hint = r"yielded no batches.*iterator \(generator\).*read only once.*list or a DataLoader"
    with pytest.raises(InvalidInputError, match=spent_hint):
        AutoQuant(tiny.model, tiny.x[:1], spent, tiny.eval_callback, results_dir=tmp_path / "b").run_inference()
    # QuantSim.compute_encodings given the same generator twice: the second call says why it saw nothing
    gen = (tiny.x[i : i + 64] for i in range(0, 256, 64))
    sim = QuantSim(tiny.model, tiny.x[:1])
    sim.compute_encodings(gen)
    with pytest.raises(CalibrationError, match=r"yielded nothing.*iterator \(generator\).*consumed already"):
        sim.compute_encodings(gen)
