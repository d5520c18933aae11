"""captioner: train, evaluate and serve image-captioning models."""
__version__ = "0.1.0"

from .decoders import create_decoder, list_decoders  # noqa: E402
from .encoders import create_encoder, list_encoders  # noqa: E402
from .model import Caption, Captioner  # noqa: E402
from .batch import caption_files  # noqa: E402
from .errors import CaptionerError  # noqa: E402


def evaluate_captions(predictions, references, **options):
    """coco-caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE); see ``captioner.metrics``."""
    from .metrics import evaluate_captions as evaluate

    return evaluate(predictions, references, **options)


__all__ = [
    "Caption",
    "Captioner",
    "CaptionerError",
    "caption_files",
    "create_decoder",
    "create_encoder",
    "evaluate_captions",
    "list_decoders",
    "list_encoders",
]
