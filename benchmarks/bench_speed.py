"""Training and captioning speed: the seed's loop vs captioner, one process, same data.

The seed is yunjey's pytorch-tutorial ``image_captioning`` as the project started from it,
rewritten here only as far as a benchmark needs (no pickles, no hub weights): a frozen
ResNet-152 recomputed for every (image, caption) pair at every step, Linear → BatchNorm1d,
a packed 1-layer LSTM, Adam 1e-3, greedy ``sample`` for 20 steps. Captioner trains
show-tell on its feature cache (extracted in the first epoch, read in the others) with the
real ``train_one_epoch``, and captions with batched beam search (beam 5). On the CPU it also
times the ``--onnx`` paths (``train --onnx`` extraction, ``caption --onnx``) when the
``onnx`` extra is installed; on CUDA, bf16 autocast + channels-last captioning.

Both get the same random images (256², as the seed's ``resize.py`` leaves them; the encoders
see 224² crops), the same random captions (8–20 words, ~10k-word vocabulary), the same batch
size and the same weights (copied from the seed's modules; ``tests/test_bench_parity.py``
checks both compute the same loss). Weights are random: no hub downloads here.

    python benchmarks/bench_speed.py --device cpu --images 32 --batch-size 16
    python benchmarks/bench_speed.py --device cuda --images 2048 --batch-size 128 --num-workers 8
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from captioner import Captioner
from captioner.data.feature_cache import FeatureCache
from captioner.data.loaders import BucketBatchSampler, CaptionPairs, ImageRows
from captioner.data.sources import Example
from captioner.data.vocab import Vocabulary
from captioner.objectives import create_objective
from captioner.train.config import TrainConfig
from captioner.train.loop import FeatureBatches, TrainContext, make_optimizer, make_scheduler, train_one_epoch
from captioner.train.state import Progress

EMBED_SIZE, HIDDEN_SIZE, SEED_MAX_STEPS = 256, 512, 20
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --- the seed ----------------------------------------------------------------------
def seed_backbone(name: str) -> tuple[nn.Module, int]:
    """The frozen CNN, ending in global average pooling: (module, feature size)."""
    if name == "resnet152":
        # Random weights (no hub here); zero-initialised residual branches keep activations in
        # fp16 range (the cache's format) where default init reaches ~1e8. Same compute.
        resnet = torchvision.models.resnet152(weights=None, zero_init_residual=True)
        return nn.Sequential(*list(resnet.children())[:-1]), resnet.fc.in_features  # fc dropped
    if name == "efficientnet_lite0":
        import timm

        return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0), 1280
    raise ValueError(f"no seed backbone for encoder {name!r}")


class EncoderCNN(nn.Module):
    """CNN features → Linear → BatchNorm1d(momentum 0.01).

    The backbone stays in eval mode and runs under ``no_grad`` (the tutorial leaves its
    BatchNorm layers in training mode and detaches afterwards: same cost, drifting
    statistics); it is recomputed for every pair at every step, as in the seed.
    """

    def __init__(self, embed_size: int, backbone: str = "resnet152"):
        super().__init__()
        self.backbone_name = backbone
        self.resnet, feature_size = seed_backbone(backbone)
        self.resnet.requires_grad_(False)
        self.linear = nn.Linear(feature_size, embed_size)
        self.bn = nn.BatchNorm1d(embed_size, momentum=0.01)
        self.linear.weight.data.normal_(0.0, 0.02)
        self.linear.bias.data.fill_(0)

    def train(self, mode: bool = True):
        super().train(mode)
        self.resnet.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.resnet(images)
        return self.bn(self.linear(features.reshape(features.size(0), -1)))  # (batch, embed)


class DecoderRNN(nn.Module):
    """Embedding → LSTM → Linear; the image embedding is the first input step."""

    def __init__(self, embed_size: int, hidden_size: int, vocab_size: int, num_layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, vocab_size)
        self.embed.weight.data.uniform_(-0.1, 0.1)
        self.linear.weight.data.uniform_(-0.1, 0.1)
        self.linear.bias.data.fill_(0)

    def forward(self, features, captions, lengths):
        """Scores of the packed targets ``captions`` (<start> w1 .. <end>, lengths descending)."""
        embeddings = torch.cat((features.unsqueeze(1), self.embed(captions)), 1)  # (batch, 1 + L, embed)
        packed = pack_padded_sequence(embeddings, lengths, batch_first=True)
        hiddens, _ = self.lstm(packed)
        return self.linear(hiddens[0])  # (sum(lengths), vocab)

    def sample(self, features, states=None):
        """Greedy: 20 steps, one token per step, no early stop."""
        sampled_ids = []
        inputs = features.unsqueeze(1)
        for _ in range(SEED_MAX_STEPS):
            hiddens, states = self.lstm(inputs, states)  # (batch, 1, hidden)
            predicted = self.linear(hiddens.squeeze(1)).max(1)[1]
            sampled_ids.append(predicted)
            inputs = self.embed(predicted).unsqueeze(1)  # (batch, 1, embed)
        return torch.stack(sampled_ids, 1)  # (batch, 20)


class SeedPairs(Dataset):
    """(augmented image, token ids) per caption, as the tutorial's CocoDataset."""

    def __init__(self, paths: list[str], captions: list[list[int]], transform):
        self.paths, self.captions, self.transform = paths, captions, transform

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, i):
        image = Image.open(self.paths[i]).convert("RGB")
        return self.transform(image), torch.tensor(self.captions[i])


def seed_collate(data):
    """Sort by caption length (descending, for packing) and pad."""
    data.sort(key=lambda x: len(x[1]), reverse=True)
    images, captions = zip(*data)
    lengths = [len(c) for c in captions]
    targets = torch.zeros(len(captions), max(lengths), dtype=torch.long)
    for i, caption in enumerate(captions):
        targets[i, : lengths[i]] = caption
    return torch.stack(images), targets, lengths


def seed_train_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return transforms.Compose([transforms.RandomCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                               transforms.Normalize(mean, std)])


def seed_sample_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """sample.py: resize to 224² (LANCZOS), then normalise."""
    resize = transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.LANCZOS)
    return transforms.Compose([resize, transforms.ToTensor(), transforms.Normalize(mean, std)])


def seed_optimizer(encoder: EncoderCNN, decoder: DecoderRNN) -> torch.optim.Optimizer:
    params = list(decoder.parameters()) + list(encoder.linear.parameters()) + list(encoder.bn.parameters())
    return torch.optim.Adam(params, lr=1e-3)


def seed_loss(encoder, decoder, images, captions, lengths) -> torch.Tensor:
    targets = pack_padded_sequence(captions, lengths, batch_first=True)[0]
    outputs = decoder(encoder(images), captions, lengths)
    return nn.functional.cross_entropy(outputs, targets)


def seed_train_step(encoder, decoder, optimizer, images, captions, lengths) -> float:
    loss = seed_loss(encoder, decoder, images, captions, lengths)
    decoder.zero_grad()
    encoder.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


# --- one function, two implementations ------------------------------------------------
def copy_seed_weights(encoder: EncoderCNN, decoder: DecoderRNN, model: Captioner) -> None:
    """Load the seed's weights into a captioner model built with the same encoder/show-tell."""
    if encoder.backbone_name == "resnet152":
        prefixes = {"0.": "stem.0.", "1.": "stem.1.", "4.": "layer1.", "5.": "layer2.", "6.": "layer3.", "7.": "layer4."}
    else:
        prefixes = {"conv_stem.": "stem.0.", "bn1.": "stem.1.", "blocks.": "blocks.", "conv_head.": "head.0.",
                    "bn2.": "head.1."}
    backbone = {}
    for key, value in encoder.resnet.state_dict().items():
        prefix = next(p for p in prefixes if key.startswith(p))
        backbone[prefixes[prefix] + key[len(prefix):]] = value
    missing, unexpected = model.encoder.load_state_dict(backbone, strict=False)
    if unexpected or any(not k.startswith("classifier.") for k in missing):  # lite0 keeps an unused classifier
        raise RuntimeError(f"seed → captioner encoder weights: missing {missing}, unexpected {unexpected}")
    head = {f"image_proj.0.{k}": v for k, v in encoder.linear.state_dict().items()}
    head |= {f"image_proj.1.{k}": v for k, v in encoder.bn.state_dict().items()}
    head |= {f"embed.{k}": v for k, v in decoder.embed.state_dict().items()}
    head |= {f"lstm.{k}": v for k, v in decoder.lstm.state_dict().items()}
    head |= {f"head.{k}": v for k, v in decoder.linear.state_dict().items()}
    model.decoder.load_state_dict(head, strict=True)


def build_pair(encoder_name: str, vocab: Vocabulary, device: torch.device):
    """The seed's modules and a captioner show-tell with the same weights."""
    torch.manual_seed(0)
    encoder = EncoderCNN(EMBED_SIZE, encoder_name)
    decoder = DecoderRNN(EMBED_SIZE, HIDDEN_SIZE, len(vocab))
    model = Captioner.build(encoder_name, "show-tell", vocab, encoder_options={"pretrained": False},
                            decoder_options={"embed_dim": EMBED_SIZE, "hidden_dim": HIDDEN_SIZE})
    copy_seed_weights(encoder, decoder, model)
    return encoder.to(device), decoder.to(device), model.to(device)


# --- synthetic data -------------------------------------------------------------------
@dataclass
class Data:
    paths: list[str]  # one per pair (an image repeats when it has several captions)
    images: list[str]
    captions: list[str]
    vocab: Vocabulary


def make_data(folder: Path, images: int, captions_per_image: int, vocab_size: int, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab_size - 4)]
    image_paths = []
    for i in range(images):
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path, quality=90)
        image_paths.append(str(path))
    # Zipf-like word frequencies, lengths 8–20 words
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    captions, paths = [], []
    for path in image_paths:
        for _ in range(captions_per_image):
            captions.append(" ".join(rng.choice(words, int(rng.integers(8, 21)), p=weights)))
            paths.append(path)
    return Data(paths, image_paths, captions, Vocabulary(words))


# --- timing -----------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    def __init__(self, device):
        self.device = device

    def __enter__(self):
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def bench_seed_training(encoder, decoder, data: Data, args, device, model_preprocess) -> dict:
    ids = [data.vocab.encode(c, 20) for c in data.captions]
    normalise = (model_preprocess.mean, model_preprocess.std)
    loader = DataLoader(SeedPairs(data.paths, ids, seed_train_transform(*normalise)), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.num_workers, collate_fn=seed_collate)
    optimizer = seed_optimizer(encoder, decoder)
    encoder.train(), decoder.train()
    images, captions, lengths = next(iter(loader))  # warm-up step, not timed
    seed_train_step(encoder, decoder, optimizer, images.to(device), captions.to(device), lengths)
    with Clock(device) as clock:
        for images, captions, lengths in loader:
            seed_train_step(encoder, decoder, optimizer, images.to(device), captions.to(device), lengths)
    return {"seconds": clock.seconds, "pairs_per_s": len(ids) / clock.seconds}


def bench_captioner_training(model: Captioner, data: Data, args, device, cache_root: Path) -> dict:
    per_image = args.captions_per_image
    examples = [Example(str(i), Path(path), data.captions[i * per_image : (i + 1) * per_image])
                for i, path in enumerate(data.images)]
    config = TrainConfig(batch_size=args.batch_size, progress=False, log_every=0)
    pairs = CaptionPairs(examples, list(range(len(examples))), model.vocab, 20)
    sampler = BucketBatchSampler(pairs.lengths, args.batch_size, seed=0)
    objective = create_objective(config.objective, vocab=model.vocab, config=config)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, len(sampler))
    with torch.inference_mode():  # warm-up, not timed: first CNN call, first LSTM call
        model.eval()
        model.caption_tensor(torch.zeros(2, 3, 224, 224, device=device), beam_size=1, max_length=2)

    def epoch(batches, number):
        sampler.set_epoch(number)
        context = TrainContext(model, objective, batches, optimizer, scheduler, config, device)
        return train_one_epoch(context, Progress(epoch=number))

    with Clock(device) as extraction:  # the cache key hashes the encoder weights: counted too
        cache = FeatureCache(cache_root, model.encoder, model.preprocess, data.images,
                             with_grid=model.decoder.needs_grid)
        cache.build(device, progress=False, num_workers=args.num_workers)
    batches = FeatureBatches(cache, pairs, sampler, device)
    with Clock(device) as first:
        epoch(batches, 0)
    later = []
    for number in range(1, 1 + args.cached_epochs):
        with Clock(device) as clock:
            epoch(batches, number)
        later.append(clock.seconds)
    first_seconds = extraction.seconds + first.seconds
    later_seconds = statistics.mean(later)
    result = {
        "extraction_seconds": extraction.seconds,
        "first_epoch_seconds": first_seconds,
        "first_epoch_pairs_per_s": len(pairs) / first_seconds,
        "cached_epoch_seconds": later_seconds,
        "cached_epoch_pairs_per_s": len(pairs) / later_seconds,
    }
    if device.type == "cpu" and onnx_available() and not args.compile:  # train --onnx: the same, in ONNX Runtime
        with Clock(device) as onnx_extraction:  # reuses the .onnx file the captioning runs exported
            FeatureCache(cache_root / "onnx", model.encoder, model.preprocess, data.images,
                         with_grid=model.decoder.needs_grid).build(device, progress=False, onnx=True,
                                                                   num_workers=args.num_workers)
        onnx_first = onnx_extraction.seconds + first.seconds
        result |= {"onnx_extraction_seconds": onnx_extraction.seconds,
                   "onnx_first_epoch_pairs_per_s": len(pairs) / onnx_first}
    return result


def seed_caption_batch(encoder, decoder, vocab, images) -> list[str]:
    sampled = decoder.sample(encoder(images)).cpu().numpy()
    sentences = []
    for ids in sampled:  # sample.py: words until <end>
        words = []
        for word_id in ids:
            word = vocab.itos[word_id]
            words.append(word)
            if word == "<end>":
                break
        sentences.append(" ".join(words))
    return sentences


def bench_seed_captioning(encoder, decoder, data: Data, args, device, model_preprocess, warm_up=True) -> dict:
    encoder.eval(), decoder.eval()
    transform = seed_sample_transform(model_preprocess.mean, model_preprocess.std)
    loader = DataLoader(ImagesOnly(data.images, transform), batch_size=args.batch_size, num_workers=args.num_workers)
    with torch.no_grad():
        if warm_up:
            seed_caption_batch(encoder, decoder, data.vocab, next(iter(loader)).to(device))
        with Clock(device) as clock:
            for images in loader:
                seed_caption_batch(encoder, decoder, data.vocab, images.to(device))
        latencies = []
        for path in data.images[: args.latency_repeats + 1]:
            with Clock(device) as one:
                image = transform(Image.open(path).convert("RGB"))[None].to(device)
                seed_caption_batch(encoder, decoder, data.vocab, image)
            latencies.append(one.seconds)
    return {"images_per_s": len(data.images) / clock.seconds, "latency_ms": 1000 * statistics.median(latencies[1:])}


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


class ImagesOnly(Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def bench_captioner_captioning(model: Captioner, data: Data, args, device, beam_size: int, amp: bool = False,
                               onnx: bool = False, warm_up: bool = True) -> dict:
    """What ``captioner caption DIR`` does: decode in workers, encode + decode in batches.
    ``amp``: bf16 autocast + channels-last (CUDA); ``onnx``: the encoder in ONNX Runtime
    (``caption --onnx``, CPU; exported once into $CAPTIONER_CACHE, not timed)."""
    model.eval()
    if onnx:
        model.use_onnxruntime()
    loader = DataLoader(ImageRows(data.images, model.preprocess), batch_size=args.batch_size,
                        num_workers=args.num_workers, pin_memory=device.type == "cuda")
    if amp:
        model.encoder.to(memory_format=torch.channels_last)

    def caption(pixels):
        pixels = pixels.to(device, non_blocking=True)
        if amp:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            return model.caption_tensor(pixels, beam_size=beam_size)

    if warm_up:
        caption(next(iter(loader))[0])
    with Clock(device) as clock:
        for pixels, _ in loader:
            caption(pixels)
    latencies = []
    for path in data.images[: args.latency_repeats + 1]:
        with Clock(device) as one:
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                model.caption(path, beam_size=beam_size)
        latencies.append(one.seconds)
    if amp:
        model.encoder.to(memory_format=torch.contiguous_format)
    if onnx:
        model.use_onnxruntime(False)
    return {"images_per_s": len(data.images) / clock.seconds, "latency_ms": 1000 * statistics.median(latencies[1:])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=128, help="the seed's default")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--captions-per-image", type=int, default=1, help="COCO has 5")
    parser.add_argument("--vocab-size", type=int, default=10_000)
    parser.add_argument("--encoder", default="resnet152", choices=["resnet152", "efficientnet_lite0"])
    parser.add_argument("--num-workers", type=int, default=None, help="image-decoding workers (default: 0 on CPU, 8 on CUDA)")
    parser.add_argument("--cached-epochs", type=int, default=2, help="epochs timed after the first (from the cache)")
    parser.add_argument("--latency-repeats", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="captioning passes per method (best kept)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile captioner's encoder (extraction and captioning); keep it only if faster")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.num_workers is None:
        args.num_workers = 8 if device.type == "cuda" else 0

    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        tmp = Path(tmp)
        os.environ["CAPTIONER_CACHE"] = str(tmp / "captioner-cache")  # the ONNX export goes here
        (tmp / "images").mkdir()
        data = make_data(tmp / "images", args.images, args.captions_per_image, args.vocab_size)
        encoder, decoder, model = build_pair(args.encoder, data.vocab, device)
        if args.compile:
            model.encoder.features = torch.compile(model.encoder.features, dynamic=True)
            with torch.inference_mode():  # compile now, for the batch sizes timed later
                for size in (args.batch_size, 64, 1):
                    model.encoder(torch.zeros(size, 3, 224, 224, device=device))
        print(f"{args.encoder} → show-tell, vocabulary {len(data.vocab)}, {args.images} images × "
              f"{args.captions_per_image} captions, batch {args.batch_size}, {device}"
              f" ({torch.get_num_threads()} threads, {args.num_workers} workers)", file=sys.stderr)
        results = {"config": vars(args) | {"torch": torch.__version__,
                                            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                                            else "cpu"}}
        # Captioning first: training changes the weights, and both should caption with the same ones.
        # Interleaved repeats, best kept: on a shared machine the load changes under a run.
        runs = {
            "seed_greedy": lambda first: bench_seed_captioning(encoder, decoder, data, args, device,
                                                               model.preprocess, warm_up=first),
            "captioner_beam5": lambda first: bench_captioner_captioning(model, data, args, device, 5, warm_up=first),
            "captioner_greedy": lambda first: bench_captioner_captioning(model, data, args, device, 1, warm_up=first),
        }
        if device.type == "cuda":
            runs["captioner_beam5_bf16"] = lambda first: bench_captioner_captioning(model, data, args, device, 5,
                                                                                    amp=True, warm_up=first)
        elif onnx_available() and not args.compile:  # --compile times torch.compile alone
            runs["captioner_beam5_onnx"] = lambda first: bench_captioner_captioning(model, data, args, device, 5,
                                                                                    onnx=True, warm_up=first)
        for repeat in range(args.repeats):
            for key, run in runs.items():
                result = run(repeat == 0)
                best = results.setdefault(key, result)
                best["images_per_s"] = max(best["images_per_s"], result["images_per_s"])
                best["latency_ms"] = min(best["latency_ms"], result["latency_ms"])
        results["seed_training"] = bench_seed_training(encoder, decoder, data, args, device, model.preprocess)
        results["captioner_training"] = bench_captioner_training(model, data, args, device, tmp / "cache")
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


def report(results: dict) -> None:
    seed, ours = results["seed_training"], results["captioner_training"]
    rows = [
        ("training, seed (CNN every step)", seed["pairs_per_s"], None),
        ("training, captioner epoch 1 (extraction incl.)", ours["first_epoch_pairs_per_s"],
         ours["first_epoch_pairs_per_s"] / seed["pairs_per_s"]),
        ("training, captioner later epochs (cache)", ours["cached_epoch_pairs_per_s"],
         ours["cached_epoch_pairs_per_s"] / seed["pairs_per_s"]),
    ]
    if "onnx_first_epoch_pairs_per_s" in ours:
        rows.insert(2, ("training, captioner epoch 1, --onnx extraction", ours["onnx_first_epoch_pairs_per_s"],
                        ours["onnx_first_epoch_pairs_per_s"] / seed["pairs_per_s"]))
    greedy = results["seed_greedy"]
    for key, label in (("seed_greedy", "captioning, seed greedy (20 steps)"),
                       ("captioner_greedy", "captioning, captioner greedy"),
                       ("captioner_beam5", "captioning, captioner beam 5"),
                       ("captioner_beam5_bf16", "captioning, captioner beam 5, bf16 + channels-last"),
                       ("captioner_beam5_onnx", "captioning, captioner beam 5, --onnx encoder")):
        if key in results:
            rows.append((label, results[key]["images_per_s"], None if key == "seed_greedy"
                         else results[key]["images_per_s"] / greedy["images_per_s"]))
    print(f"{'':52s} {'per s':>9s} {'× seed':>8s}")
    for label, rate, ratio in rows:
        print(f"{label:52s} {rate:9.2f} {'' if ratio is None else f'{ratio:7.2f}×':>8s}")
    print("single-image latency (load → caption), median ms: " + ", ".join(
        f"{key} {results[key]['latency_ms']:.0f}" for key in
        ("seed_greedy", "captioner_greedy", "captioner_beam5", "captioner_beam5_bf16", "captioner_beam5_onnx")
        if key in results))
    print(f"(training rates are (image, caption) pairs per second; captioner's first epoch spent "
          f"{ours['extraction_seconds']:.1f} s of {ours['first_epoch_seconds']:.1f} s extracting features)")


if __name__ == "__main__":
    main()
