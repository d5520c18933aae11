"""Caption metrics with coco-caption's exact conventions.

Pure Python/numpy: BLEU-1..4, ROUGE-L, CIDEr-D (plain and the fast,
precomputed-df :class:`CiderD`).  METEOR and SPICE run pycocoevalcap's Java
tools when available (nothing Java is started at import time).
"""

from ..data.tokenizer import ptb_tokenize, tokenize_corpus
from .bleu import compute_bleu
from .cider import CiderD, compute_cider_d
from .evaluate import ALL_METRICS, evaluate_captions, exact_match, load_coco_references, load_coco_results
from .rouge import compute_rouge_l

__all__ = [
    "ALL_METRICS",
    "CiderD",
    "compute_bleu",
    "compute_cider_d",
    "compute_rouge_l",
    "evaluate_captions",
    "exact_match",
    "load_coco_references",
    "load_coco_results",
    "ptb_tokenize",
    "tokenize_corpus",
]
