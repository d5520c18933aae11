"""What every importer shares: the error, the vocabulary reordering, torchvision ResNet
weights onto captioner's ResNet encoders, checked weight loading, and writing the folder."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..data.vocab import SPECIAL_TOKENS, Vocabulary
from ..errors import CaptionerError

IMPORT_NOTES_FILE = "IMPORTED.md"


class CheckpointImportError(CaptionerError, ValueError):
    """A checkpoint, vocabulary or word map that cannot be imported; the message names the
    file and the cause (a refused class, a missing tensor, a size that does not match)."""


def captioner_vocabulary(words_by_id: list[str], source: str) -> tuple[Vocabulary, torch.Tensor]:
    """captioner's ``Vocabulary`` for a model whose output row i scores ``words_by_id[i]``, and
    ``order``: captioner id j is that model's row ``order[j]`` (index the embedding's and the
    output layer's rows with it). captioner fixes ids 0..3 to ``<pad> <start> <end> <unk>``;
    the other words keep their relative order."""
    if not all(isinstance(word, str) for word in words_by_id):
        raise CheckpointImportError(f"{source}: the vocabulary holds something other than words")
    if len(set(words_by_id)) != len(words_by_id):
        raise CheckpointImportError(f"{source}: the vocabulary lists a word twice")
    missing = [token for token in SPECIAL_TOKENS if token not in words_by_id]
    if missing:
        raise CheckpointImportError(
            f"{source}: the vocabulary has no {', '.join(missing)}; captioner needs {', '.join(SPECIAL_TOKENS)}"
        )
    vocab = Vocabulary(words_by_id)  # the special tokens first, the rest in their order
    row = {word: i for i, word in enumerate(words_by_id)}
    return vocab, torch.tensor([row[word] for word in vocab.itos])


# Bottleneck blocks per stage of torchvision's ResNets → captioner's encoder of that depth.
RESNET_STAGES = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
# nn.Sequential(*list(resnet.children())[:-1 or -2]): child index → captioner's ResNetEncoder name.
RESNET_CHILDREN = {"0": "stem.0", "1": "stem.1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def resnet_encoder_weights(state: dict[str, torch.Tensor], source: str) -> tuple[str, dict[str, torch.Tensor]]:
    """A torchvision ResNet wrapped as ``nn.Sequential(*list(resnet.children())[:k])`` (both
    tutorials do: "0.weight" is conv1, "4.*" .. "7.*" are layer1 .. layer4) → the name of
    captioner's encoder of that depth and its state dict."""
    renamed = {}
    for name, tensor in state.items():
        child, _, rest = name.partition(".")
        if child not in RESNET_CHILDREN:
            raise CheckpointImportError(f"{source}: {name} is not part of a torchvision ResNet")
        renamed[f"{RESNET_CHILDREN[child]}.{rest}"] = tensor
    stages = tuple(
        len({name.split(".")[1] for name in renamed if name.startswith(f"layer{stage}.")}) for stage in range(1, 5)
    )
    bottleneck = "layer1.0.conv3.weight" in renamed
    if stages not in RESNET_STAGES or not bottleneck:
        raise CheckpointImportError(
            f"{source}: a ResNet with {'bottleneck' if bottleneck else 'basic'} blocks {stages} per stage; "
            f"captioner's ResNet encoders are {', '.join(RESNET_STAGES.values())} (bottleneck blocks "
            f"{', '.join(str(s) for s in RESNET_STAGES)})"
        )
    return RESNET_STAGES[stages], renamed


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``, every name and shape checked first: a name missing,
    extra or of another shape is a ``CheckpointImportError`` naming it. BatchNorm's
    ``num_batches_tracked`` (absent before torch 0.4.1; unused in eval) defaults to 0."""
    expected = module.state_dict()
    state = dict(state)
    for name, value in expected.items():
        if name.endswith("num_batches_tracked") and name not in state:
            state[name] = torch.zeros_like(value)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        found = [f"{what} {', '.join(names[:3])}" for what, names in (("no", missing), ("unexpected", extra)) if names]
        raise CheckpointImportError(f"{source}: not the architecture this importer knows ({'; '.join(found)})")
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise CheckpointImportError(
                f"{source}: {name} has shape {tuple(value.shape)} where the model needs {tuple(expected[name].shape)}"
            )
        if value.is_floating_point() != expected[name].is_floating_point():
            raise CheckpointImportError(f"{source}: {name} holds {value.dtype} values, not {expected[name].dtype}")
    module.load_state_dict(state, strict=True)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_new_folder(out: str | Path) -> Path:
    """``out`` as a path, refused when it already holds files (an import never overwrites a model)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointImportError(f"--out {out} already exists and is not an empty folder; choose a new folder")
    return out
