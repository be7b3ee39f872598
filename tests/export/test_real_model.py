"""ONNX export of EfficientNet-Lite0 W8A8 (BatchNorms folded), checked in onnxruntime on ImageNet images.

Slow; needs the realcases extra (EfficientNet-Lite0 weights and the foolbox sample images).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from aq_search import QuantSim
from aq_search.examples import imagenet
from aq_search.export import validate_onnx

try:
    from aq_search.techniques import fold_all_batch_norms
except ImportError:  # the techniques package is landing in parallel
    from aq_search.techniques._bn_fold import fold_all_batch_norms

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not imagenet.is_available(), reason="EfficientNet-Lite0 packages not installed: " + " ".join(imagenet.REQUIREMENTS)
    ),
]


def test_efficientnet_lite0_w8a8_onnx_agrees_with_sim(tmp_path: Path) -> None:
    from aq_search.export import export_onnx

    model = imagenet.load_efficientnet_lite0()
    calib = imagenet.augmented_images(32, seed=1)
    images, labels = imagenet.imagenet_images()
    folded = fold_all_batch_norms(model, calib[:1])
    sim = QuantSim(folded, calib[:1], default_param_bw=8, default_output_bw=8, per_channel=True)
    sim.compute_encodings(lambda m: [m(calib[i : i + 16]) for i in range(0, len(calib), 16)])

    export = export_onnx(sim, None, tmp_path / "effnet.onnx", validation_inputs=images)
    v = export.validation
    assert v is not None and v.num_samples == 20
    assert v.top1_agreement is not None and v.top1_agreement >= 0.99, v
    assert v.max_error_in_quanta is not None and v.max_error_in_quanta <= 8.0, v
    # the exported model classifies the 20 images as well as the sim does
    import onnxruntime as ort

    session = ort.InferenceSession(export.path, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {export.input_names[0]: images.numpy()})
    assert imagenet.top1(torch.from_numpy(logits), labels) >= imagenet.top1(imagenet.predict(sim.model, images), labels) - 0.05
    # more views of the same photos: agreement stays high
    views = imagenet.augmented_images(60, seed=7)
    more = validate_onnx(export.path, sim, views)
    assert more.top1_agreement is not None and more.top1_agreement >= 0.95, more
    print(f"\nEfficientNet-Lite0 W8A8 QDQ ONNX vs sim: 20 ImageNet images {v}; 60 more views {more}")
    # int8 weights: the QDQ model is about a quarter of the FP32 one
    assert os.path.getsize(export.path) < 0.35 * os.path.getsize(export.fp32_path)
