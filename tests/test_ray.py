"""Ray Data: ``CaptionPredictor`` in ``map_batches`` on a real local cluster (2 CPUs, one for
the module) gives the CLI's captions; a corrupt image becomes an ``error`` row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from captioner.batch import CaptionPredictor, caption_files
from captioner.cli import main

from conftest import TINY
from test_batch_caption import model_dir  # noqa: F401 (the untrained 64-pixel model, a fixture)

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """12 of the tiny images as PNG (``read_images`` arrays then hold the file's exact pixels)
    and one corrupt file with an image suffix."""
    folder = tmp_path_factory.mktemp("images")
    for path in sorted((TINY / "images").glob("*.jpg"))[:12]:
        Image.open(path).convert("RGB").save(folder / f"{path.stem}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return folder


@pytest.fixture(scope="module")
def cli_captions(model_dir, folder) -> dict[str, str]:
    records = caption_files([str(folder)], model=model_dir, beam_size=3, device="cpu")
    return {r.image: r.caption.text for r in records if r.error is None}


def _predict(dataset, model_dir):
    return dataset.map_batches(CaptionPredictor, fn_constructor_kwargs={"model": str(model_dir), "beam_size": 3,
                                                                         "device": "cpu"},
                               batch_size=4, concurrency=1).take_all()  # 1 CPU for the actor, 1 to read


def test_binary_files_give_the_cli_captions_and_an_error_row(cluster, model_dir, folder, cli_captions):
    rows = _predict(ray.data.read_binary_files(str(folder), include_paths=True), model_dir)
    assert len(rows) == 13 and all("bytes" not in row for row in rows)
    by_name = {Path(row["path"]).name: row for row in rows}
    broken = by_name.pop("broken.png")
    assert broken["caption"] is None and broken["score"] is None and "broken.png" in broken["error"]
    assert {name: row["caption"] for name, row in by_name.items()} == {
        Path(p).name: text for p, text in cli_captions.items()}
    assert all(row["error"] is None and isinstance(row["score"], float) for row in by_name.values())


def test_image_arrays_give_the_cli_captions(cluster, model_dir, folder, cli_captions):
    good = [str(p) for p in sorted(folder.glob("*.png")) if p.name != "broken.png"]
    rows = _predict(ray.data.read_images(good, include_paths=True), model_dir)
    assert {Path(row["path"]).name: row["caption"] for row in rows} == {
        Path(p).name: text for p, text in cli_captions.items()}


def test_bad_arrays_are_error_rows_not_a_failed_batch(model_dir):
    import numpy as np

    predictor = CaptionPredictor(str(model_dir), beam_size=1, device="cpu")
    images = np.empty(3, dtype=object)  # what Ray gives for images of different shapes
    images[:] = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 7), np.uint8)]
    batch = {"image": images, "id": np.array([1, 2, 3])}
    result = predictor(batch)
    assert list(result["id"]) == [1, 2, 3] and isinstance(result["caption"][0], str)
    assert result["error"][0] is None and "uint8" in result["error"][1] and result["error"][2] is not None


def test_cli_engine_ray_writes_the_cli_captions_and_resumes(cluster, model_dir, folder, cli_captions, tmp_path, capsys):
    output = tmp_path / "preds.jsonl"
    args = ["caption", str(folder), "--model", str(model_dir), "--output", str(output), "--beam-size", "3",
            "--engine", "ray", "--batch-size", "4"]
    assert main([*args, "--ray-actors", "2"]) == 2  # would hold both CPUs: refused, not a hung job
    assert "use at most 1 CPU actors" in capsys.readouterr().err
    assert main(args) == 1  # the corrupt image
    assert "broken.png" in capsys.readouterr().err
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert {r["image"]: r["caption"] for r in records} == cli_captions
    assert main(args) == 1  # only the corrupt image is tried again
    assert "12 images already in" in capsys.readouterr().err
    assert len(output.read_text().splitlines()) == 12
