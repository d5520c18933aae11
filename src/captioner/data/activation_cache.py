"""What a fine-tuned encoder's frozen stages output, extracted once into memory-mapped fp16 files.

Fine-tuning the last stages of an encoder on pixels runs the whole encoder every step, though
the stages below the first trainable one never change. With the encoder split there
(:meth:`captioner.encoders.Encoder.split`), this cache holds the bottom's output for every
image — the clean images and their augmented views, as the feature cache does for a frozen
encoder — and a training step runs only the top stages and the decoder on rows of it.

It is a ``FeatureCache`` that stores one array, ``activations`` (N, *the bottom's output
shape*), keyed by the encoder, the digest of the bottom's weights (the top's change as it
trains; they do not change what is stored), the cut, the preprocessing, the image list and
the augmentation. The bottom runs in fp32: in ONNX Runtime on the CPU (``runtime`` auto or
onnx, as the feature cache's encoder; 3.5× torch eager for EfficientNet-Lite0's bottom at 160 px
on one thread), else in torch.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..cache import weights_digest
from ..errors import InvalidInputError
from ..encoders.base import pooled_activations
from .augment import AugmentConfig
from .feature_cache import FeatureCache, read_rows
from .images import PreprocessConfig


class ActivationCache(FeatureCache):
    """``activations`` (N, ...) as an fp16 memmap: ``split.bottom`` of each image's pixels
    (``split``: the encoder cut before its first trainable stage, for ``preprocess.crop_size``)."""

    def __init__(self, root: str | Path, encoder, split, preprocess: PreprocessConfig, paths: list[str],
                 augment: AugmentConfig | None = None):
        self.split = split
        super().__init__(root, encoder, preprocess, paths, with_grid=False, augment=augment)
        self.activations: np.ndarray | None = None

    def _folder(self, root, digest: str, with_grid: bool) -> Path:
        key_source = json.dumps(
            {
                "encoder": self.encoder.name,
                "options": self.encoder.config.cache_key(),
                "bottom_weights": weights_digest(self.split.bottom_module),
                "cut": self.split.key(),
                "preprocess": self.preprocess.key(),
                "images": self.paths,
                **({"augment": self.augment.to_dict()} if self.augment is not None else {}),
            },
            sort_keys=True,
        )
        name = f"{self.encoder.name}-stage{self.split.stage}"
        return Path(root) / f"{name}-{hashlib.sha256(key_source.encode()).hexdigest()[:20]}"

    def _extractor(self, device: torch.device, runtime: str, missing: int, batch_size: int, precision):
        from ..encoders.onnx_runtime import AUTO_ONNX_MIN_IMAGES, check_runtime, onnxruntime_available
        from ..encoders.precision import FP32, ExtractionChoice, device_description

        bottom = self.split.bottom_module.to(device).eval()
        where = device_description(device)
        if check_runtime(runtime) == "onnx" and device.type != "cpu":
            raise InvalidInputError(f"ONNX Runtime runs on the CPU, not on {device}: use runtime torch or auto")
        if runtime == "onnx" or (runtime == "auto" and device.type == "cpu" and missing >= AUTO_ONNX_MIN_IMAGES
                                 and onnxruntime_available()):
            return OnnxBottom(bottom, self.preprocess.crop_size), ExtractionChoice(
                FP32, where, reason="ONNX Runtime runs the frozen stages (fp32)")
        return bottom, ExtractionChoice(FP32, where, reason="torch runs the frozen stages (fp32)")

    def _outputs(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"activations": out}

    def open(self) -> "ActivationCache":
        if not self.is_complete():
            raise RuntimeError(f"activation cache {self.folder} is incomplete; build it first")
        self.activations = np.load(self.folder / "activations.npy", mmap_mode="r")
        return self

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        """The activations of these rows as a float32 tensor (reads only those rows from disk)."""
        return read_rows(self.activations, indices)


class OnnxBottom:
    """A split encoder's frozen bottom exported to ONNX and run by ONNX Runtime on the CPU, called
    like it: pixels (batch, 3, size, size) → activations. Exported on construction (a few seconds,
    once per extraction; the cache is the lasting result)."""

    def __init__(self, bottom: torch.nn.Module, size: int):
        import io
        import warnings

        from ..encoders.onnx_runtime import OPSET, _import_onnxruntime, _session_options

        ort = _import_onnxruntime()
        buffer = io.BytesIO()
        bottom.eval()  # the exporter restores the mode it found, recursively, into the shared encoder modules
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter says it is legacy
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(bottom, (torch.zeros(1, 3, size, size),), buffer, input_names=["pixels"],
                              output_names=["activations"], dynamic_axes={"pixels": {0: "batch"},
                                                                          "activations": {0: "batch"}},
                              opset_version=OPSET, do_constant_folding=True, dynamo=False)
        self.session = ort.InferenceSession(buffer.getvalue(), _session_options(ort, torch.get_num_threads()),
                                            providers=["CPUExecutionProvider"])

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        (activations,) = self.session.run(["activations"], {"pixels": pixels.detach().float().contiguous().numpy()})
        return torch.from_numpy(activations)


class TopFeatures:
    """Rows of an ``ActivationCache`` as a ``FeatureCache``'s rows — ``(pooled, grid)`` and
    ``grid_shape`` — computed by ``model``'s encoder cut where the cache was, without gradients:
    what validation, the datastore and the confidence read on the cached-activation path.
    The model's current weights are used (each epoch's, or the best model's)."""

    def __init__(self, cache: ActivationCache, model):
        self.cache = cache
        self.model = model
        self.grid_shape: tuple[int, int] | None = None
        # The last rows' ``EncoderOutput.untuned`` — the cached activations averaged — where the
        # cache was cut where the model's tuned stages begin (a frozen fine-tuned encoder's).
        self.untuned: torch.Tensor | None = None

    def rows(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        split = self.model.encoder_split(self.cache.split.stage)
        activations = self.cache.rows(indices).to(self.model.device)
        with torch.no_grad():
            out = split.top(activations)
        self.grid_shape = out.grid_shape
        tuned = self.model.encoder.config.tuned_blocks
        self.untuned = pooled_activations(activations.float()) if tuned and split.stage == split.stages - tuned \
            else None
        return out.pooled, out.grid


__all__ = ["ActivationCache", "OnnxBottom", "TopFeatures"]
