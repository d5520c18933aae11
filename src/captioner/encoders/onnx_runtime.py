"""A frozen encoder run by ONNX Runtime on the CPU (optional: ``pip install 'captioner[onnx]'``).

The encoder is exported once to ONNX (dynamic batch, fixed spatial size) and cached as
``$CAPTIONER_CACHE/onnx/<encoder>-<weights digest>-<size>.onnx`` (default cache root
``~/.cache/captioner``); later runs load the file without exporting again. For the bundled
EfficientNet-Lite0 at 160 px this roughly halves single-image encoding latency on the CPU.

    encoder = OnnxEncoder(model.encoder, model.preprocess.crop_size)
    pooled, grid, grid_shape = encoder(pixels)   # as model.encoder(pixels)

Only a frozen encoder can be exported: fine-tuned stages would need gradients.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from ..cache import cache_root, weights_digest
from ..errors import InvalidInputError, MissingDependencyError
from ..io import atomic_write_bytes
from .base import Encoder, EncoderOutput

INSTALL_HINT = "pip install 'captioner[onnx]'"
OPSET = 17
INPUT, OUTPUTS = "pixels", ("pooled", "grid")


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            f"the ONNX Runtime encoder needs the onnxruntime package, which is not installed: {INSTALL_HINT}"
        ) from None
    return onnxruntime


class _Tuple(nn.Module):
    """Export wrapper: the encoder's (pooled, grid) as a plain tuple."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels):
        out = self.encoder(pixels)
        return out.pooled, out.grid


def export_onnx(encoder: Encoder, size: int) -> bytes:
    """The encoder as an ONNX model: input ``pixels`` (batch, 3, size, size) float32,
    outputs ``pooled`` (batch, pooled_dim) and ``grid`` (batch, regions, grid_dim)."""
    was_training = encoder.training
    buffer = io.BytesIO()
    try:
        encoder.eval()
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter (no onnxscript dependency) warns that it is legacy.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                _Tuple(encoder),
                (torch.zeros(1, 3, size, size),),
                buffer,
                input_names=[INPUT],
                output_names=list(OUTPUTS),
                dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except ImportError as e:  # the exporter's own dependencies (onnx)
        raise MissingDependencyError(f"exporting the encoder to ONNX failed ({e}): {INSTALL_HINT}") from None
    finally:
        encoder.train(was_training)
    return buffer.getvalue()


class OnnxEncoder:
    """Callable like the encoder it replaces: float pixels (batch, 3, size, size) →
    ``EncoderOutput(pooled, grid)`` as float tensors on the input's device.

    ``threads`` defaults to ``torch.get_num_threads()`` at construction. ``cache_dir``
    defaults to ``$CAPTIONER_CACHE/onnx`` or ``~/.cache/captioner/onnx``.
    """

    def __init__(self, encoder: Encoder, size: int, cache_dir: str | Path | None = None, threads: int | None = None):
        if not encoder.frozen:
            raise InvalidInputError(
                f"ONNX Runtime can only run a frozen encoder; {encoder.name} has "
                f"trainable_blocks={encoder.config.trainable_blocks} (fine-tuned stages)"
            )
        self._ort = _import_onnxruntime()
        self.name = encoder.name
        self.size = int(size)
        self.threads = int(threads or torch.get_num_threads())
        self.exported = False  # True when this instance exported the file (not reused it)
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in encoder.parameters()):
            import copy

            encoder = copy.deepcopy(encoder).float().cpu()
        self.grid_shape = encoder.grid_shape_at(self.size, self.size)  # the ONNX outputs drop it
        digest = weights_digest(encoder)
        self.path = Path(cache_dir or cache_root("onnx")) / f"{encoder.name}-{digest[:20]}-{self.size}.onnx"
        if not self.path.is_file():
            self._export(encoder)
        try:
            self.session = self._open()
        except Exception:  # unreadable cached file (e.g. a disk filled up): export it again, once
            if self.exported:
                raise
            self._export(encoder)
            self.session = self._open()

    def _export(self, encoder: Encoder) -> None:
        atomic_write_bytes(self.path, export_onnx(encoder, self.size))  # never half a model
        self.exported = True

    def _open(self):
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> EncoderOutput:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.size, self.size):
            raise InvalidInputError(
                f"the ONNX {self.name} encoder was exported for (batch, 3, {self.size}, {self.size}) "
                f"inputs, got {tuple(images.shape)}"
            )
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        pooled, grid = self.session.run(list(OUTPUTS), {INPUT: x})
        dtype = images.dtype if images.is_floating_point() else torch.float32
        return EncoderOutput(
            torch.from_numpy(pooled).to(images.device, dtype),
            torch.from_numpy(grid).to(images.device, dtype),
            self.grid_shape,
        )

    # An InferenceSession cannot be pickled or deep-copied: carry the file path, reopen it.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("session", "_ort")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._ort = _import_onnxruntime()
        self.session = self._open()

    def __repr__(self) -> str:
        return f"OnnxEncoder({self.name!r}, size={self.size}, threads={self.threads}, path={str(self.path)!r})"


__all__ = ["OnnxEncoder", "export_onnx"]
