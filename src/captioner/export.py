"""Export a ``Captioner`` so it captions without Python's torch: the encoder and the
decoder's ``init_state`` / ``step`` as ONNX graphs, the vocabulary, the preprocessing and a
manifest (see ``captioner.exported.manifest`` for the folder layout) and the confidence
statistics, read by ``captioner.exported.OnnxCaptioner``.

    export_model(Captioner.from_pretrained(), "exported/")          # fp32
    export_model(model, "exported-int8/", quantize="int8")           # dynamic int8 weights

The decoder state (a dict of tensors, or lists of tensors, batch on dim 0) is flattened to
named graph values in ``init_state``'s key order. Dimensions that grow from step to step
(the transformer's cached keys and values) become dynamic axes. Every fp32 graph is checked
against torch before the folder is written — on another batch size and more steps than it
was traced with — so a decoder whose step a traced graph cannot follow (Python control
flow on tensor values, state that is not tensors) is refused with the reason, not exported
wrong. Needs the 'onnx' extra (``pip install 'captioner[onnx]'``).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cache import weights_digest
from .confidence import CONFIDENCE_FILE
from .retrieval import DATASTORE_FILE
from .decoders import Decoder, Features
from .encoders.onnx_runtime import INPUT, INSTALL_HINT, OPSET, encoder_outputs, export_onnx
from .errors import CaptionerError
from .io import atomic_write_text
from .model import Captioner
from .exported.manifest import (
    FEATURES,
    FORMAT,
    FORMAT_VERSION,
    GRAPH_FILES,
    MANIFEST_FILE,
    NEXT_SUFFIX,
    PREPROCESS_FILE,
    STATE_PREFIX,
    VOCAB_FILE,
)
from .data.resize import FILTERS
from .data.vocab import Vocabulary
from .version import __version__

QUANTIZATIONS = ("int8",)
QUANTIZED_GRAPHS = ("init_state", "step")  # see _quantize_int8
TRACE_BATCH, CHECK_BATCH = 2, 3  # the check runs another batch size than the trace
TRACE_STEPS, CHECK_STEPS = 2, 5  # ... and more steps, so growing state is exercised
STEP_PROBE = 256  # steps tried to find a decoder's own step limit
TOLERANCE = 1e-4  # max |ONNX - torch| on the check's log-probs and state, relative to their scale


class ExportError(CaptionerError, ValueError):
    """A model that cannot be exported as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Slot:
    """One flattened state value: graph name, the state key (and list index) it comes from."""

    name: str
    key: str
    index: int | None
    static: bool


def state_slots(decoder: Decoder, state: dict) -> list[Slot]:
    """The fixed flattening order of a decoder state: its keys in order, list items in order."""
    slots = []
    for key, value in state.items():
        static = key in decoder.static_state
        if isinstance(value, torch.Tensor):
            slots.append(Slot(f"{STATE_PREFIX}{key}", key, None, static))
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            slots.extend(Slot(f"{STATE_PREFIX}{key}.{i}", key, i, static) for i in range(len(value)))
        else:
            raise ExportError(
                f"decoder {decoder.name!r} cannot be exported: its state[{key!r}] is a {type(value).__name__}, "
                "and only tensors or non-empty lists of tensors can become graph inputs"
            )
    return slots


def flatten(state: dict, slots: list[Slot]) -> list[torch.Tensor]:
    return [state[s.key] if s.index is None else state[s.key][s.index] for s in slots]


def unflatten(values, slots: list[Slot]) -> dict:
    state: dict = {}
    for slot, value in zip(slots, values):
        if slot.index is None:
            state[slot.key] = value
        else:
            state.setdefault(slot.key, []).append(value)
    return state


class _InitState(nn.Module):
    """The ``inputs`` (names of ``Features`` fields), in order → every state value."""

    def __init__(self, decoder: Decoder, slots: list[Slot], inputs: list[str]):
        super().__init__()
        self.decoder, self.slots, self.inputs = decoder, slots, inputs

    def forward(self, *values):
        return tuple(flatten(self.decoder.init_state(Features(**dict(zip(self.inputs, values)))), self.slots))


class _Step(nn.Module):
    """tokens, every state value → log_probs, the next value of every non-static one."""

    def __init__(self, decoder: Decoder, slots: list[Slot]):
        super().__init__()
        self.decoder, self.slots = decoder, slots
        self.moving = [s for s in slots if not s.static]

    def forward(self, tokens, *values):
        log_probs, state = self.decoder.step(tokens, unflatten(values, self.slots))
        return (log_probs, *flatten(state, self.moving))


def _export_graph(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str], dynamic: dict) -> bytes:
    """A traced module as ONNX bytes (the TorchScript exporter, as the encoder's export)."""
    buffer = tempfile.SpooledTemporaryFile()
    module.eval()  # the exporter restores the wrapper's mode afterwards, recursively: keep it eval
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about Python values taken from tensors (shape checks, limits) and
        # batch sizes baked into LSTMs: the check against torch catches any that matter.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, args, buffer, input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    buffer.seek(0)
    return buffer.read()


def _axis_names(name: str, growing: list[int]) -> dict[int, str]:
    """A graph value's dynamic dims: the batch (dim 0) and those that grow from step to step."""
    return {0: "batch", **{d: f"{name}_length" for d in growing}}


def _dynamic_axes(names: list[str], tensors: list[torch.Tensor], growing: dict[str, list[int]]) -> dict:
    return {name: _axis_names(name, growing.get(name, [])) for name, tensor in zip(names, tensors) if tensor.dim() > 0}


def _session(data: bytes):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(f"exporting checks the graphs with onnxruntime, which is not installed: {INSTALL_HINT}") \
            from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _check(what: str, got: list[np.ndarray], expected: list[torch.Tensor], names: list[str]) -> None:
    for name, a, b in zip(names, got, expected):
        b = b.detach().numpy()
        if a.shape != b.shape:
            raise ExportError(f"{what}: the ONNX graph gives {name} of shape {a.shape}, torch {b.shape}")
        finite = np.isfinite(b)
        if not np.array_equal(finite, np.isfinite(a)):
            raise ExportError(f"{what}: the ONNX graph and torch disagree on which {name} values are infinite")
        scale = 1.0 + (float(np.abs(b[finite]).max()) if finite.any() else 0.0)
        error = float(np.abs(a[finite] - b[finite]).max()) if finite.any() else 0.0
        if error > TOLERANCE * scale:
            raise ExportError(
                f"{what}: the ONNX graph's {name} is off by {error:.3g} from torch (a traced graph keeps one "
                "path through Python control flow: a branch or index on tensor values, or state outside the "
                "state dict, is frozen at its traced value)"
            )


def _run(session, what: str, feeds: dict, outputs: list[str]) -> list[np.ndarray]:
    try:
        return session.run(outputs, feeds)
    except Exception as e:  # onnxruntime raises its own error types; any of them means "cannot run"
        raise ExportError(f"{what}: the exported graph does not run ({str(e).splitlines()[0]})") from None


def _step_limit(decoder: Decoder, features: Features, vocab_size: int) -> tuple[int | None, str | None]:
    """How many steps the decoder takes before it refuses (its ValueError), if within the probe."""
    state = decoder.init_state(Features(*(v[:1] if isinstance(v, torch.Tensor) else v for v in features)))
    tokens = torch.full((1,), vocab_size - 1, dtype=torch.long)
    for step in range(STEP_PROBE):
        try:
            _, state = decoder.step(tokens, state)
        except ValueError as e:
            return step, str(e)
    return None, None


class _DecoderExport:
    """Traces, checks and describes one decoder's ``init_state`` and ``step`` graphs."""

    def __init__(self, decoder: Decoder, trace: Features, check: Features, vocab_size: int):
        self.decoder, self.vocab_size = decoder, vocab_size
        self.refusal = f"decoder {decoder.name!r} cannot be exported"
        start = decoder.init_state(trace)
        self.slots = state_slots(decoder, start)
        self.moving = [s for s in self.slots if not s.static]
        # Advance a few steps in torch: the state to trace the step at, and which dims grow.
        states, tokens = [start], self._tokens(trace, TRACE_STEPS)
        for t in range(TRACE_STEPS):
            states.append(self._torch_step(tokens[t], states[-1])[1])
        shapes = [[tuple(v.shape) for v in flatten(s, self.slots)] for s in states]
        self.growing = {slot.name: [d for d in range(len(shapes[0][i])) if len({s[i][d] for s in shapes}) > 1]
                        for i, slot in enumerate(self.slots)}
        self.shapes = dict(zip([s.name for s in self.slots], shapes[0]))
        self.dtypes = {slot.name: str(value.dtype).removeprefix("torch.")
                       for slot, value in zip(self.slots, flatten(start, self.slots))}
        self.init_graph = self._export_init(trace)
        self.step_graph = self._export_step(tokens[-1], states[-1])
        init, step = _session(self.init_graph), _session(self.step_graph)
        # The exporter drops inputs a graph never reads (show-attend-tell's init_state reads
        # only the grid): the names come from the graphs.
        self.inputs = [i.name for i in init.get_inputs()]
        self.step_inputs = [i.name for i in step.get_inputs()]
        self._check(init, step, check)
        self.step_limit, self.step_limit_reason = _step_limit(decoder, trace, vocab_size)

    def _tokens(self, features: Features, steps: int) -> list[torch.Tensor]:
        # Word ids other than the markers, varied across the batch, as decoding would feed.
        g = torch.Generator().manual_seed(steps)
        batch = features.pooled.shape[0]
        return [torch.randint(4, self.vocab_size, (batch,), generator=g) for _ in range(steps)]

    def _torch_step(self, tokens: torch.Tensor, state: dict):
        known = set(state)
        try:
            log_probs, new = self.decoder.step(tokens, state)
        except KeyError as e:
            raise ExportError(f"{self.refusal}: its step reads state key {e} that init_state does not make") from None
        slots = state_slots(self.decoder, {k: v for k, v in new.items() if k in known})
        if [s.name for s in slots] != [s.name for s in self.slots]:
            raise ExportError(f"{self.refusal}: its step changes the state's layout "
                              f"({[s.name for s in self.slots]} → {[s.name for s in slots]})")
        for slot in self.slots:
            if slot.static and not torch.equal(flatten(new, [slot])[0], flatten(state, [slot])[0]):
                raise ExportError(f"{self.refusal}: its step replaces state[{slot.key!r}], which static_state "
                                  "names as a per-image constant")
        return log_probs, {k: v for k, v in new.items() if k in known}  # extras (attention) are outputs only

    def _export_init(self, trace: Features) -> bytes:
        inputs = [name for name in FEATURES if getattr(trace, name) is not None]
        args = tuple(getattr(trace, name) for name in inputs)
        names = [s.name for s in self.slots]
        values = flatten(self.decoder.init_state(trace), self.slots)
        dynamic = {**_dynamic_axes(inputs, list(args), {}), **_dynamic_axes(names, values, self.growing)}
        return _export_graph(_InitState(self.decoder, self.slots, inputs), args, inputs, names, dynamic)

    @property
    def step_outputs(self) -> list[str]:
        return ["log_probs", *[s.name + NEXT_SUFFIX for s in self.moving]]

    def _export_step(self, tokens: torch.Tensor, state: dict) -> bytes:
        values = flatten(state, self.slots)
        inputs = ["tokens", *[s.name for s in self.slots]]
        log_probs, new = self._torch_step(tokens, state)
        dynamic = {
            **_dynamic_axes(inputs, [tokens, *values], self.growing),
            **_dynamic_axes(self.step_outputs, [log_probs, *flatten(new, self.moving)],
                            {s.name + NEXT_SUFFIX: self.growing[s.name] for s in self.moving}),
        }
        return _export_graph(_Step(self.decoder, self.slots), (tokens, *values), inputs, self.step_outputs, dynamic)

    def _check(self, init, step, features: Features) -> None:
        """The graphs against torch on another batch size, for more steps than traced."""
        names = [s.name for s in self.slots]
        given = features._asdict()
        state = self.decoder.init_state(features)
        what = f"{self.refusal}: init_state"
        got = _run(init, what, {name: given[name].numpy() for name in self.inputs}, names)
        _check(what, got, flatten(state, self.slots), names)
        for t, tokens in enumerate(self._tokens(features, CHECK_STEPS)):
            what = f"{self.refusal}: step {t + 1} (batch {features.pooled.shape[0]})"
            given = {"tokens": tokens, **dict(zip(names, flatten(state, self.slots)))}
            got = _run(step, what, {name: given[name].numpy() for name in self.step_inputs}, self.step_outputs)
            log_probs, state = self._torch_step(tokens, state)
            _check(what, got, [log_probs, *flatten(state, self.moving)], self.step_outputs)

    def describe(self) -> list[dict]:
        """Each state value: where it comes from, its dtype and shape (dynamic dims named)."""
        described = []
        for s in self.slots:
            dynamic = _axis_names(s.name, self.growing[s.name])
            shape = [dynamic.get(d, size) for d, size in enumerate(self.shapes[s.name])]
            described.append({"name": s.name, "key": s.key, "index": s.index, "static": s.static,
                              "dtype": self.dtypes[s.name], "shape": shape})
        return described


def _encoder_check(model: Captioner, graph: bytes, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The encoder graph against torch; returns torch's outputs of ``pixels`` by name (pooled,
    grid[, untuned])."""
    names = list(encoder_outputs(model.encoder, model.preprocess.crop_size))
    out = model.encoder(pixels)._asdict()
    what = f"encoder {model.encoder.name!r} cannot be exported"
    session = _session(graph)
    _check(what, _run(session, what, {INPUT: pixels.numpy()}, names), [out[n] for n in names], names)
    return {n: out[n] for n in names}


def _quantize_int8(folder: Path) -> None:
    """Dynamic int8 weights (onnxruntime.quantization) for the decoder graphs, in place.

    The encoder stays fp32: on the bundled EfficientNet-Lite0, int8 convolutions changed 24
    of 41 captions (examples/ + the fixture images) and ran 2.3x slower on the CPU, while
    int8 decoder graphs kept 41/41 greedy and 40/41 beam-3 captions at a quarter the size.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for part in QUANTIZED_GRAPHS:
        path = folder / GRAPH_FILES[part]
        quantized = path.with_suffix(".int8.onnx")
        logging.disable(logging.WARNING)  # its advice to pre-process, once per graph, on the root logger
        try:
            quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        os.replace(quantized, path)


def _cpu_float_copy(model: Captioner) -> Captioner:
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu().float()


def export_model(model: Captioner | str | Path | None, out: str | Path, *, quantize: str | None = None) -> Path:
    """Write ``model`` — a loaded :class:`Captioner`, a model folder, or ``None`` for the bundled
    model — as an exported folder ``out`` (which must not exist or be empty); returns ``out``.

    ``quantize="int8"``: dynamic int8 weights on the decoder graphs (after the fp32 graphs
    are checked against torch); captions may then differ from the torch model's. Raises
    ``ExportError`` for what cannot be exported, naming the part and the reason.
    """
    out = Path(out)
    if not isinstance(model, Captioner):
        model = Captioner.from_pretrained(model)
    if quantize not in (None, *QUANTIZATIONS):
        raise ExportError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZATIONS)} (or leave it out)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out} already exists and is not an empty folder; choose a new folder")
    if not model.preprocess.pillow_resize and model.preprocess.interpolation not in FILTERS:
        raise ExportError(
            f"preprocess.interpolation {model.preprocess.interpolation!r} is not reproduced by the torch-free runtime "
            f"(it resizes with {' or '.join(sorted(FILTERS))}); export a model trained with one of those"
        )
    if model.decoder.retrieved_shape is not None and model.datastore is None:
        raise ExportError(f"decoder {model.decoder.name!r} reads the captions of each image's nearest datastore "
                          "images, and this model has no datastore to export beside it: make one with "
                          "`captioner datastore build`")
    was_training = model.training
    exported = _cpu_float_copy(model).eval()
    try:
        with torch.no_grad():
            files, manifest = _export_parts(exported, quantize)
    finally:
        model.train(was_training)
    _write_folder(out, files, manifest, quantize, exported)
    return out


def _export_parts(model: Captioner, quantize: str | None) -> tuple[dict[str, bytes], dict]:
    size = model.preprocess.crop_size
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(TRACE_BATCH + CHECK_BATCH, 3, size, size, generator=g)
    encoder_graph = export_onnx(model.encoder, size)
    outputs = _encoder_check(model, encoder_graph, pixels)
    pooled, grid = outputs["pooled"], outputs["grid"]

    shape = model.decoder.retrieved_shape
    retrieved = None if shape is None else _retrieved_example(len(pixels), shape, len(model.vocab), g)

    def rows(part: slice) -> Features:  # the decoder sees the grid only when it reads one, as in Captioner.encode
        return Features(pooled[part], grid[part] if model.decoder.needs_grid else None,
                        retrieved=None if retrieved is None else retrieved[part])

    decoder = _DecoderExport(model.decoder, rows(slice(0, TRACE_BATCH)), rows(slice(TRACE_BATCH, None)),
                             len(model.vocab))
    files = {GRAPH_FILES["encoder"]: encoder_graph, GRAPH_FILES["init_state"]: decoder.init_graph,
             GRAPH_FILES["step"]: decoder.step_graph}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "captioner_version": __version__,
        "quantization": quantize,
        "quantized_graphs": list(QUANTIZED_GRAPHS) if quantize else [],
        "graphs": dict(GRAPH_FILES),
        "vocab": VOCAB_FILE,
        "preprocess": PREPROCESS_FILE,
        "opset": OPSET,
        "encoder": {
            "name": model.encoder.name,
            "weights_digest": weights_digest(model.encoder),  # what a datastore checks it was built with
            "inputs": [INPUT],
            "outputs": list(outputs),
            "pixels_shape": ["batch", 3, size, size],
            "pooled_shape": ["batch", int(pooled.shape[1])],
            "grid_shape": ["batch", int(grid.shape[1]), int(grid.shape[2])],
            **({"untuned_shape": ["batch", int(outputs["untuned"].shape[1])]} if "untuned" in outputs else {}),
        },
        "decoder": {
            "name": model.decoder.name,
            "options": model.decoder.describe()["options"],
            "vocab_size": len(model.vocab),
            "step_limit": decoder.step_limit,
            "step_limit_reason": decoder.step_limit_reason,
        },
        "init_state": {"inputs": decoder.inputs, "outputs": [s.name for s in decoder.slots]},
        "step": {"inputs": decoder.step_inputs, "outputs": decoder.step_outputs},
        "state": decoder.describe(),
        "decoding": {**_decoding_summary(model.decoding_config()), "rules": asdict(model.decoding)},
        "confidence": CONFIDENCE_FILE if model.confidence is not None else None,
        "datastore": DATASTORE_FILE if model.datastore is not None else None,
        "retrieved": None if shape is None else {"neighbours": shape[0], "length": shape[1]},
    }
    return files, manifest


def _retrieved_example(batch: int, shape: tuple[int, int], vocab_size: int, generator) -> torch.Tensor:
    """Retrieved captions to trace and check with, (batch, neighbours, length): word ids, then
    ``<end>``, then ``<pad>``, of every length (a neighbour without a caption too)."""
    neighbours, length = shape
    tokens = torch.randint(4, vocab_size, (batch, neighbours, length), generator=generator)
    lengths = torch.randint(0, length + 1, (batch, neighbours, 1), generator=generator)  # words + <end>
    position = torch.arange(length)
    tokens = torch.where(position == lengths - 1, Vocabulary.end_id, tokens)
    return torch.where(position >= lengths, Vocabulary.pad_id, tokens)


def _decoding_summary(config) -> dict:
    """The decoding ids and limits, for a reader of the manifest (the runtime derives its own
    from the vocabulary, as the torch model does)."""
    return {key: getattr(config, key) for key in ("start_id", "end_id", "pad_id", "banned_ids", "max_length",
                                                  "min_length")}


def _write_folder(out: Path, files: dict[str, bytes], manifest: dict, quantize: str | None, model: Captioner) -> None:
    """Everything into a temporary sibling folder, the manifest last, then one rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        if quantize == "int8":
            _quantize_int8(staging)
        model.vocab.save(staging / VOCAB_FILE)
        for part in (model.confidence, model.datastore):
            if part is not None:
                part.save(staging)
        atomic_write_text(staging / PREPROCESS_FILE, json.dumps(model.preprocess.to_dict(), indent=2))
        atomic_write_text(staging / MANIFEST_FILE, json.dumps(manifest, indent=2))
        for path in staging.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if out.exists():
            out.rmdir()  # empty (checked above): rename cannot replace it on every platform
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = ["ExportError", "export_model"]
