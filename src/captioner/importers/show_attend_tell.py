"""Import a model trained with sgrvinod's a-PyTorch-Tutorial-to-Image-Captioning (Show, Attend
and Tell): ``BEST_checkpoint_*.pth.tar``, which ``train.py``'s ``save_checkpoint`` writes by
pickling the whole ``Encoder`` and ``DecoderWithAttention`` modules and their optimizers, and
``WORDMAP_*.json`` (word → id: the words 1..n, then ``<unk>``, ``<start>``, ``<end>``; ``<pad>`` 0).

The checkpoint (torch's zip format, or the legacy format of the tutorial's torch 0.4) is read
by ``torch.load`` through an unpickler that answers only inert stand-ins for the tutorial's
classes, the torch / torchvision layers it pickles and torch's optimizers (whose state is
skipped): no code from the file runs, anything else in it is refused by name. The model
becomes captioner's ``show-attend-tell`` decoder (ReLU attention, the ``f_beta`` gate, h and c
from the mean region) over its ResNet encoder pooled to the tutorial's 14×14 grid, its rows
reordered to captioner's vocabulary, and captions as ``caption.py``'s beam search did:

- pixels: the whole image resized to 256×256 by Pillow's bilinear filter (scipy's
  ``imresize``), /255, ImageNet mean/std;
- decoding: nothing banned, ``<end>`` allowed from the first step, a beam that ends retires
  and the beam shrinks, the best finished caption by summed log-probability, 51 steps at
  most. Where no beam ends within them the tutorial fails (``max()`` of no scores); captioner
  returns the best unfinished beam instead.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.images import PreprocessConfig
from ..model import Captioner, DecodingRules
from .base import (
    IMPORT_NOTES_FILE,
    CheckpointImportError,
    captioner_vocabulary,
    check_new_folder,
    load_weights,
    resnet_encoder_weights,
    sha256,
)
from .unpickle import (
    PickledObject,
    attribute,
    load_torch_pickle,
    module_tensors,
    pickled_name,
    short_name,
    stand_ins,
    submodule,
)

SOURCE = "sgrvinod/a-PyTorch-Tutorial-to-Image-Captioning"
# train.py imports its classes from models.py; a notebook would pickle them as __main__'s.
TUTORIAL_CLASSES = [f"{module}.{name}" for module in ("models", "__main__")
                    for name in ("Encoder", "DecoderWithAttention", "Attention")]
LAYER_CLASSES = [
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.pooling.AdaptiveAvgPool2d",
    "torchvision.models.resnet.Bottleneck",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.sparse.Embedding",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.rnn.LSTMCell",
    "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.activation.Softmax",
]
# The optimizers pickled beside the modules: any of torch's, restored inert and skipped.
OPTIMIZER_CLASSES = sorted(
    f"{cls.__module__}.{cls.__qualname__}" for cls in vars(torch.optim).values()
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
)


def _optimizer_state(default_factory=None) -> dict:
    """Stands in for ``collections.defaultdict`` (an optimizer's per-parameter state, skipped):
    a plain dict the loader can fill; ``default_factory`` (``builtins.dict``'s stand-in) is unused."""
    return {}


ADMITTED = {
    **stand_ins(*TUTORIAL_CLASSES, *LAYER_CLASSES, *OPTIMIZER_CLASSES, "builtins.dict"),
    "collections.defaultdict": _optimizer_state,
}
ALLOWED = ("the tutorial's Encoder, DecoderWithAttention and Attention, the torch and torchvision layers it "
           f"pickles ({', '.join(name.rsplit('.', 1)[-1] for name in LAYER_CLASSES)}), torch's optimizers, "
           "tensors and plain containers")

# DecoderWithAttention's modules → captioner's ShowAttendTell.
DECODER_MODULES = {
    "attention.encoder_att": "attention.region_proj",
    "attention.decoder_att": "attention.query_proj",
    "attention.full_att": "attention.score",
    "embedding": "embed",
    "decode_step": "cell",
    "init_h": "init_h",
    "init_c": "init_c",
    "f_beta": "gate",
    "fc": "head",
}
PREPROCESS = PreprocessConfig(crop_size=256, resize="squash", interpolation="bilinear", pillow_resize=True)
MAX_STEPS = 51  # caption.py's loop breaks after the step where step > 50: 51 words (<end> included)
MAX_WORD_MAP_BYTES = 64 * 2**20  # COCO's (9,490 words) is ~150 KB


def read_word_map(path: str | Path) -> list[str]:
    """The words of a ``WORDMAP_*.json`` (word → id), by id."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointImportError(f"{path}: no such file (the word map, WORDMAP_*.json)")
    if path.stat().st_size > MAX_WORD_MAP_BYTES:
        raise CheckpointImportError(f"{path}: over {MAX_WORD_MAP_BYTES // 2**20} MiB, more than a word map can be")
    try:
        word_map = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointImportError(f"{path}: not a JSON word map ({e})") from None
    if not isinstance(word_map, dict) or not all(type(i) is int for i in word_map.values()):
        raise CheckpointImportError(f"{path}: not a word map (a JSON object of word → id)")
    if sorted(word_map.values()) != list(range(len(word_map))):
        raise CheckpointImportError(f"{path}: the ids are not 0 .. {len(word_map) - 1}, each once")
    words = [""] * len(word_map)
    for word, index in word_map.items():
        words[index] = word
    return words


def _checkpoint_module(contents: dict, key: str, expected: str, where: str) -> PickledObject:
    module = contents.get(key)
    if pickled_name(module) not in TUTORIAL_CLASSES or short_name(module) != expected:
        raise CheckpointImportError(
            f"{where}: checkpoint[{key!r}] is a {short_name(module)}, not the tutorial's {expected}"
        )
    return module


def _grid_size(pool: PickledObject, where: str) -> int:
    size = attribute(pool, "output_size", (int, tuple), where)
    sides = size if isinstance(size, tuple) else (size, size)
    if len(sides) != 2 or sides[0] != sides[1] or type(sides[0]) is not int or sides[0] < 1:
        raise CheckpointImportError(f"{where}: the encoder pools to {size!r}; captioner needs a square grid")
    return sides[0]


def _decoder_weights(decoder: PickledObject, order: torch.Tensor, where: str) -> dict[str, torch.Tensor]:
    weights = {}
    for name, tensor in module_tensors(decoder, where).items():
        module, _, parameter = name.rpartition(".")
        if module not in DECODER_MODULES:
            raise CheckpointImportError(f"{where}: {name} is not part of the tutorial's DecoderWithAttention")
        module = DECODER_MODULES[module]
        if module in ("embed", "head") and tensor.shape[:1] == order.shape:  # other shapes: refused when loaded
            tensor = tensor[order]
        weights[f"{module}.{parameter}"] = tensor
    return weights


def import_show_attend_tell(*, checkpoint: str | Path, word_map: str | Path, out: str | Path) -> Path:
    """Import a Show, Attend and Tell tutorial checkpoint and its word map as a captioner
    model folder ``out`` (new or empty); returns it.

    >>> import_show_attend_tell(checkpoint="BEST_checkpoint_coco_5_cap_per_img_5_min_word_freq.pth.tar",
    ...                         word_map="WORDMAP_coco_5_cap_per_img_5_min_word_freq.json", out="sat-model")

    Raises ``CheckpointImportError`` naming the file and the cause (a refused class in the
    pickle, a module or tensor that is not the tutorial's, a word map that does not fit).
    """
    out = check_new_folder(out)
    where = str(checkpoint)
    contents = load_torch_pickle(checkpoint, "Show, Attend and Tell checkpoint (BEST_checkpoint_*.pth.tar)",
                                 ADMITTED, ALLOWED)
    if not isinstance(contents, dict) or not {"encoder", "decoder"} <= set(contents):
        found = ", ".join(map(str, list(contents)[:3])) if isinstance(contents, dict) else short_name(contents)
        raise CheckpointImportError(
            f"{where}: not a checkpoint of the tutorial's save_checkpoint (no pickled 'encoder' and 'decoder'; "
            f"found {found})"
        )
    encoder = _checkpoint_module(contents, "encoder", "Encoder", where)
    decoder = _checkpoint_module(contents, "decoder", "DecoderWithAttention", where)
    words = read_word_map(word_map)
    vocabulary, order = captioner_vocabulary(words, str(word_map))

    resnet = submodule(encoder, "resnet", "Sequential", where)
    grid_size = _grid_size(submodule(encoder, "adaptive_pool", "AdaptiveAvgPool2d", where), where)
    encoder_name, encoder_weights = resnet_encoder_weights(module_tensors(resnet, where), where)

    attention = submodule(decoder, "attention", "Attention", where)
    submodule(attention, "relu", "ReLU", where)  # the tutorial's attention: ReLU, not tanh
    dropout = attribute(submodule(decoder, "dropout", "Dropout", where), "p", (int, float), where)
    decoder_weights = _decoder_weights(decoder, order, where)
    for name in ("embed.weight", "cell.weight_hh", "attention.region_proj.weight", "head.weight"):
        if name not in decoder_weights:
            raise CheckpointImportError(f"{where}: the decoder has no {name}; not the tutorial's DecoderWithAttention")
    if decoder_weights["head.weight"].shape[0] != len(words):
        raise CheckpointImportError(
            f"{word_map}: {len(words)} words, but the decoder in {checkpoint} scores "
            f"{decoder_weights['head.weight'].shape[0]}; use the word map the model was trained with"
        )

    model = Captioner.build(
        encoder_name,
        "show-attend-tell",
        vocabulary,
        encoder_options={"pretrained": False, "grid_size": grid_size},  # weights from the file, saved
        decoder_options={
            "embed_dim": int(decoder_weights["embed.weight"].shape[1]),
            "hidden_dim": int(decoder_weights["cell.weight_hh"].shape[1]),
            "attention_dim": int(decoder_weights["attention.region_proj.weight"].shape[0]),
            "dropout": float(dropout),
            "attention_activation": "relu",
        },
        preprocess=PREPROCESS,
        max_length=MAX_STEPS,
        decoding=DecodingRules(banned_tokens=(), min_length=0, retire_finished=True),
    )
    load_weights(model.encoder, encoder_weights, f"{where} (encoder)")
    load_weights(model.decoder, decoder_weights, f"{where} (decoder)")
    notes = _notes(encoder_name, len(vocabulary), contents, {"checkpoint": checkpoint, "word map": word_map})
    return model.save_pretrained(out, extra_files={IMPORT_NOTES_FILE: notes})


def _notes(encoder_name: str, vocab_size: int, contents: dict, files: dict[str, str | Path]) -> str:
    listed = "\n".join(f"- {role}: `{Path(path).name}` (sha256 {sha256(path)})" for role, path in files.items())
    trained = [f"{key} {contents[key]}" for key in ("epoch", "bleu-4")
               if type(contents.get(key)) in (int, float)]
    return f"""# Imported model

Trained with {SOURCE} ({', '.join(trained) or 'no epoch recorded'}) and imported by
`captioner import show-attend-tell` (no code from the checkpoint ran: its modules were read
with inert stand-ins, its optimizer state skipped).

{listed}

{encoder_name} (14×14 grid) → show-attend-tell, vocabulary {vocab_size}. It captions as
`caption.py`'s `caption_image_beam_search` does: Pillow bilinear resize to 256×256, ImageNet
normalisation, nothing banned, finished beams retire, at most 51 steps; its default beam is 5:

    captioner caption --model THIS_FOLDER --beam-size 5 photo.jpg

Differences, by design: where no beam ends within 51 steps the tutorial fails and captioner
returns the best unfinished beam; transparent pixels are composited onto white (the tutorial
fails on images with an alpha channel); EXIF orientation is applied.
"""
