"""Caption with an exported model (``captioner export --format onnx``) using numpy and
onnxruntime only: no torch, no torchvision.

    from captioner.exported import OnnxCaptioner
    OnnxCaptioner.from_pretrained("exported/").caption("dog.png").text

(``captioner.load_model(folder)`` returns one too.) Nothing here imports torch, nor any
captioner module that does.
"""
from ..captions import Alternative, Caption
from ..data.images import ImageReadError
from .manifest import ExportedModelError, is_exported_model, read_manifest
from .model import OnnxCaptioner

__all__ = ["Alternative", "Caption", "ExportedModelError", "ImageReadError", "OnnxCaptioner", "is_exported_model",
           "read_manifest"]
