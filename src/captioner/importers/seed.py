"""Import a model trained with the seed's code: yunjey's pytorch-tutorial ``image_captioning``
(``EncoderCNN``: ResNet-152 → Linear → BatchNorm1d; ``DecoderRNN``: the image feature is the
LSTM's first input; greedy ``sample()``), saved as its ``train.py`` and ``build_vocab.py`` save
it: ``encoder-5-3000.pkl`` and ``decoder-5-3000.pkl`` (state dicts, read weights-only) and
``vocab.pkl`` (a pickled ``Vocabulary``, read with a stand-in; nothing in it runs).

The model becomes a ``show-tell`` decoder (the Linear + BatchNorm1d are its ``image_proj``)
over captioner's ResNet encoder of the same depth, and captions as ``sample.py`` did:

- pixels: the whole image resized to 224×224 by Pillow's LANCZOS, ImageNet mean/std;
- decoding: ``first_token_from_image`` (the image step's prediction is the first token, a
  trained model's ``<start>``), nothing banned, ``<end>`` allowed from the first step, 20
  steps in all; greedy (``--beam-size 1``) is ``sample()``. A caption's words are
  ``sample()``'s up to ``<end>``; its text leaves ``<start>`` (and a ``<pad>``, which only an
  untrained model emits) out, as the seed's article strips the markers.
"""
from __future__ import annotations

from pathlib import Path

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
from .unpickle import PickledObject, attribute, load_small_pickle, load_state_dict, stand_ins

SOURCE = "yunjey/pytorch-tutorial tutorials/03-advanced/image_captioning"
# build_vocab.py pickles its Vocabulary as a script: __main__.Vocabulary (build_vocab.Vocabulary when imported).
VOCABULARY_CLASSES = stand_ins("__main__.Vocabulary", "build_vocab.Vocabulary")
PREPROCESS = PreprocessConfig(crop_size=224, resize="squash", interpolation="lanczos", pillow_resize=True)
MAX_STEPS = 20  # DecoderRNN's max_seq_length: sample() runs 20 steps, the image step included
# EncoderCNN's linear and bn are captioner's show-tell image_proj (Linear → BatchNorm1d, momentum 0.01).
PROJECTION = {"linear": "image_proj.0", "bn": "image_proj.1"}


def read_vocabulary(path: str | Path) -> list[str]:
    """The words of a pickled ``build_vocab.Vocabulary``, by id (its ``idx2word``, what ``sample.py`` decodes with)."""
    vocabulary = load_small_pickle(path, "vocabulary pickle (build_vocab.py's vocab.pkl)", VOCABULARY_CLASSES)
    if not isinstance(vocabulary, PickledObject):
        raise CheckpointImportError(f"{path}: holds a {type(vocabulary).__name__}, not build_vocab's Vocabulary")
    idx2word = attribute(vocabulary, "idx2word", dict, str(path))
    if set(idx2word) != set(range(len(idx2word))):
        raise CheckpointImportError(f"{path}: idx2word's ids are not 0 .. {len(idx2word) - 1}")
    return [idx2word[i] for i in range(len(idx2word))]


def import_seed(*, encoder: str | Path, decoder: str | Path, vocab: str | Path, out: str | Path) -> Path:
    """Import the seed's ``EncoderCNN`` / ``DecoderRNN`` state dicts and pickled vocabulary as a
    captioner model folder ``out`` (new or empty); returns it.

    >>> import_seed(encoder="models/encoder-5-3000.pkl", decoder="models/decoder-5-3000.pkl",
    ...             vocab="data/vocab.pkl", out="seed-model")

    Raises ``CheckpointImportError`` naming the file and the cause (a refused class in the
    pickle, a tensor that is missing or of another shape, a vocabulary that does not fit).
    """
    out = check_new_folder(out)
    encoder_state = load_state_dict(encoder, "EncoderCNN state dict (encoder-*.pkl)")
    decoder_state = load_state_dict(decoder, "DecoderRNN state dict (decoder-*.pkl)")
    words = read_vocabulary(vocab)
    vocabulary, order = captioner_vocabulary(words, str(vocab))

    backbone, decoder_weights = {}, {}
    for name, tensor in encoder_state.items():
        part, _, rest = name.partition(".")
        if part == "resnet":
            backbone[rest] = tensor
        elif part in PROJECTION:
            decoder_weights[f"{PROJECTION[part]}.{rest}"] = tensor
        else:
            raise CheckpointImportError(f"{encoder}: {name} is not part of the seed's EncoderCNN")
    encoder_name, encoder_weights = resnet_encoder_weights(backbone, str(encoder))

    for name in ("embed.weight", "lstm.weight_hh_l0", "linear.weight", "linear.bias"):
        if name not in decoder_state:
            raise CheckpointImportError(f"{decoder}: no {name}; not the seed's DecoderRNN")
    vocab_rows = decoder_state["linear.weight"].shape[0]
    if len(words) != vocab_rows or decoder_state["embed.weight"].shape[0] != vocab_rows:
        raise CheckpointImportError(
            f"{vocab}: {len(words)} words, but the decoder {decoder} scores {vocab_rows}; "
            "use the vocab.pkl the model was trained with"
        )
    for name, tensor in decoder_state.items():
        if name.startswith("linear."):
            name = "head." + name[len("linear."):]
        if name.startswith(("embed.", "head.")) and tensor.shape[:1] == order.shape:  # other shapes: refused below
            tensor = tensor[order]
        decoder_weights[name] = tensor

    model = Captioner.build(
        encoder_name,
        "show-tell",
        vocabulary,
        encoder_options={"pretrained": False},  # its weights come from the file and are saved
        decoder_options={
            "embed_dim": int(decoder_state["embed.weight"].shape[1]),
            "hidden_dim": int(decoder_state["lstm.weight_hh_l0"].shape[1]),
            "num_layers": sum(name.startswith("lstm.weight_hh_l") for name in decoder_state),
            "first_token_from_image": True,
        },
        preprocess=PREPROCESS,
        max_length=MAX_STEPS,
        decoding=DecodingRules(banned_tokens=(), min_length=0),
    )
    load_weights(model.encoder, encoder_weights, str(encoder))
    load_weights(model.decoder, decoder_weights, f"{encoder} + {decoder}")
    notes = _notes(encoder_name, len(vocabulary), {"encoder": encoder, "decoder": decoder, "vocab": vocab})
    return model.save_pretrained(out, extra_files={IMPORT_NOTES_FILE: notes})


def _notes(encoder_name: str, vocab_size: int, files: dict[str, str | Path]) -> str:
    listed = "\n".join(f"- {role}: `{Path(path).name}` (sha256 {sha256(path)})" for role, path in files.items())
    return f"""# Imported model

Trained with {SOURCE} and imported by `captioner import seed` (no code from the files ran:
state dicts read weights-only, `vocab.pkl` with a stand-in for `build_vocab.Vocabulary`).

{listed}

{encoder_name} → show-tell, vocabulary {vocab_size}. It captions as `sample.py` does:
Pillow LANCZOS resize to 224×224, ImageNet normalisation, the image step's prediction as the
first token, nothing banned, 20 steps. Greedy is `sample()`:

    captioner caption --model THIS_FOLDER --beam-size 1 photo.jpg

Differences, by design: transparent pixels are composited onto white (`sample.py`'s
`convert('RGB')` keeps whatever colour they hide), EXIF orientation is applied, and the
caption's text leaves out `<start>` and `<pad>`, as the seed's article strips the markers.
"""
