"""captioner: train, evaluate and serve image-captioning models.

What a user types, all loaded on first use (PEP 562), so ``import captioner.exported`` — the
runtime that captions exported models with numpy and onnxruntime — never imports torch:

- ``load_model(folder)`` — a torch model folder or an exported one, behind one interface
  (``CaptionModel``: ``caption``, ``caption_pixels``, ``generate`` …); ``Captioner`` itself;
- ``train_model(config, data=..., out=..., ...)`` and ``export_model(model, out)``;
- ``caption_files(paths, ...)`` for many images, ``evaluate_captions`` for metrics;
- ``DecodeOptions`` (how to decode, with its defaults), ``create_encoder`` /
  ``create_decoder`` and their ``list_*``.

An image that cannot be read or is over its limits raises ``ImageReadError`` (a
``captioner.errors.CaptionerError`` and a ``ValueError``) whose message names the file.
"""
from importlib import import_module

from .offline import disable_telemetry
from .version import __version__

disable_telemetry()  # before any library that phones home is imported (see captioner.offline)

_EXPORTS = {
    "Caption": "captions",
    "CaptionModel": "captions",
    "Captioner": "model",
    "CaptionerError": "errors",
    "DecodeOptions": "decoding",
    "ImageReadError": "data.images",
    "OnnxCaptioner": "exported",
    "caption_files": "batch",
    "create_decoder": "decoders",
    "list_decoders": "decoders",
    "create_encoder": "encoders",
    "list_encoders": "encoders",
    "export_model": "export",
    "load_model": "loading",
    "train_model": "train",
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


__all__ = ["__version__", "evaluate_captions", *sorted(_EXPORTS)]
