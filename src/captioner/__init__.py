"""captioner: train, evaluate and serve image-captioning models.

An image that cannot be read or is over its limits raises ``ImageReadError`` (a
``captioner.errors.CaptionerError`` and a ``ValueError``) whose message names the file.
"""
from .batch import caption_files
from .data.images import ImageReadError
from .decoders import create_decoder, list_decoders
from .encoders import create_encoder, list_encoders
from .model import Caption, Captioner
from .version import __version__


def evaluate_captions(predictions, references, **options):
    """coco-caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE); see ``captioner.metrics``."""
    from .metrics import evaluate_captions as evaluate

    return evaluate(predictions, references, **options)


__all__ = [
    "Caption",
    "Captioner",
    "ImageReadError",
    "caption_files",
    "create_decoder",
    "create_encoder",
    "evaluate_captions",
    "list_decoders",
    "list_encoders",
]
