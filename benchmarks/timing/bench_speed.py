"""Training and captioning speed: the seed's loop vs captioner, one process, same data.

The seed is yunjey's pytorch-tutorial ``image_captioning`` as the project started from it,
rewritten here only as far as a benchmark needs (no pickles, no hub weights): a frozen
ResNet-152 recomputed for every (image, caption) pair at every step, Linear → BatchNorm1d,
a packed 1-layer LSTM, Adam 1e-3, greedy ``sample`` for 20 steps. Captioner trains
show-tell on its feature cache (extracted in the first epoch, read in the others) with the
real ``train_one_epoch``, and captions with batched beam search (beam 5). Every captioner row
is timed on the default path (``runtime auto``: ONNX Runtime for the frozen encoder on the CPU
when installed) and again on each forced path (``--runtime torch``, ``--runtime onnx``); on
CUDA also bf16 autocast + channels-last captioning. It also counts the encoder's FLOPs and
compares the achieved GFLOP/s with a matmul peak measured in the same run (fp32, bf16), and
times one-image latency of the bundled model. ``--json-out FILE`` writes the table, a
``speedup`` object (seed time / captioner time, > 1 is faster: ``train_epoch1``,
``train_later``, ``caption_beam5``, ``latency_beam5``, and ``*_torch`` / ``*_onnx`` for the
forced paths) and the raw timings.

The images are COCO-like JPEG photos: 640×480 (70 %) or 480×640 random crops of the photos in
``benchmarks/timing/photos/``, mirrored at random, quality 75–95. Captioner (extraction, captioning)
reads them as they are; the seed trains on the 256×256 copies its ``resize.py`` makes first
(made here untimed, as the seed's instructions do) and captions the originals. Both get the same
random captions (8–20 words, ~10k-word vocabulary), the same batch size and the same weights
(copied from the seed's modules; ``tests/test_bench_parity.py`` checks both compute the same
loss). Weights are random: no hub downloads here.

``--captions-per-image 5`` (COCO has 5) adds COCO-like training rows beside the one-caption
rows: the features are extracted once per image and read for each of its captions, where the
seed runs its CNN for every pair (its pairs/s does not depend on the captions per image, so it
is measured once, on one caption per image). Feature extraction is also compared with its two
ceilings, each measured alone the way extraction runs it: the input pipeline (read, decode,
preprocess, to the device; no encoder) and the encoder (on pixels already there); the target is
≥ 90 % of the slower.

    python -m benchmarks.timing.bench_speed --device cpu --images 64 --batch-size 16 --json-out bench.json
    python -m benchmarks.timing.bench_speed --device cuda --images 4096 --batch-size 128 --num-workers 12 --captions-per-image 5
"""
from __future__ import annotations

import argparse
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
from captioner.encoders.onnx_runtime import onnxruntime_available
from captioner.objectives import create_objective
from captioner.train.config import TrainConfig
from captioner.data.batches import FeatureBatches
from captioner.train.loop import TrainContext, make_optimizer, make_scheduler, train_one_epoch
from captioner.train.state import Progress

EMBED_SIZE, HIDDEN_SIZE, SEED_MAX_STEPS = 256, 512, 20
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTOS = Path(__file__).parent / "photos"


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
    images: list[str]  # the COCO-like JPEGs: what captioner and both captioning loops read
    seed_images: list[str]  # their 256×256 copies (the seed's resize.py): what the seed trains on
    captions: list[list[str]]  # per image
    vocab: Vocabulary


def make_photo(job: tuple[str, str, str, int]) -> None:
    """One COCO-like JPEG (a random crop of a source photo, 640×480 or 480×640, maybe mirrored)
    and the seed's 256×256 copy of it (``resize.py``: LANCZOS, saved in the image's format)."""
    source, path, seed_path, seed = job
    rng = np.random.default_rng(seed)
    image = Image.open(source).convert("RGB")
    scale = rng.uniform(0.5, 1.0)
    width, height = int(image.width * scale), int(image.height * scale)
    x, y = int(rng.integers(0, image.width - width + 1)), int(rng.integers(0, image.height - height + 1))
    size = (640, 480) if rng.random() < 0.7 else (480, 640)
    photo = image.crop((x, y, x + width, y + height)).resize(size, Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    photo.save(path, "JPEG", quality=int(rng.integers(75, 96)))
    photo.resize((256, 256), Image.Resampling.LANCZOS).save(seed_path, "JPEG")


def make_data(folder: Path, images: int, captions_per_image: int, vocab_size: int, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(vocab_size - 4)]
    sources = sorted(str(p) for p in PHOTOS.glob("*.jpg"))
    (folder / "seed").mkdir(parents=True, exist_ok=True)
    image_paths = [str(folder / f"{i:06d}.jpg") for i in range(images)]
    seed_paths = [str(folder / "seed" / f"{i:06d}.jpg") for i in range(images)]
    jobs = [(sources[i % len(sources)], image_paths[i], seed_paths[i], seed * 1_000_003 + i) for i in range(images)]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(make_photo, jobs, chunksize=16)
    # Zipf-like word frequencies, lengths 8–20 words
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    captions = [[" ".join(rng.choice(words, int(rng.integers(8, 21)), p=weights)) for _ in range(captions_per_image)]
                for _ in image_paths]
    return Data(image_paths, seed_paths, captions, Vocabulary(words))


# --- timing -----------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall seconds, and the CPU seconds of this process (``cpu_seconds``): on a shared machine
    the other processes' load shows in the first, hardly in the second."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        synchronize(self.device)
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start


def bench_seed_training(encoder, decoder, data: Data, args, device, model_preprocess) -> dict:
    """One epoch over the first caption of each image (the seed's cost is per pair)."""
    ids = [data.vocab.encode(captions[0], 20) for captions in data.captions]
    normalise = (model_preprocess.mean, model_preprocess.std)
    loader = DataLoader(SeedPairs(data.seed_images, ids, seed_train_transform(*normalise)), batch_size=args.batch_size, shuffle=True,
                        num_workers=args.num_workers, collate_fn=seed_collate)
    optimizer = seed_optimizer(encoder, decoder)
    encoder.train(), decoder.train()
    images, captions, lengths = next(iter(loader))  # warm-up step, not timed
    seed_train_step(encoder, decoder, optimizer, images.to(device), captions.to(device), lengths)
    with Clock(device) as clock:
        for images, captions, lengths in loader:
            seed_train_step(encoder, decoder, optimizer, images.to(device), captions.to(device), lengths)
    return {"seconds": clock.seconds, "pairs_per_s": len(ids) / clock.seconds, "cpu_pairs_per_s": len(ids) / clock.cpu_seconds}


# --- which engine runs captioner's encoder ----------------------------------------------
def runtimes(device: torch.device, compile: bool) -> list[str]:
    """The paths timed: the default (``auto``) first, then each forced one that exists here.
    Another engine is one more name here and one more branch in ``use_path``."""
    if compile:  # --compile times torch.compile alone
        return ["auto"]
    names = ["auto", "torch"]
    if device.type == "cpu" and onnxruntime_available():
        names.append("onnx")
    return names


def use_path(model: Captioner, runtime: str, device: torch.device | None = None) -> Captioner:
    """The model on this path; with ``device``, also set up (ONNX session opened), untimed."""
    model.use_runtime(runtime)
    if device is not None:
        with torch.inference_mode():
            model.encode(torch.zeros(1, 3, model.preprocess.crop_size, model.preprocess.crop_size, device=device))
    return model


def bench_captioner_training(model: Captioner, data: Data, args, device, cache_root: Path) -> dict:
    """Epoch 1 (extraction + an epoch from the cache) and later epochs, on one caption per image
    and, with more, on all of them (``coco_*``: extraction timed once, shared)."""
    config = TrainConfig(batch_size=args.batch_size, progress=False, log_every=0)
    objective = create_objective(config.objective, vocab=model.vocab, config=config)
    with torch.inference_mode():  # warm-up, not timed: first CNN call, first LSTM call
        model.eval()
        model.caption_pixels(torch.zeros(2, 3, 224, 224, device=device), beam_size=1, max_length=2)

    def extract(runtime: str):
        # The cache key hashes the encoder weights: counted too. Each runtime fills its own
        # folder; the ONNX file exported by the captioning runs is reused (export not timed).
        with Clock(device) as clock:
            cache = FeatureCache(cache_root / runtime, model.encoder, model.preprocess, data.images,
                                 with_grid=model.decoder.needs_grid)
            with Clock(device) as build:
                cache.build(device, progress=False, num_workers=args.num_workers, runtime=runtime)
        return cache, clock, build

    def epochs(captions_per_image: int) -> tuple[int, Clock, list[Clock]]:
        """(pairs, first epoch's clock, later epochs' clocks), all from the cache."""
        examples = [Example(str(i), Path(path), data.captions[i][:captions_per_image])
                    for i, path in enumerate(data.images)]
        pairs = CaptionPairs(examples, list(range(len(examples))), model.vocab, 20)
        sampler = BucketBatchSampler(pairs.lengths, args.batch_size, seed=0)
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, len(sampler))
        batches = FeatureBatches(cache, pairs, sampler, device)
        clocks = []
        for number in range(1 + args.cached_epochs):
            sampler.set_epoch(number)
            context = TrainContext(model, objective, batches, optimizer, scheduler, config, device)
            with Clock(device) as clock:
                train_one_epoch(context, Progress(epoch=number))
            clocks.append(clock)
        return len(pairs), clocks[0], clocks[1:]

    extraction, builds = {}, {}
    cache, extraction["auto"], builds["auto"] = extract("auto")
    n_pairs, first, later = epochs(1)
    for runtime in runtimes(device, args.compile)[1:]:
        _, extraction[runtime], builds[runtime] = extract(runtime)
    later_seconds = statistics.mean(c.seconds for c in later)
    result = {
        "first_epoch_seconds": first.seconds,  # training alone, from the cache
        "cached_epoch_seconds": later_seconds,
        "cached_epoch_pairs_per_s": n_pairs / later_seconds,
        "cpu_cached_epoch_pairs_per_s": n_pairs / statistics.mean(c.cpu_seconds for c in later),
    }
    for runtime, clock in extraction.items():
        result[f"extraction_seconds_{runtime}"] = clock.seconds
        result[f"build_images_per_s_{runtime}"] = len(data.images) / builds[runtime].seconds
        result[f"first_epoch_pairs_per_s_{runtime}"] = n_pairs / (clock.seconds + first.seconds)
        result[f"cpu_first_epoch_pairs_per_s_{runtime}"] = n_pairs / (clock.cpu_seconds + first.cpu_seconds)
    if args.captions_per_image > 1:
        n_pairs, first, later = epochs(args.captions_per_image)
        clock = extraction["auto"]
        result["coco"] = {
            "captions_per_image": args.captions_per_image,
            "first_epoch_pairs_per_s": n_pairs / (clock.seconds + first.seconds),
            "cpu_first_epoch_pairs_per_s": n_pairs / (clock.cpu_seconds + first.cpu_seconds),
            "cached_epoch_pairs_per_s": n_pairs / statistics.mean(c.seconds for c in later),
            "cpu_cached_epoch_pairs_per_s": n_pairs / statistics.mean(c.cpu_seconds for c in later),
        }
    return result


def bench_extraction_ceilings(model: Captioner, data: Data, args, device, cache_root: Path) -> dict:
    """Images/s of the extraction's two halves, each alone and run as the default path's build
    ran them (its runtime, the precision mode and JPEG decoding its meta.json records, its
    loader): the input pipeline to pixels on the device and the encoder on pixels already there;
    and of a build that keeps the grid too."""
    from captioner.data.extraction import mode_encoder, pixel_batches
    from captioner.encoders.onnx_runtime import runtime_encoder
    from captioner.encoders.precision import FP32, candidate_modes

    n, batch = len(data.images), args.batch_size
    built = FeatureCache(cache_root / "auto", model.encoder, model.preprocess, data.images,
                         with_grid=model.decoder.needs_grid)
    meta = json.loads(built.meta_path.read_text())
    jpeg_on_device = meta["jpeg_decoding"]["jpegs_on_device"]
    batches = pixel_batches(data.images, [(0, n)], model.preprocess, device, batch, args.num_workers,
                            jpeg_on_device=jpeg_on_device)
    with Clock(device) as loader:  # worker start-up included: extraction pays it too
        for _ in batches:
            pass
    mode = next((m for m in candidate_modes(model.encoder, device) if m.name == meta["precision"]["mode"]), FP32)
    onnx = runtime_encoder("auto", model.encoder, model.preprocess.crop_size, device, images=n)
    encode = mode_encoder(onnx or mode.prepare(model.encoder), mode, device)
    pixels = torch.randn(batch, 3, model.preprocess.crop_size, model.preprocess.crop_size, device=device)
    with torch.inference_mode():
        encode(pixels)  # warm-up
        with Clock(device) as encoding:
            for _ in range(-(-n // batch)):
                encode(pixels)
    cache = FeatureCache(cache_root / "grid", model.encoder, model.preprocess, data.images, with_grid=True)
    with Clock(device) as grid:
        cache.build(device, progress=False, num_workers=args.num_workers)
    return {"input_images_per_s": n / loader.seconds, "encoder_images_per_s": -(-n // batch) * batch / encoding.seconds,
            "grid_extraction_images_per_s": n / grid.seconds, "precision": meta["precision"]["mode"],
            "jpeg_decoding": meta["jpeg_decoding"], "jpeg_on_device": jpeg_on_device}


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


def timings(images: int, clock: Clock, latencies: list[Clock]) -> dict:
    """Throughput and median one-image latency, on wall time and on this process's CPU time."""
    return {"images_per_s": images / clock.seconds, "latency_ms": 1000 * statistics.median(c.seconds for c in latencies),
            "cpu_images_per_s": images / clock.cpu_seconds,
            "cpu_latency_ms": 1000 * statistics.median(c.cpu_seconds for c in latencies)}


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
            latencies.append(one)
    return timings(len(data.images), clock, latencies[1:])


class ImagesOnly(Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB"))

def bench_captioner_captioning(model: Captioner, data: Data, args, device, beam_size: int, runtime: str = "auto",
                               amp: bool = False, warm_up: bool = True) -> dict:
    """What ``captioner caption DIR [--runtime R]`` does: decode in workers, encode + decode in
    batches. ``amp``: bf16 autocast + channels-last (CUDA). The ONNX export happens in the
    warm-up (once per weights, cached in $CAPTIONER_CACHE): not timed."""
    model.eval()
    use_path(model, runtime, device)
    loader = DataLoader(ImageRows(data.images, model.preprocess), batch_size=args.batch_size,
                        num_workers=args.num_workers, pin_memory=device.type == "cuda")
    if amp:
        model.encoder.to(memory_format=torch.channels_last)

    def caption(pixels):
        pixels = pixels.to(device, non_blocking=True)
        if amp:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, torch.bfloat16, enabled=amp):
            return model.caption_pixels(pixels, beam_size=beam_size)

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
        latencies.append(one)
    if amp:
        model.encoder.to(memory_format=torch.contiguous_format)
    engine = "onnx" if model._onnx_encoder is not None else "torch"
    use_path(model, "auto")
    return timings(len(data.images), clock, latencies[1:]) | {"engine": engine}


def bench_bundled_latency(args, beam_size: int = 5) -> dict:
    """The bundled model, one example image, load → caption, per runtime: median ms."""
    from captioner.model import default_model_dir

    images = sorted(str(p) for p in (Path(__file__).parents[2] / "examples").glob("*.png"))
    rows = {}
    for runtime in runtimes(torch.device("cpu"), False):
        model = use_path(Captioner.from_pretrained(default_model_dir()), runtime)
        with Clock(torch.device("cpu")) as first:
            caption = model.caption(images[0], beam_size=beam_size)  # first call: session (and export) set up
        samples = []
        for path in images[: args.latency_repeats]:
            with Clock(torch.device("cpu")) as one:
                model.caption(path, beam_size=beam_size)
            samples.append(one.seconds)
        rows[runtime] = {"latency_ms": 1000 * statistics.median(samples), "first_call_ms": 1000 * first.seconds,
                         "caption": caption.text}
    return rows


# --- how close to the machine's limit ---------------------------------------------------
def encoder_flops(model: Captioner, device: torch.device) -> int:
    """FLOPs of one 224² image through the encoder (multiply-add = 2), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.encoder(torch.zeros(1, 3, 224, 224, device=device))
    return counter.get_total_flops()


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 1024) -> tuple[float, float]:
    """One n×n matmul's (wall, CPU-time) GFLOP/s: the peak the encoder is compared with."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    with Clock(device) as clock:
        a @ b
    return 2 * n**3 / clock.seconds / 1e9, 2 * n**3 / max(clock.cpu_seconds, 1e-9) / 1e9


def bench_encoder(model: Captioner, args, device, flops: int, rounds: int = 3) -> dict:
    """The encoder alone on preprocessed pixels, per runtime, at the benchmark's batch size and
    at batch 1 (the latency case): images/s and achieved GFLOP/s, and the matmul peak (fp32,
    bf16) measured between them, best of ``rounds``. Achieved/peak is taken on CPU time
    (``cpu_*``) too: on a shared machine wall time mostly measures the other processes."""
    best: dict[str, dict] = {}

    def keep(key: str, wall: float, cpu: float) -> None:
        row = best.setdefault(key, {"gflop_per_s": 0.0, "cpu_gflop_per_s": 0.0})
        row["gflop_per_s"], row["cpu_gflop_per_s"] = max(row["gflop_per_s"], wall), max(row["cpu_gflop_per_s"], cpu)

    for _ in range(rounds):  # interleaved: the load changes under a run
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            keep(f"matmul_{name}", *matmul_gflops(device, dtype))
        for runtime in runtimes(device, args.compile):
            use_path(model, runtime, device)
            for batch in sorted({args.batch_size, 1}):
                pixels = torch.randn(batch, 3, 224, 224, device=device)
                with torch.inference_mode(), Clock(device) as clock:
                    model.encode(pixels)
                keep(f"{runtime}_batch{batch}", flops * batch / clock.seconds / 1e9,
                     flops * batch / max(clock.cpu_seconds, 1e-9) / 1e9)
    use_path(model, "auto")
    for key, row in best.items():
        if not key.startswith("matmul_"):
            row["images_per_s"] = row["gflop_per_s"] * 1e9 / flops
    return best


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
    parser.add_argument("--json-out", "--json", dest="json_out", metavar="FILE",
                        help="also write the table, the speedups over the seed and the raw timings here as JSON")
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
                                            else "cpu", "threads": torch.get_num_threads()},
                   "load_average_start": list(os.getloadavg())}
        if "onnx" in runtimes(device, args.compile):
            with Clock(device) as export:  # once per weights, ever (cached): ONNX export + session
                use_path(model, "onnx")
            results["onnx_export_seconds"] = export.seconds
        # Captioning first: training changes the weights, and both should caption with the same ones.
        # Interleaved repeats, best kept: on a shared machine the load changes under a run.
        runs = {"seed_greedy": lambda first: bench_seed_captioning(encoder, decoder, data, args, device,
                                                                   model.preprocess, warm_up=first)}
        for runtime in runtimes(device, args.compile):
            runs[f"captioner_beam5_{runtime}"] = (
                lambda first, runtime=runtime: bench_captioner_captioning(model, data, args, device, 5, runtime,
                                                                          warm_up=first))
        runs["captioner_greedy_auto"] = lambda first: bench_captioner_captioning(model, data, args, device, 1,
                                                                                 warm_up=first)
        if device.type == "cuda":
            runs["captioner_beam5_bf16"] = lambda first: bench_captioner_captioning(model, data, args, device, 5,
                                                                                    amp=True, warm_up=first)
        for repeat in range(args.repeats):
            for key, run in runs.items():
                result = run(repeat == 0)
                best = results.setdefault(key, result)
                for rate in ("images_per_s", "cpu_images_per_s"):
                    best[rate] = max(best[rate], result[rate])
                for latency in ("latency_ms", "cpu_latency_ms"):
                    best[latency] = min(best[latency], result[latency])
        flops = encoder_flops(model, device)
        results["encoder"] = {"gflop_per_image": flops / 1e9, **bench_encoder(model, args, device, flops)}
        if device.type == "cpu":
            results["bundled_latency_beam5"] = bench_bundled_latency(args)
        results["seed_training"] = bench_seed_training(encoder, decoder, data, args, device, model.preprocess)
        results["captioner_training"] = bench_captioner_training(model, data, args, device, tmp / "cache")
        results["extraction_ceilings"] = bench_extraction_ceilings(model, data, args, device, tmp / "cache")
        results["load_average_end"] = list(os.getloadavg())
    table = summarise(results)
    report(table, results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(table | {"raw": results}, indent=2))
    return table | {"raw": results}


def summarise(results: dict) -> dict:
    """The table: ``rows`` (label, rate, unit, × seed) and ``speedup`` (seed time / captioner
    time, > 1 is faster) for the default path (``train_epoch1`` …) and each forced one
    (``train_epoch1_torch`` …); ``speedup_cpu_time``: the same ratios on CPU seconds."""
    seed, ours, greedy = results["seed_training"], results["captioner_training"], results["seed_greedy"]
    speedup = {"train_later": ours["cached_epoch_pairs_per_s"] / seed["pairs_per_s"]}
    training = [{"label": "training, seed (CNN every step)", "rate": seed["pairs_per_s"], "unit": "pairs/s"},
                {"label": "training, captioner later epochs (cache)", "rate": ours["cached_epoch_pairs_per_s"],
                 "unit": "pairs/s", "x_seed": speedup["train_later"]}]
    captioning = [{"label": "captioning, seed greedy (20 steps)", "rate": greedy["images_per_s"], "unit": "images/s"}]
    latency = [{"label": "one image load → caption, seed greedy", "rate": greedy["latency_ms"], "unit": "ms"}]
    paths = [k.removeprefix("captioner_beam5_") for k in results
             if k.startswith("captioner_beam5_") and k != "captioner_beam5_bf16"]
    for runtime in paths:
        suffix = "" if runtime == "auto" else f"_{runtime}"
        path = "default path" if runtime == "auto" else f"--runtime {runtime}"
        if f"first_epoch_pairs_per_s_{runtime}" in ours:
            rate = ours[f"first_epoch_pairs_per_s_{runtime}"]
            speedup["train_epoch1" + suffix] = rate / seed["pairs_per_s"]
            training.append({"label": f"training, captioner epoch 1 (extraction incl.), {path}", "rate": rate,
                             "unit": "pairs/s", "x_seed": speedup["train_epoch1" + suffix]})
        beam = results[f"captioner_beam5_{runtime}"]
        speedup["caption_beam5" + suffix] = beam["images_per_s"] / greedy["images_per_s"]
        speedup["latency_beam5" + suffix] = greedy["latency_ms"] / beam["latency_ms"]
        captioning.append({"label": f"captioning, captioner beam 5, {path} ({beam['engine']})",
                           "rate": beam["images_per_s"], "unit": "images/s", "x_seed": speedup["caption_beam5" + suffix]})
        latency.append({"label": f"one image load → caption, captioner beam 5, {path}", "rate": beam["latency_ms"],
                        "unit": "ms", "x_seed": speedup["latency_beam5" + suffix]})
    if "coco" in ours:
        coco, k = ours["coco"], ours["coco"]["captions_per_image"]
        speedup["train_epoch1_coco"] = coco["first_epoch_pairs_per_s"] / seed["pairs_per_s"]
        speedup["train_later_coco"] = coco["cached_epoch_pairs_per_s"] / seed["pairs_per_s"]
        training += [{"label": f"training, captioner epoch 1 (extraction incl.), {k} captions per image (COCO-like)",
                      "rate": coco["first_epoch_pairs_per_s"], "unit": "pairs/s", "x_seed": speedup["train_epoch1_coco"]},
                     {"label": f"training, captioner later epochs, {k} captions per image (COCO-like)",
                      "rate": coco["cached_epoch_pairs_per_s"], "unit": "pairs/s", "x_seed": speedup["train_later_coco"]}]
    ceilings = results["extraction_ceilings"]
    slower = min(ceilings["input_images_per_s"], ceilings["encoder_images_per_s"])
    extraction = {"images_per_s": ours["build_images_per_s_auto"], "grid_images_per_s": ceilings["grid_extraction_images_per_s"],
                  "input_images_per_s": ceilings["input_images_per_s"], "encoder_images_per_s": ceilings["encoder_images_per_s"],
                  "of_slower_ceiling": ours["build_images_per_s_auto"] / slower,
                  "grid_of_slower_ceiling": ceilings["grid_extraction_images_per_s"] / slower,
                  "jpeg_on_device": ceilings["jpeg_on_device"], "jpeg_decoding": ceilings["jpeg_decoding"],
                  "precision": ceilings["precision"]}
    rows_extraction = [
        {"label": "feature extraction, pooled (FeatureCache.build, default path)", "rate": extraction["images_per_s"],
         "unit": "images/s", "of_ceiling": extraction["of_slower_ceiling"]},
        {"label": "feature extraction, pooled + grid", "rate": extraction["grid_images_per_s"], "unit": "images/s",
         "of_ceiling": extraction["grid_of_slower_ceiling"]},
        {"label": "ceiling: input pipeline alone (read, decode, preprocess → device)"
                  + (", JPEGs decoded on the device" if extraction["jpeg_on_device"] else ""),
         "rate": extraction["input_images_per_s"], "unit": "images/s"},
        {"label": f"ceiling: encoder alone, as extraction runs it ({extraction['precision']})",
         "rate": extraction["encoder_images_per_s"], "unit": "images/s"}]
    for key, label in (("captioner_greedy_auto", "captioning, captioner greedy, default path"),
                       ("captioner_beam5_bf16", "captioning, captioner beam 5, bf16 + channels-last")):
        if key in results:
            rate = results[key]["images_per_s"]
            captioning.append({"label": label, "rate": rate, "unit": "images/s", "x_seed": rate / greedy["images_per_s"]})
    for runtime, row in results.get("bundled_latency_beam5", {}).items():
        path = "default path" if runtime == "auto" else f"--runtime {runtime}"
        latency.append({"label": f"bundled model, one image load → caption, beam 5, {path}", "rate": row["latency_ms"],
                        "unit": "ms"})
    speedup_cpu = {"train_later": ours["cpu_cached_epoch_pairs_per_s"] / seed["cpu_pairs_per_s"]}
    for runtime in paths:
        suffix = "" if runtime == "auto" else f"_{runtime}"
        if f"cpu_first_epoch_pairs_per_s_{runtime}" in ours:
            speedup_cpu["train_epoch1" + suffix] = ours[f"cpu_first_epoch_pairs_per_s_{runtime}"] / seed["cpu_pairs_per_s"]
        beam = results[f"captioner_beam5_{runtime}"]
        speedup_cpu["caption_beam5" + suffix] = beam["cpu_images_per_s"] / greedy["cpu_images_per_s"]
        speedup_cpu["latency_beam5" + suffix] = greedy["cpu_latency_ms"] / beam["cpu_latency_ms"]
    if "coco" in ours:
        speedup_cpu["train_epoch1_coco"] = ours["coco"]["cpu_first_epoch_pairs_per_s"] / seed["cpu_pairs_per_s"]
        speedup_cpu["train_later_coco"] = ours["coco"]["cpu_cached_epoch_pairs_per_s"] / seed["cpu_pairs_per_s"]
    encoder = results["encoder"]
    peak = {name: encoder[f"matmul_{name}"] for name in ("fp32", "bf16")}
    efficiency = {key: value | {f"cpu_of_{name}_peak": value["cpu_gflop_per_s"] / peak[name]["cpu_gflop_per_s"]
                                for name in peak}
                  for key, value in encoder.items() if isinstance(value, dict) and not key.startswith("matmul_")}
    return {"rows": training + rows_extraction + captioning + latency, "speedup": speedup,
            "speedup_cpu_time": speedup_cpu, "extraction": extraction,
            "encoder_efficiency": {"gflop_per_image": encoder["gflop_per_image"], "matmul_peak": peak, **efficiency}}


def report(table: dict, results: dict) -> None:
    print(f"{'':86s} {'value':>9s} {'':8s} {'× seed':>8s}")
    for row in table["rows"]:
        ratio = row.get("x_seed")
        note = f"{ratio:7.2f}×" if ratio is not None else (
            f"{100 * row['of_ceiling']:5.0f}% of the slower ceiling" if "of_ceiling" in row else "")
        print(f"{row['label']:86s} {row['rate']:9.2f} {row['unit']:8s} {note:>8s}")
    ours = results["captioner_training"]
    print(f"(training rates are (image, caption) pairs per second; the default path's first epoch spent "
          f"{ours['extraction_seconds_auto']:.1f} s extracting features and {ours['first_epoch_seconds']:.1f} s "
          f"training" + (f"; the one-time ONNX export took {results['onnx_export_seconds']:.1f} s, not counted)"
                         if "onnx_export_seconds" in results else ")"))
    efficiency = table["encoder_efficiency"]
    peak = efficiency["matmul_peak"]
    print(f"encoder {efficiency['gflop_per_image']:.2f} GFLOP/image; matmul peak (GFLOP/s per CPU second) "
          f"fp32 {peak['fp32']['cpu_gflop_per_s']:.0f}, bf16 {peak['bf16']['cpu_gflop_per_s']:.0f}; achieved: "
          + ", ".join(f"{key} {value['cpu_gflop_per_s']:.0f} ({100 * value['cpu_of_fp32_peak']:.0f}% of fp32)"
                      for key, value in efficiency.items() if isinstance(value, dict) and "cpu_of_fp32_peak" in value))
    print("speedup over the seed: " + ", ".join(f"{k} {v:.2f}×" for k, v in table["speedup"].items()))
    print("on CPU time (this process; the shared machine's load mostly drops out): " + ", ".join(
        f"{k} {v:.2f}×" for k, v in table["speedup_cpu_time"].items()))
    print(f"load average {results['load_average_start']} → {results['load_average_end']}")


if __name__ == "__main__":
    main()
