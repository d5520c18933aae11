"""Caption image files on a Ray cluster: :class:`CaptionPredictor` runs a model inside Ray
Data (``ds.map_batches``), and :func:`caption_with_ray` is ``captioner caption --engine ray``.
Needs the ``ray`` extra (``pip install 'captioner[ray]'``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch

from ..captions import Alternative, Caption, CaptionModel
from ..data.images import ImageReadError, build_transform, load_image
from ..data.webdataset import decode_image
from ..decoding import DecodeOptions
from ..device import resolve_device
from ..distributed import DistInfo
from ..errors import InvalidInputError, MissingDependencyError
from ..loading import load_model
from .captioning import CaptionRecord
from .inputs import are_shards, image_paths
from .ledger import Ledger


class CaptionPredictor:
    """A callable class for Ray Data's ``map_batches``: each actor loads the model once, then
    captions numpy batches.

    >>> ds = ray.data.read_images("photos/", include_paths=True)   # or read_binary_files
    >>> ds = ds.map_batches(CaptionPredictor, fn_constructor_kwargs={"model": "run/", "beam_size": 3},
    ...                     batch_size=32, concurrency=4)         # num_gpus=1: one GPU per actor

    A batch holds an ``image`` column of arrays (``read_images``: (H, W, C) or (H, W) uint8) or
    a ``bytes`` column of encoded files (``read_binary_files``); either goes through the same
    ``load_image`` and preprocessing as ``captioner caption``. The result keeps every other
    column (``path``…) and adds ``caption`` and ``score`` — and ``error``, which is ``None``
    except for an image that could not be read, whose row has ``caption`` and ``score`` ``None``
    (one bad file never fails the job). ``options`` (or their names as keywords): how to decode.
    """

    def __init__(self, model: Union[str, Path, CaptionModel, None] = None, *,
                 options: Optional[DecodeOptions] = None, batch_size: int = 32, device: str = "auto",
                 **decode_options):
        self.model = model if isinstance(model, CaptionModel) else load_model(model, device=resolve_device(device))
        self.options = DecodeOptions.of(options, **decode_options)
        self.batch_size = batch_size
        self.transform = build_transform(self.model.preprocess)

    def __call__(self, batch: dict) -> dict:
        column = next((c for c in ("image", "bytes") if c in batch), None)
        if column is None:
            raise InvalidInputError(f"CaptionPredictor needs an 'image' (read_images) or 'bytes' (read_binary_files) "
                                    f"column; the batch has {sorted(batch)}")
        names = [str(p) for p in batch["path"]] if "path" in batch else [f"row {i}" for i in range(len(batch[column]))]
        pixels, readable, errors = [], [], [None] * len(names)
        for i, item in enumerate(batch[column]):
            try:
                pixels.append(self.transform(self._image(item, names[i])))
                readable.append(i)
            except ImageReadError as e:
                errors[i] = str(e)
        captions: list[Optional[str]] = [None] * len(names)
        scores: list[Optional[float]] = [None] * len(names)
        for start in range(0, len(readable), self.batch_size):
            chunk = readable[start : start + self.batch_size]
            stacked = torch.stack(pixels[start : start + self.batch_size])  # (chunk, 3, H, W)
            for i, caption in zip(chunk, self.model.caption_pixels(stacked, self.options)):
                captions[i], scores[i] = caption.text, caption.to_dict()["score"]
        result = {name: values for name, values in batch.items() if name != column}
        result.update(caption=np.array(captions, dtype=object), score=np.array(scores, dtype=object),
                      error=np.array(errors, dtype=object))
        return result

    @staticmethod
    def _image(item, name: str):
        if isinstance(item, (bytes, bytearray)):
            return decode_image(bytes(item), name)
        array = np.asarray(item)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise ImageReadError(f"{name}: expected a (H, W) or (H, W, C) uint8 image array, "
                                 f"got {array.dtype} {array.shape}")
        from PIL import Image

        try:
            return load_image(Image.fromarray(array))
        except (TypeError, ValueError) as e:  # a channel count PIL has no mode for
            raise ImageReadError(f"{name}: not an image array ({e})") from None


def caption_with_ray(
    paths,
    *,
    model: Union[str, Path, None] = None,
    options: Optional[DecodeOptions] = None,
    output: Union[str, Path, None] = None,
    ray_address: Optional[str] = None,
    actors: int = 1,
    num_gpus: float = 0,
    batch_size: int = 32,
    log: Optional[Callable[[str], None]] = None,
    **decode_options,
) -> Iterator[CaptionRecord]:
    """``captioner caption --engine ray``: the image files of ``paths`` read by Ray Data
    (``read_binary_files``) and captioned by ``actors`` :class:`CaptionPredictor` actors
    (``num_gpus`` each), on the cluster at ``ray_address`` or a local one started here.
    Records come as actors finish, not in input order; with ``output`` they are appended to
    it, and images already in it are skipped. ``model`` must be a folder every node can read."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray: pip install 'captioner[ray]'") from None
    options = DecodeOptions.of(options, **decode_options)
    log = log or (lambda message: None)
    if are_shards(paths):
        raise InvalidInputError("--engine ray reads image files; caption WebDataset shards with the torch engine "
                                "(torchrun for several processes)")
    skipped: list[str] = []
    files = image_paths(paths, skipped)
    if skipped:
        log(f"left out {len(skipped)} files without an image suffix, e.g. {skipped[0]}")
    ledger = Ledger(Path(output) if output is not None else None, {p: i for i, p in enumerate(files)}, "image",
                    DistInfo())
    try:
        remaining = [p for p in files if p not in ledger.done]
        if ledger.done:
            log(f"{len(files) - len(remaining)} images already in {output}; captioning the other {len(remaining)}")
        if not remaining:
            return
        missing = [p for p in remaining if not os.path.isfile(p)]
        for path in missing:  # Ray would fail the whole read on one missing file
            yield CaptionRecord(path, error=f"{path}: no such file")
        remaining = [p for p in remaining if os.path.isfile(p)]
        name_of = {os.path.abspath(p): p for p in remaining}
        started = not ray.is_initialized()
        if started:
            ray.init(address=ray_address, log_to_driver=False, include_dashboard=False)
        try:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            if not num_gpus and actors >= cpus:
                # Each actor holds a CPU for good; reading needs one more, or the job waits forever.
                raise InvalidInputError(f"--ray-actors {actors} would hold all {cpus} CPUs of the Ray cluster and "
                                        f"leave none to read the images: use at most {max(cpus - 1, 1)} CPU actors, "
                                        "or GPUs")
            dataset = ray.data.read_binary_files([os.path.abspath(p) for p in remaining], include_paths=True)
            dataset = dataset.map_batches(
                CaptionPredictor, batch_size=batch_size, concurrency=actors, num_gpus=num_gpus or None,
                fn_constructor_kwargs={"model": str(model) if model is not None else None, "options": options,
                                       "batch_size": batch_size, "device": "cuda" if num_gpus else "cpu"},
            )

            def results() -> Iterator[CaptionRecord]:
                for row in dataset.iter_rows():
                    image = name_of.get(os.path.abspath(row["path"]), row["path"])
                    if row["error"] is not None:
                        yield CaptionRecord(image, error=row["error"])
                    else:
                        score = float("-inf") if row["score"] is None else float(row["score"])
                        yield CaptionRecord(image, caption=Caption(row["caption"], score,
                                                                   [Alternative(row["caption"], score)]))

            yield from ledger.write(results())
        finally:
            if started:
                ray.shutdown()
    finally:
        ledger.close()  # the output's lock, also when the run stops early
