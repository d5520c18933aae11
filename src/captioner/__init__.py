"""captioner: train, evaluate and serve image-captioning models.

The public names load on first use (PEP 562), so ``import captioner.runtime`` — the ONNX
runtime that captions with numpy and onnxruntime alone — never imports torch.

An image that cannot be read or is over its limits raises ``ImageReadError`` (a
``captioner.errors.CaptionerError`` and a ``ValueError``) whose message names the file.
"""
from importlib import import_module

from .version import __version__

_EXPORTS = {
    "Caption": "model",
    "Captioner": "model",
    "CaptionerError": "errors",
    "ImageReadError": "data.images",
    "caption_files": "batch",
    "create_decoder": "decoders",
    "list_decoders": "decoders",
    "create_encoder": "encoders",
    "list_encoders": "encoders",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def evaluate_captions(predictions, references, **options):
    """coco-caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE); see ``captioner.metrics``."""
    from .metrics import evaluate_captions as evaluate

    return evaluate(predictions, references, **options)


__all__ = [
    "Caption",
    "Captioner",
    "CaptionerError",
    "ImageReadError",
    "__version__",
    "caption_files",
    "create_decoder",
    "create_encoder",
    "evaluate_captions",
    "list_decoders",
    "list_encoders",
]
