"""Batch captioning as library functions with keyword arguments, by job:

- :mod:`~captioner.batch.captioning` — ``caption_files(paths, model=..., output=...)`` returns
  one record per image, ``iter_captions`` yields them batch by batch (``captioner caption``
  prints them as they come); ``caption_images`` / ``caption_samples`` caption exactly the given
  files or shards with a loaded model (a distributed worker's share);
- :mod:`~captioner.batch.inputs` — which files (or WebDataset shards) the paths name;
- :mod:`~captioner.batch.ledger` — the resumable JSON-lines output (torchrun part files merged);
- :mod:`~captioner.batch.ray_data` — :class:`CaptionPredictor` for Ray Data's ``map_batches``
  and ``caption_with_ray`` (``captioner caption --engine ray``).
"""
from .captioning import CaptionRecord, caption_files, caption_images, caption_samples, iter_captions
from .inputs import IMAGE_SUFFIXES, expand_image_paths
from .ray_data import CaptionPredictor, caption_with_ray

__all__ = ["CaptionPredictor", "CaptionRecord", "IMAGE_SUFFIXES", "caption_files", "caption_images",
           "caption_samples", "caption_with_ray", "expand_image_paths", "iter_captions"]
