"""What an exported model folder holds, written by ``captioner.export`` and read by ``captioner.exported``.

    DIR/manifest.json       format, graph files, their input/output names, the decoder
                            state layout, decoding ids (written last: a folder with a
                            manifest is a complete export)
    DIR/encoder.onnx        pixels (batch, 3, crop, crop) → pooled, grid
    DIR/init_state.onnx     pooled[, grid] → the decoder state, flattened
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

import json
from pathlib import Path

from ..errors import CaptionerError

MANIFEST_FILE = "manifest.json"
FORMAT = "captioner-onnx"
FORMAT_VERSION = 1
GRAPH_FILES = {"encoder": "encoder.onnx", "init_state": "init_state.onnx", "step": "step.onnx"}
VOCAB_FILE, PREPROCESS_FILE = "vocab.json", "preprocess.json"
STATE_PREFIX, NEXT_SUFFIX = "state.", ".next"
REQUIRED_KEYS = frozenset({"graphs", "encoder", "decoder", "init_state", "step", "state", "decoding", "quantization"})


class ExportedModelError(CaptionerError, ValueError):
    """An exported model folder that is missing, incomplete or of another format."""


def is_exported_model(directory: str | Path) -> bool:
    """True when ``directory`` holds a model exported by ``captioner export`` (not a torch model)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_manifest(directory: str | Path) -> dict:
    """The manifest of an exported model, after checking its format and that its files exist."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ExportedModelError(
            f"{directory} is not an exported model: {MANIFEST_FILE} is missing "
            f"(make one with `captioner export --format onnx --out {directory}`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportedModelError(f"{path}: not readable JSON ({e}); export the model again") from None
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
    extras = [manifest[key] for key in ("confidence", "datastore") if manifest.get(key)]
    for name in [*manifest["graphs"].values(), VOCAB_FILE, PREPROCESS_FILE, *extras]:
        if not (directory / name).is_file():
            raise ExportedModelError(f"{directory}: {name} is missing; export the model again")
    return manifest
