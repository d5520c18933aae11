"""Bring models trained with other code into captioner, without running code from their files.

    import_seed(encoder="encoder-5-3000.pkl", decoder="decoder-5-3000.pkl", vocab="vocab.pkl", out="seed/")
    import_show_attend_tell(checkpoint="BEST_checkpoint_coco.pth.tar", word_map="WORDMAP_coco.json", out="sat/")

Each writes a normal model folder (config.json, vocab.json, model.safetensors, plus
IMPORTED.md saying where it came from) that ``captioner caption``, ``evaluate``, ``serve`` and
``export`` use like any other, and that captions as the original code did: the same pixels,
the same architecture and the same search, recorded in config.json (preprocessing, decoder
options, ``decoding`` rules). ``captioner import seed|show-attend-tell`` on the command line.
"""
from .base import CheckpointImportError
from .seed import import_seed
from .show_attend_tell import import_show_attend_tell

__all__ = ["CheckpointImportError", "import_seed", "import_show_attend_tell"]
