"""Every recipe in configs/ loads and trains one step on the tiny COCO-format fixture (a recipe that
leaves a per-image field out of retrieval: on its Karpathy copy, each image given that field)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from captioner.train.config import load_config

from conftest import TINY

CONFIGS = Path(__file__).parent.parent / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))

# Tiny widths per decoder family: the recipes' structure, at test speed.
TINY_DECODERS = {
    "show-tell": {"embed_dim": 16, "hidden_dim": 16},
    "show-attend-tell": {"embed_dim": 16, "hidden_dim": 16, "attention_dim": 16},
    "transformer": {"d_model": 16, "num_layers": 1, "num_heads": 2, "ff_dim": 32},
}


def _train_one_step(recipe: Path, out: Path, init_from: Path | None = None) -> Path:
    from captioner.cli import main

    config = load_config(recipe)  # every key exists and has its type
    data = TINY / "captions_coco.json"
    if config.retrieval.leave_out != "image":
        # The recipe leaves out a per-image field (emoji: the artist): the Karpathy copy of the
        # fixture, each image given that field (two "artists").
        dataset = json.loads((TINY / "dataset_tiny.json").read_text())
        for i, image in enumerate(dataset["images"]):
            image["filepath"] = str(TINY / image["filepath"])
            image[config.retrieval.leave_out] = "ab"[i % 2]
        data = out.parent / f"{out.name}-dataset.json"
        data.write_text(json.dumps(dataset))
    args = ["train", "--config", str(recipe), "--data", str(data), "--out", str(out),
            "--no-pretrained", "--no-progress", "--epochs", "1", "--batch-size", "64", "--min-word-count", "1",
            "--set", "log_every=0", "--set", "model.preprocess={crop_size: 64, resize_size: 72}"]
    if init_from is not None:
        args += ["--init-from", str(init_from)]
    else:
        # Randomly initialised ResNets blow up (their activations overflow the float16 feature cache,
        # and 152 layers are slow): the COCO recipes run here on EfficientNet-Lite0, random too.
        args += ["--encoder", "efficientnet_lite0",
                 "--set", f"model.decoder_options={json.dumps(TINY_DECODERS[config.model.decoder])}"]
    assert main(args) == 0, recipe.name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 1  # the fixture's 31 images are one batch
    return out


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_one_step(recipe, tmp_path):
    init_from = yaml.safe_load(recipe.read_text()).get("init_from")
    source = None
    if init_from:
        # A recipe that starts from a trained model names the recipe's run: runs/NAME <- configs/NAME.yaml.
        source_recipe = CONFIGS / f"{Path(init_from).name}.yaml"
        assert source_recipe.is_file(), f"{recipe.name}: init_from {init_from} has no recipe {source_recipe.name}"
        source = _train_one_step(source_recipe, tmp_path / "source")
    out = _train_one_step(recipe, tmp_path / "run", source)
    assert (out / "config.json").is_file()


def test_recipes_name_their_published_number_and_say_it_is_not_reproduced():
    for recipe in RECIPES:
        if recipe.stem.startswith("coco-"):
            text = recipe.read_text()
            assert "Published number" in text and "NOT REPRODUCED" in text, recipe.name
