"""What an exported model folder holds, written by ``captioner.export`` and read by ``captioner.exported``.

    DIR/manifest.json       format, graph files, their input/output names, the decoder
                            state layout, decoding ids (written last: a folder with a
                            manifest is a complete export)
    DIR/encoder.onnx        pixels (batch, 3, crop, crop) → pooled, grid[, untuned]
                            (untuned: an encoder with tuned stages, what its untuned stages
                            make of the image, which the confidence may read; ``untuned_shape``)
    DIR/init_state.onnx     pooled[, grid][, retrieved] → the decoder state, flattened
                            (retrieved: the datastore captions a SmallCap-style decoder reads,
                            (batch, neighbours, length) token ids; the manifest's ``retrieved``
                            gives that shape, or is null)
    DIR/step.onnx           tokens (batch,), state → log_probs (batch, vocab), next state
    DIR/vocab.json          the model's vocabulary
    DIR/preprocess.json     the model's preprocessing (its config.json ``preprocess`` block)
    DIR/confidence.safetensors  the model's confidence statistics, when it has them
                            (the manifest's ``confidence`` names the file, or is null)
    DIR/datastore.safetensors   the model's datastore, when it has one (``datastore``)

The state is the decoder's ``init_state`` dict flattened in a fixed order: a tensor value is
one graph value named after its key, a list value one per item (``state.h``,
``state.keys.0``, ``state.keys.1``...).
Static entries (per-image constants) are step inputs only; the others come back from the
step as ``<name>.next``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CaptionerError
from ..untrusted import ModelFolder

MANIFEST_FILE = "manifest.json"
FORMAT = "captioner-onnx"
FORMAT_VERSION = 1
GRAPH_FILES = {"encoder": "encoder.onnx", "init_state": "init_state.onnx", "step": "step.onnx"}
VOCAB_FILE, PREPROCESS_FILE = "vocab.json", "preprocess.json"
STATE_PREFIX, NEXT_SUFFIX = "state.", ".next"
REQUIRED_KEYS = frozenset({"graphs", "encoder", "decoder", "init_state", "step", "state", "decoding", "quantization"})
FEATURES = ("pooled", "grid", "retrieved")  # what init_state may read
UNTUNED = "untuned"  # the encoder's optional third output, read by the confidence alone
MAX_NEIGHBOURS, MAX_RETRIEVED_LENGTH = 1000, 1024  # of the retrieved captions a decoder reads
TOKENS, LOG_PROBS = "tokens", "log_probs"  # the step's token input and its first output


class ExportedModelError(CaptionerError, ValueError):
    """An exported model folder that is missing, incomplete, of another format or tampered with."""


def is_exported_model(directory: str | Path) -> bool:
    """True when ``directory`` holds a model exported by ``captioner export`` (not a torch
    model): a manifest of this format, or one that cannot be read (too large, not JSON, a
    symlink out of the folder) where no torch model's config.json is — loading it then says
    what is wrong with it."""
    directory = Path(directory)
    if not (directory / MANIFEST_FILE).is_file():
        return False
    try:
        manifest = ModelFolder(directory, ExportedModelError).read_json(MANIFEST_FILE)
    except ExportedModelError:
        manifest = None
    if isinstance(manifest, dict) and "format" in manifest:
        return manifest["format"] == FORMAT
    return not (directory / "config.json").exists()


def read_manifest(directory: str | Path) -> dict:
    """The manifest of an exported model, after checking its format, the type and range of
    every entry the runtime uses, and that the files it names lie inside the folder."""
    folder = ModelFolder(directory, ExportedModelError)
    if not (folder.directory / MANIFEST_FILE).is_file():
        raise ExportedModelError(
            f"{folder.directory} is not an exported model: {MANIFEST_FILE} is missing "
            f"(make one with `captioner export --format onnx --out {folder.directory}`)"
        )
    manifest = folder.read_json(MANIFEST_FILE)
    path = folder.where(MANIFEST_FILE)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportedModelError(f"{path}: not a {FORMAT} manifest; export the model again")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportedModelError(
            f"{path}: export format {manifest.get('format_version')!r} is not supported by this runtime "
            f"(format {FORMAT_VERSION}); export the model again with a matching captioner"
        )
    missing = sorted(REQUIRED_KEYS - set(manifest))
    if missing:
        raise ExportedModelError(f"{path}: incomplete manifest (no {', '.join(missing)}); export the model again")
    _check_entries(_Entries(folder, manifest))
    return manifest


class _Entries:
    """Typed reads of a manifest's entries; a wrong type or a missing key names the entry."""

    def __init__(self, folder: ModelFolder, manifest: dict):
        self.folder, self.manifest = folder, manifest

    def fail(self, field: str, rule: str, value: Any) -> ExportedModelError:
        return ExportedModelError(f"{self.folder.where(MANIFEST_FILE)}: {field} must be {rule}, got {value!r}; "
                                  "export the model again")

    def get(self, field: str, kind: type | tuple, rule: str) -> Any:
        value: Any = self.manifest
        for part in field.split("."):
            if not isinstance(value, dict) or part not in value:
                raise self.fail(field, rule, "nothing")
            value = value[part]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise self.fail(field, rule, value)
        return value

    def names(self, field: str) -> list[str]:
        value = self.get(field, list, "a list of graph value names")
        if not value or not all(isinstance(v, str) and v for v in value):
            raise self.fail(field, "a list of graph value names", value)
        return value

    def whole(self, field: str, low: int, high: int) -> int:
        return self.folder.whole(self.get(field, object, f"a whole number from {low} to {high}"), MANIFEST_FILE,
                                 field, low, high)


def _check_entries(entries: _Entries) -> None:
    """Everything the runtime reads from the manifest: names, sizes, ids and lengths, the state
    layout's consistency, and the files it names (inside the folder, within the size limits)."""
    folder = entries.folder
    graphs = entries.get("graphs", dict, "an object naming the encoder, init_state and step graphs")
    for part in GRAPH_FILES:
        name = entries.get(f"graphs.{part}", str, "a file name inside the folder")
        graph = folder.path(name, (MANIFEST_FILE, f"graphs.{part}"))
        folder.check_size(graph, folder.limits.max_graph_bytes, "max_graph_bytes")
    if set(graphs) != set(GRAPH_FILES):
        raise entries.fail("graphs", f"an object with exactly {', '.join(GRAPH_FILES)}", sorted(graphs))
    for field, limit in (("confidence", "max_confidence_bytes"), ("datastore", "max_datastore_bytes")):
        name = entries.manifest.get(field)
        if name is not None:
            folder.check_size(folder.path(name, (MANIFEST_FILE, field)), getattr(folder.limits, limit), limit)
    for name in (VOCAB_FILE, PREPROCESS_FILE):
        folder.path(name)
    for field in ("encoder.name", "decoder.name"):
        entries.get(field, str, "a name")
    outputs = entries.names("encoder.outputs")
    if len(entries.names("encoder.inputs")) != 1 or len(outputs) not in (2, 3) \
            or len(outputs) == 3 and outputs[2] != UNTUNED:
        raise entries.fail("encoder", f"one input (pixels) and two outputs (pooled, grid), or three (…, {UNTUNED})",
                           {k: entries.manifest["encoder"][k] for k in ("inputs", "outputs")})
    for field in ("pooled_shape", UNTUNED + "_shape")[: len(outputs) - 1]:
        shape = entries.get(f"encoder.{field}", list, "[batch, feature dim]")
        if len(shape) != 2:
            raise entries.fail(f"encoder.{field}", "[batch, feature dim]", shape)
        folder.whole(shape[1], MANIFEST_FILE, f"encoder.{field}[1]", 1, folder.limits.max_feature_dim)
    vocab_size = folder.check_vocab_size(entries.get("decoder.vocab_size", object, "a whole number"),
                                         MANIFEST_FILE, "decoder.vocab_size")
    if entries.get("decoder.step_limit", object, "a whole number or null") is not None:
        entries.whole("decoder.step_limit", 1, 2**31 - 1)  # any count: decoding stops at max_length first
        entries.get("decoder.step_limit_reason", str, "the reason for decoder.step_limit")
    for field in ("decoding.start_id", "decoding.end_id", "decoding.pad_id"):
        entries.whole(field, 0, vocab_size - 1)
    banned = entries.get("decoding.banned_ids", list, f"a list of ids below {vocab_size}")
    for i, value in enumerate(banned):
        folder.whole(value, MANIFEST_FILE, f"decoding.banned_ids[{i}]", 0, vocab_size - 1)
    folder.check_lengths(MANIFEST_FILE, "decoding.", entries.get("decoding.max_length", object, "a whole number"),
                         entries.get("decoding.min_length", object, "a whole number"))
    _check_state_layout(entries)
    _check_retrieved(entries)


def _check_retrieved(entries: _Entries) -> None:
    """A decoder that reads retrieved captions names their shape and has its datastore beside it."""
    retrieved = entries.manifest.get("retrieved")
    reads = "retrieved" in entries.manifest["init_state"]["inputs"]
    if reads != (retrieved is not None):
        raise entries.fail("retrieved", "{neighbours, length} exactly when init_state reads retrieved captions",
                           retrieved)
    if reads:
        entries.whole("retrieved.neighbours", 1, MAX_NEIGHBOURS)
        entries.whole("retrieved.length", 2, MAX_RETRIEVED_LENGTH)
        if entries.manifest.get("datastore") is None:
            raise entries.fail("datastore", "the datastore file whose captions the decoder reads", None)


def _check_state_layout(entries: _Entries) -> None:
    """The graphs' value names agree with each other: init_state reads features and makes the
    state, the step reads tokens and state values and returns log-probs and the next state."""
    init_inputs, init_outputs = entries.names("init_state.inputs"), entries.names("init_state.outputs")
    step_inputs, step_outputs = entries.names("step.inputs"), entries.names("step.outputs")
    if not set(init_inputs) <= set(FEATURES):
        raise entries.fail("init_state.inputs", f"some of {', '.join(FEATURES)}", init_inputs)
    if not set(step_inputs) - {TOKENS} <= set(init_outputs):  # (one-shot's step reads no tokens)
        raise entries.fail("step.inputs", "tokens and names of init_state.outputs", step_inputs)
    nexts = step_outputs[1:]
    if step_outputs[0] != LOG_PROBS or not all(
            n.endswith(NEXT_SUFFIX) and n[: -len(NEXT_SUFFIX)] in init_outputs for n in nexts):
        raise entries.fail("step.outputs", f"{LOG_PROBS}, then <a name of init_state.outputs>{NEXT_SUFFIX}",
                           step_outputs)
    slots = entries.get("state", list, "a list of state slots")
    for i, slot in enumerate(slots):
        if (not isinstance(slot, dict) or slot.get("name") not in init_outputs
                or not isinstance(slot.get("static"), bool)):
            raise entries.fail(f"state[{i}]", "{name: a name of init_state.outputs, static: true or false}", slot)
