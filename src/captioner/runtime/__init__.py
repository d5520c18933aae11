"""Caption with an exported model (``captioner export --format onnx``) using numpy and
onnxruntime only: no torch, no torchvision.

    from captioner.runtime import OnnxCaptioner
    OnnxCaptioner("exported/").caption("dog.png").text

Nothing here imports torch, nor any captioner module that does.
"""
from ..captions import Alternative, Caption
from .captioner import OnnxCaptioner
from ..data.images import ImageReadError
from .manifest import ExportedModelError, is_exported_model, read_manifest

__all__ = ["Alternative", "Caption", "ExportedModelError", "ImageReadError", "OnnxCaptioner", "is_exported_model",
           "read_manifest"]
