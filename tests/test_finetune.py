"""Fine-tuning an encoder's top stages: the caption-preserving augmentation (never a mirror image),
the encoder cut into a cached frozen bottom and a trainable top (the same training as the whole
encoder), and the activation cache's key."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from captioner import Captioner, create_encoder
from captioner.data.activation_cache import ActivationCache
from captioner.data.augment import AugmentConfig, augment_image
from captioner.data.batches import ActivationBatches, PixelBatches
from captioner.data.examples import Example
from captioner.data.images import PreprocessConfig, build_transform, load_image
from captioner.data.loaders import BucketBatchSampler, CaptionPairs
from captioner.data.vocab import Vocabulary
from captioner.encoders.split import EncoderSplitError
from captioner.objectives import CaptionCrossEntropy

TINY_IMAGES = sorted((Path(__file__).parent / "fixtures" / "tiny" / "images").glob("*.jpg"))[:6]
SMALL = PreprocessConfig(crop_size=96, resize_size=96, resize="squash", mean=(0.5,) * 3, std=(0.5,) * 3)


def _pairs(paths, captions):
    examples = [Example(str(i), Path(p), [c]) for i, (p, c) in enumerate(zip(paths, captions))]
    vocab = Vocabulary.build(captions, min_count=1)
    return CaptionPairs(examples, list(range(len(examples))), vocab, 16), vocab


def _arrow(path: Path, colour, size: int) -> Path:
    """A drawing that a mirror image changes: a triangle pointing right (its mass on the left)."""
    image = Image.new("RGB", (64, 64), "white")
    top, bottom = 32 - size // 2, 32 + size // 2
    ImageDraw.Draw(image).polygon([(12, top), (12, bottom), (12 + size, 32)], fill=colour)
    image.save(path)
    return path


def _mass_share_left(pixels: torch.Tensor) -> float:
    """Where the dark drawing's centroid lies across its bounding box (0 left … 1 right)."""
    dark = (pixels * 0.5 + 0.5).mean(0) < 0.5  # (H, W); SMALL normalises to [-1, 1]
    columns = torch.nonzero(dark)[:, 1].float()
    return float((columns.mean() - columns.min()) / (columns.max() - columns.min()))


def test_fine_tuning_batches_are_augmented_never_mirrored(tmp_path):
    """Pixel batches (the encoder read whole) hold each pair's clean image or one of its
    augmented views — exactly ``augment_image``'s, seeded as the views cache seeds them — and
    never a mirror image: a right-pointing arrow keeps pointing right in every batch."""
    paths = [str(_arrow(tmp_path / f"arrow{i}.png", colour, size))
             for i, (colour, size) in enumerate([("black", 40), ("navy", 34), ("darkred", 28), ("black", 22)])]
    pairs, vocab = _pairs(paths, ["arrow one", "arrow two", "arrow three", "arrow four"])
    augment = AugmentConfig(background=0.0, outline=0.0)  # dark pixels are the drawing
    views, transform = 2, build_transform(SMALL)
    expected = {row: [transform(path)] + [transform(augment_image(load_image(path), augment, seed=(v - 1) * 4 + row))
                                          for v in range(1, views + 1)]
                for row, path in enumerate(paths)}
    row_of_caption = {tuple(pairs.tokens[i, : pairs.lengths[i]].tolist()): pairs.image_rows[i] for i in range(len(pairs))}
    sampler = BucketBatchSampler(pairs.lengths, batch_size=2, seed=0)
    batches = PixelBatches(paths, pairs, SMALL, sampler, torch.device("cpu"), num_workers=0, augment=augment,
                           view_count=views, images=len(paths), positions=np.arange(len(paths)))
    seen_views = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        for pixels, captions in batches:
            for image, caption in zip(pixels, captions):
                row = row_of_caption[tuple(t for t in caption.tolist() if t != vocab.pad_id)]
                matches = [v for v, candidate in enumerate(expected[row]) if torch.equal(image, candidate)]
                assert len(matches) == 1, "a training image that is neither the clean image nor one of its views"
                seen_views.add(matches[0])
                assert _mass_share_left(image) < 0.45, "a mirror image: the arrow points left"
    assert seen_views == {0, 1, 2}  # clean images and both views were trained on
    assert all(_mass_share_left(torch.flip(expected[row][0], dims=[2])) > 0.55 for row in expected)  # the check bites


@pytest.mark.parametrize("name, options, trainable", [
    ("efficientnet_lite0", {}, 1),
    ("efficientnet_lite0", {}, 2),
    ("resnet50", {"pretrained": False, "grid_size": 3}, 2),
    ("timm:resnet18", {"pretrained": False}, 2),
    ("timm:vit_tiny_patch16_224", {"pretrained": False, "model_options": {"img_size": 64}}, 2),
])
def test_split_halves_compute_the_whole_encoder(name, options, trainable):
    """The halves give the whole encoder's output and its top stages' gradients — the top with each
    convolution and its eval-mode BatchNorm folded into one (fp32 rounding apart: ~1e-6 relative)."""
    torch.manual_seed(0)
    encoder = create_encoder(name, trainable_blocks=trainable, **options).train()
    split = encoder.split(64)
    assert split.stage == len(encoder.stage_members()) - trainable
    images = torch.randn(2, 3, 64, 64)
    results = []
    for run in (encoder, lambda x: split.top(split.bottom(x))):
        encoder.zero_grad(set_to_none=True)
        out = run(images)
        (out.pooled.square().sum() + out.grid.sum()).backward()
        grads = {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (whole, whole_grads), (halves, halves_grads) = results
    assert set(halves_grads) == set(whole_grads) and whole_grads
    names = sorted(whole_grads)
    for a, b in [(halves.pooled, whole.pooled), (halves.grid, whole.grid),
                 (torch.cat([halves_grads[n].flatten() for n in names]), torch.cat([whole_grads[n].flatten() for n in names]))]:
        assert (a - b).norm() <= 1e-5 * b.norm()
    assert halves.grid_shape == whole.grid_shape
    folded = sum(type(m).__name__ == "_ConvNorm" for m in split.top_module.modules())
    assert folded > 0 if "vit" not in name else folded == 0  # a ViT has LayerNorms: nothing to fold


def test_split_refuses_where_it_cannot_cut():
    with pytest.raises(EncoderSplitError, match="2 values .* cross the cut"):  # concatenated dense features
        create_encoder("timm:densenet121", pretrained=False, trainable_blocks=2).split(64)
    with pytest.raises(EncoderSplitError, match="nothing to cache"):
        create_encoder("efficientnet_lite0", pretrained=False, trainable_blocks=9).split(64)
    with pytest.raises(EncoderSplitError, match="no trainable stage"):
        create_encoder("efficientnet_lite0", pretrained=False).split(64)


def _fine_tuned_model(vocab) -> Captioner:
    torch.manual_seed(0)
    model = Captioner.build("efficientnet_lite0", "show-attend-tell", vocab, encoder_options={"trainable_blocks": 1},
                            decoder_options={"embed_dim": 32, "hidden_dim": 32, "attention_dim": 32, "dropout": 0.0},
                            preprocess=SMALL)
    return model.train()


def test_cached_activations_train_as_the_whole_encoder(tmp_path):
    """One batch from the activation cache (clean images and a view) and the same batch from
    pixels through the whole encoder: the same features and loss (within the cache's fp16
    rounding) and gradients; the top stage gets gradients, the frozen stages none."""
    paths = [str(p) for p in TINY_IMAGES]
    pairs, vocab = _pairs(paths, [f"picture number {word}" for word in "one two three four five six".split()])
    model = _fine_tuned_model(vocab)
    augment, views = AugmentConfig(), 1
    split = model.encoder_split(len(model.encoder.stage_members()) - 1)
    cache = ActivationCache(tmp_path, model.encoder, split, SMALL, paths).build(progress=False)
    view_cache = ActivationCache(tmp_path, model.encoder, split, SMALL, paths * views, augment).build(progress=False)
    assert cache.activations.dtype == np.float16 and cache.activations.shape == (6, 320, 3, 3)  # Lite0 before its head
    sampler = BucketBatchSampler(pairs.lengths, batch_size=6, seed=0)
    sampler.set_epoch(1)  # an epoch whose draw mixes clean images and views
    device, positions = torch.device("cpu"), np.arange(len(paths))
    cached = ActivationBatches(cache, pairs, sampler, device, split.stage, view_cache, views, positions)
    pixels = PixelBatches(paths, pairs, SMALL, sampler, device, 0, augment=augment, view_count=views,
                          images=len(paths), positions=positions)
    objective = CaptionCrossEntropy(vocab.pad_id)
    results = {}
    for name, batches in (("cached", cached), ("pixels", pixels)):
        inputs, captions = next(iter(batches))
        model.zero_grad(set_to_none=True)
        features = model.features_of(inputs)
        loss = objective(model, inputs, captions).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.encoder.named_parameters() if p.grad is not None}
        results[name] = (features, loss.detach(), grads, captions)
        assert set(grads) == {n for n, p in model.encoder.named_parameters() if n.startswith("head.")}
        assert all(g.abs().sum() > 0 for g in grads.values())
    (f_cached, loss_cached, g_cached, c_cached), (f_pixels, loss_pixels, g_pixels, c_pixels) = results.values()
    assert torch.equal(c_cached, c_pixels)
    torch.testing.assert_close(f_cached.grid, f_pixels.grid, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(loss_cached, loss_pixels, rtol=1e-3, atol=1e-3)
    for n in g_cached:  # fp16 storage alone moves them by 0.4–1.3 % (ReLU6's bounds; fp32 activations: 0)
        assert (g_cached[n] - g_pixels[n]).norm() <= 3e-2 * g_pixels[n].norm(), n


def test_channels_last_trains_what_the_default_layout_does(tmp_path):
    """The fine-tuned encoder in NHWC (``channels_last``, on by default on the CPU): the same loss
    and gradients as NCHW on the same cached batch, weights that save as plain contiguous tensors,
    and the layout left alone for a frozen encoder or when switched off."""
    from captioner.train.config import load_config
    from captioner.train.loop import trains_channels_last

    paths = [str(p) for p in TINY_IMAGES]
    pairs, vocab = _pairs(paths, [f"picture number {word}" for word in "one two three four five six".split()])
    objective, cpu = CaptionCrossEntropy(vocab.pad_id), torch.device("cpu")
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        model = _fine_tuned_model(vocab)
        split = model.encoder_split(len(model.encoder.stage_members()) - 1)
        cache = ActivationCache(tmp_path, model.encoder, split, SMALL, paths).build(progress=False)
        model.encoder.to(memory_format=layout)
        sampler = BucketBatchSampler(pairs.lengths, batch_size=6, seed=0)
        inputs, captions = next(iter(ActivationBatches(cache, pairs, sampler, cpu, split.stage)))
        loss = objective(model, inputs, captions).loss
        loss.backward()
        grads = {n: p.grad for n, p in model.encoder.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, model))
    (loss_nchw, g_nchw, _), (loss_nhwc, g_nhwc, nhwc) = results
    conv = nhwc.encoder.stem[0].weight  # 3x3 over 3 channels: the layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(loss_nhwc, loss_nchw, rtol=1e-5, atol=1e-5)
    assert set(g_nhwc) == set(g_nchw)
    for n in g_nchw:
        torch.testing.assert_close(g_nhwc[n], g_nchw[n], rtol=1e-4, atol=1e-5)
    nhwc.save_pretrained(tmp_path / "saved")
    assert torch.equal(Captioner.from_pretrained(tmp_path / "saved").encoder.stem[0].weight, conv)

    assert trains_channels_last(load_config(None), nhwc, cpu)
    assert not trains_channels_last(load_config(None), nhwc, torch.device("cuda"))  # not measured there
    assert trains_channels_last(load_config(None, {"channels_last": True}), nhwc, torch.device("cuda"))
    assert not trains_channels_last(load_config(None, {"channels_last": False}), nhwc, cpu)
    frozen = Captioner.build("efficientnet_lite0", "show-tell", vocab, encoder_options={"pretrained": False})
    assert not trains_channels_last(load_config(None), frozen, cpu)


def test_activation_cache_key_names_the_cut_and_the_frozen_weights(tmp_path):
    one = create_encoder("efficientnet_lite0", pretrained=False, trainable_blocks=1)
    paths = [str(p) for p in TINY_IMAGES]

    def folder(encoder):
        return ActivationCache(tmp_path, encoder, encoder.split(96), SMALL, paths).folder

    first = folder(one)
    with torch.no_grad():
        one.head[0].weight.add_(1.0)  # the top trains: what the cache holds is unchanged
    assert folder(one) == first
    # A resumed run's encoder is loaded from the run's folder (pretrained: false): the same weights,
    # the same cache (it was re-extracted: 13 minutes on the emoji data).
    resumed = dataclasses.replace(one.config, pretrained=not one.config.pretrained, weights_file="elsewhere.pth")
    one.config, original = resumed, one.config
    assert folder(one) == first
    one.config = original
    with torch.no_grad():
        one.blocks[0][0].conv_dw.weight.add_(1.0)  # other frozen weights: other activations
    assert folder(one) != first
    two = create_encoder("efficientnet_lite0", pretrained=False, trainable_blocks=2)
    assert folder(two) != folder(create_encoder("efficientnet_lite0", pretrained=False, trainable_blocks=1))


def test_onnx_runtime_extracts_the_activations_torch_does(tmp_path):
    """runtime auto/onnx runs the frozen stages in ONNX Runtime: the same cache key (either engine's
    cache serves the other) and the same activations within the cache's fp16 rounding."""
    encoder = create_encoder("efficientnet_lite0", trainable_blocks=2)
    split, paths = encoder.split(96), [str(p) for p in TINY_IMAGES]
    by_torch = ActivationCache(tmp_path / "torch", encoder, split, SMALL, paths).build(progress=False, runtime="torch")
    by_onnx = ActivationCache(tmp_path / "onnx", encoder, split, SMALL, paths).build(progress=False, runtime="onnx")
    assert by_onnx.folder.name == by_torch.folder.name
    rows = np.arange(len(paths))
    torch.testing.assert_close(by_onnx.rows(rows), by_torch.rows(rows), rtol=1e-2, atol=1e-2)
    assert not any(m.training for m in split.bottom_module.modules())  # the export left them in eval mode


def test_a_tuned_encoder_also_gives_what_its_untuned_stages_make_of_an_image(tmp_path):
    """An encoder rebased on its source with tuned top stages gives, beside its pooled feature,
    the mean of the activations those stages read (``untuned``: what the confidence's
    familiarity reads), in torch and in ONNX Runtime alike; an untuned encoder gives none."""
    import copy

    from captioner.encoders.onnx_runtime import OnnxEncoder, export_onnx

    encoder = create_encoder("efficientnet_lite0").eval()
    pixels = torch.stack([build_transform(SMALL)(load_image(p)) for p in TINY_IMAGES[:3]])
    assert encoder(pixels).untuned is None and encoder.untuned_dim(96) is None
    with torch.no_grad():
        encoder.blocks[6][0].conv_pwl.weight.mul_(1.1)  # the second stage from the top
        assert encoder.rebase_on_source() == 2
        out = encoder(pixels)
        below = encoder.blocks[:6](encoder.stem(pixels)).mean((2, 3))  # blocks 0-5: the pretrained stages
    torch.testing.assert_close(out.untuned, below)
    assert encoder.untuned_dim(96) == 192
    onnx = OnnxEncoder(encoder, 96, cache_dir=tmp_path)
    by_onnx = onnx(pixels)
    torch.testing.assert_close(by_onnx.untuned, below, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(by_onnx.pooled, out.pooled, rtol=1e-4, atol=1e-4)
    # A graph an earlier captioner cached for this encoder (no untuned output) is exported again.
    earlier = copy.deepcopy(encoder)
    earlier.config = dataclasses.replace(earlier.config, tuned_blocks=0)
    onnx.path.write_bytes(export_onnx(earlier, 96))
    again = OnnxEncoder(encoder, 96, cache_dir=tmp_path)
    assert again.exported
    torch.testing.assert_close(again(pixels).untuned, below, rtol=1e-4, atol=1e-4)


def test_rebase_on_source_finds_the_stages_that_differ(tmp_path):
    """``rebase_on_source`` counts the top stages whose weights are no longer the pretrained
    source's (what a saved model then stores); it refuses an encoder still training, one whose
    weights outside the stages moved, and one whose source is a user's file."""
    from captioner.errors import InvalidInputError

    encoder = create_encoder("efficientnet_lite0")
    assert encoder.rebase_on_source() == 0 and encoder.tuned_state() == {}
    with torch.no_grad():
        encoder.blocks[5][0].conv_pwl.weight.add_(1e-3)  # the third stage from the top (blocks 5, 6, head)
    assert encoder.rebase_on_source() == 3
    assert encoder.config.pretrained and encoder.config.tuned_blocks == 3
    assert {name.split(".")[0] + "." + name.split(".")[1] for name in encoder.tuned_state()} == {
        "blocks.5", "blocks.6", "head.0", "head.1"}
    with torch.no_grad():
        encoder.stem[1].running_mean.add_(1.0)  # a buffer of the first stage
    assert encoder.rebase_on_source() == 9
    with torch.no_grad():
        encoder.classifier.bias.add_(1.0)  # in no stage
    with pytest.raises(InvalidInputError, match="classifier.bias is not in a stage"):
        encoder.rebase_on_source()
    with pytest.raises(InvalidInputError, match="freeze the encoder"):
        create_encoder("efficientnet_lite0", trainable_blocks=1).rebase_on_source()
    from captioner.encoders.efficientnet import lite_weights_path

    with pytest.raises(InvalidInputError, match="weights_file"):
        create_encoder("efficientnet_lite0", weights_file=lite_weights_path("efficientnet_lite0")).rebase_on_source()
