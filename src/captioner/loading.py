"""``load_model``: a model folder of either engine — torch (``config.json`` + safetensors) or
exported (``manifest.json`` + ONNX graphs) — behind one interface
(:class:`captioner.captions.CaptionModel`). Loading an exported folder never imports torch."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .captions import CaptionModel
from .exported.manifest import is_exported_model


def load_model(directory: Union[str, Path, None] = None, *, device="cpu", runtime: Optional[str] = None,
               threads: Optional[int] = None) -> CaptionModel:
    """The model in ``directory`` (``None``: the bundled model): a
    :class:`~captioner.model.Captioner` on ``device`` — its frozen encoder run by ``runtime``
    (``auto``, ``torch`` or ``onnx``; see ``Captioner.use_runtime``) — or, for a folder made by
    ``captioner export``, an :class:`~captioner.exported.OnnxCaptioner` with ``threads``
    intra-op threads (ONNX Runtime on the CPU, whatever ``device`` says)."""
    if directory is not None and is_exported_model(directory):
        from .errors import InvalidInputError
        from .exported import OnnxCaptioner

        if runtime not in (None, "onnx"):
            raise InvalidInputError(f"{directory} is an exported model: it runs in ONNX Runtime on the CPU; "
                                    f"--runtime {runtime} does not apply")
        return OnnxCaptioner.from_pretrained(directory, threads=threads)
    from .model import Captioner

    model = Captioner.from_pretrained(directory, device=device)
    return model.use_runtime(runtime) if runtime is not None else model


__all__ = ["is_exported_model", "load_model"]
