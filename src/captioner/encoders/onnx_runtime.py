"""A frozen encoder run by ONNX Runtime on the CPU, and the choice of engine (``runtime``).

The encoder is exported once to ONNX (dynamic batch, fixed spatial size) and cached as
``$CAPTIONER_CACHE/onnx/<encoder>-<weights digest>-<options digest>-op<opset>-<size>.onnx``
(default cache root ``~/.cache/captioner``); later runs load the file without exporting again,
and the grid's (h, w) travels in the file's metadata, so opening it runs no torch forward.

    encoder = OnnxEncoder(model.encoder, model.preprocess.crop_size)
    pooled, grid, grid_shape, untuned = encoder(pixels)   # as model.encoder(pixels)

``runtime`` names the engine that runs a frozen encoder: ``torch``, ``onnx`` (ONNX Runtime,
CPU only) or ``auto`` (the default): ONNX Runtime on the CPU when onnxruntime and onnx are
installed, torch everywhere else. ``runtime_encoder`` makes that choice for training's feature
extraction and for ``Captioner`` alike.

Only a frozen encoder can be exported: fine-tuned stages would need gradients.
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..cache import cache_root, weights_digest
from ..errors import InvalidInputError, MissingDependencyError
from ..io import atomic_write_bytes
from .base import Encoder, EncoderOutput

INSTALL_HINT = "pip install onnxruntime onnx"
OPSET = 17
INPUT, OUTPUTS = "pixels", ("pooled", "grid")
UNTUNED = "untuned"  # a third output, for an encoder with tuned stages (``EncoderOutput.untuned``)
GRID_SHAPE_KEY = "captioner.grid_shape"  # ONNX metadata: the encoder's (h, w) grid at the exported size
RUNTIMES = ("auto", "torch", "onnx")
# Below this many images a one-off run (``captioner caption``, a feature extraction) keeps torch
# under runtime auto: opening the ONNX Runtime session (0.55 s) and hashing the weights for its
# cache key (0.15 s) cost more than the faster encoding saves (~86 ms an image: 172 → 86 ms for
# the bundled model, beam 5, on a 2-core CPU) — and a first export costs seconds more.
AUTO_ONNX_MIN_IMAGES = 8


def check_runtime(runtime: str) -> str:
    """``runtime`` if it names an engine, else a ``ValueError`` listing them."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    return runtime


def onnxruntime_available() -> bool:
    """Whether ``runtime="auto"`` can use ONNX Runtime here: onnxruntime imports (and onnx,
    which exports the encoder the first time)."""
    try:
        import onnxruntime  # noqa: F401
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            f"the ONNX Runtime encoder needs the onnxruntime package, which is not installed: {INSTALL_HINT}"
        ) from None
    return onnxruntime


def encoder_outputs(encoder: Encoder, size: int) -> tuple[str, ...]:
    """The exported graph's outputs for inputs of ``size``: (pooled, grid), and ``untuned`` for an
    encoder with tuned stages that gives them (``Encoder.untuned_dim``)."""
    return (*OUTPUTS, UNTUNED) if encoder.untuned_dim(size) is not None else OUTPUTS


class _Tuple(nn.Module):
    """Export wrapper: the encoder's (pooled, grid[, untuned]) as a plain tuple."""

    def __init__(self, encoder: Encoder, outputs: tuple[str, ...]):
        super().__init__()
        self.encoder = encoder
        self.outputs = outputs

    def forward(self, pixels):
        out = self.encoder(pixels)._asdict()
        return tuple(out[name] for name in self.outputs)


def export_onnx(encoder: Encoder, size: int) -> bytes:
    """The encoder as an ONNX model: input ``pixels`` (batch, 3, size, size) float32,
    outputs ``pooled`` (batch, pooled_dim), ``grid`` (batch, regions, grid_dim) and, for an encoder
    with tuned stages, ``untuned`` (batch, untuned_dim); the grid's (h, w) is stored as metadata
    (``captioner.grid_shape`` = "h,w")."""
    was_training = encoder.training
    buffer = io.BytesIO()
    try:
        encoder.eval()
        grid_h, grid_w = encoder.grid_shape_at(size, size)
        outputs = encoder_outputs(encoder, size)
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter (no onnxscript dependency) warns that it is legacy.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                _Tuple(encoder, outputs),
                (torch.zeros(1, 3, size, size),),
                buffer,
                input_names=[INPUT],
                output_names=list(outputs),
                dynamic_axes={name: {0: "batch"} for name in (INPUT, *outputs)},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except ImportError as e:  # the exporter's own dependencies (onnx)
        raise MissingDependencyError(f"exporting the encoder to ONNX failed ({e}): {INSTALL_HINT}") from None
    finally:
        encoder.train(was_training)
    import onnx  # imported by the exporter above: present

    model = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(model, {GRID_SHAPE_KEY: f"{grid_h},{grid_w}"})
    return model.SerializeToString()


def _session_options(ort, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # Idle ONNX Runtime threads spin by default; on a small CPU they then hold the cores the
    # torch decoder needs right after the encoder (and other processes on a shared machine).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxEncoder:
    """Callable like the encoder it replaces: float pixels (batch, 3, size, size) →
    ``EncoderOutput(pooled, grid)`` as float tensors on the input's device.

    ``threads`` defaults to ``torch.get_num_threads()`` at construction (``OMP_NUM_THREADS``
    sets both). ``cache_dir`` defaults to ``$CAPTIONER_CACHE/onnx`` or ``~/.cache/captioner/onnx``.
    Constructing one hashes the encoder's weights (the cache key) and opens a session: do it
    once per model, not per call (``Captioner`` keeps it).
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
        self.outputs = encoder_outputs(encoder, self.size)
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in encoder.parameters()):
            import copy

            encoder = copy.deepcopy(encoder).float().cpu()
        digest = weights_digest(encoder)
        # The options too: one can change the graph while the weights stay (a ResNet's grid_size).
        options = hashlib.sha256(json.dumps(encoder.config.cache_key(), sort_keys=True).encode()).hexdigest()[:8]
        name = f"{encoder.name}-{digest[:20]}-{options}-op{OPSET}-{self.size}.onnx"
        self.path = Path(cache_dir or cache_root("onnx")) / name
        if not self.path.is_file():
            self._export(encoder)
        try:
            self.session = self._open()
            self.grid_shape = self._stored_grid_shape()
        except Exception:  # unreadable cached file (e.g. a disk filled up): export it again, once
            if self.exported:
                raise
            self._export(encoder)
            self.session = self._open()
            self.grid_shape = self._stored_grid_shape()

    def _export(self, encoder: Encoder) -> None:
        atomic_write_bytes(self.path, export_onnx(encoder, self.size))  # never half a model
        self.exported = True

    def _open(self):
        options = _session_options(self._ort, self.threads)
        return self._ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _stored_grid_shape(self) -> tuple[int, int]:
        """The (h, w) grid the opened graph was exported with, once it is known to give this
        encoder's outputs (``ValueError`` otherwise: the caller exports it again)."""
        outputs = tuple(o.name for o in self.session.get_outputs())
        if outputs != self.outputs:  # (an earlier captioner's export of a tuned encoder: no untuned output)
            raise ValueError(f"{self.path} gives {outputs}, not {self.outputs}")
        value = self.session.get_modelmeta().custom_metadata_map.get(GRID_SHAPE_KEY)
        if value is None:
            raise ValueError(f"{self.path} has no {GRID_SHAPE_KEY} metadata: not exported by this captioner")
        h, w = (int(x) for x in value.split(","))
        return h, w

    def __call__(self, images: torch.Tensor) -> EncoderOutput:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.size, self.size):
            raise InvalidInputError(
                f"the ONNX {self.name} encoder was exported for (batch, 3, {self.size}, {self.size}) "
                f"inputs, got {tuple(images.shape)}"
            )
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        found = dict(zip(self.outputs, self.session.run(list(self.outputs), {INPUT: x})))
        dtype = images.dtype if images.is_floating_point() else torch.float32
        tensor = lambda name: torch.from_numpy(found[name]).to(images.device, dtype) if name in found else None  # noqa: E731
        return EncoderOutput(tensor("pooled"), tensor("grid"), self.grid_shape, tensor(UNTUNED))

    # An InferenceSession cannot be pickled or deep-copied: carry the file path, reopen it.
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("session", "_ort")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._ort = _import_onnxruntime()
        self.session = self._open()

    def __repr__(self) -> str:
        return f"OnnxEncoder({self.name!r}, size={self.size}, threads={self.threads}, path={str(self.path)!r})"


def runtime_encoder(
    runtime: str, encoder: Encoder, size: int, device: torch.device | str, images: int | None = None
) -> OnnxEncoder | None:
    """The ``OnnxEncoder`` that ``runtime`` runs ``encoder`` with on ``device``, or ``None`` for torch.

    ``onnx`` insists (``ValueError`` off the CPU or for a fine-tuned encoder, ``RuntimeError``
    without onnxruntime); ``auto`` picks ONNX Runtime for a frozen encoder on the CPU when it is
    installed and, if ``images`` says how many it will encode, at least ``AUTO_ONNX_MIN_IMAGES``;
    it falls back to torch with a warning when the export fails.
    """
    check_runtime(runtime)
    device = torch.device(device)
    if runtime == "torch":
        return None
    if runtime == "onnx":
        if device.type != "cpu":
            raise ValueError(f"ONNX Runtime runs the encoder on the CPU, not on {device}: "
                             "use --runtime torch (or auto), or --device cpu")
        return OnnxEncoder(encoder, size)
    if images is not None and images < AUTO_ONNX_MIN_IMAGES:
        return None
    if device.type != "cpu" or not encoder.frozen or not onnxruntime_available():
        return None
    try:
        return OnnxEncoder(encoder, size)
    except RuntimeError as e:  # an encoder the exporter cannot trace: torch still runs it
        warnings.warn(f"runtime auto: ONNX Runtime cannot run {encoder.name} ({e}); using torch. "
                      "Pass --runtime torch (runtime='torch') to skip the attempt.", stacklevel=2)
        return None


__all__ = ["AUTO_ONNX_MIN_IMAGES", "OnnxEncoder", "RUNTIMES", "check_runtime", "encoder_outputs", "export_onnx",
           "onnxruntime_available", "runtime_encoder"]
