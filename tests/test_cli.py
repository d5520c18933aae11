"""The command line contract, run as a user would (a real subprocess where exit codes matter)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys


from captioner.cli import main
from captioner.evaluate import evaluate_files

from conftest import TINY


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "captioner", *map(str, args)], capture_output=True, text=True)


def test_directory_with_a_corrupt_file(trained_show_tell, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea.jpg", "emoji_1f436.png", "rocket.jpg"):
        shutil.copy(TINY / "images" / name, folder / name)
    (folder / "broken.jpg").write_bytes((TINY / "images/coffee.jpg").read_bytes()[:300])
    result = run_cli("caption", folder, "--model", trained_show_tell, "--beam-size", "1")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "broken.jpg" in result.stderr
    lines = dict(line.split("\t") for line in result.stdout.strip().splitlines())
    assert lines == {
        str(folder / "chelsea.jpg"): "a tabby cat looking to the side",
        str(folder / "emoji_1f436.png"): "dog face",
        str(folder / "rocket.jpg"): "a rocket on a launch pad",
    }


def test_json_output_with_alternatives(trained_show_tell, capsys):
    code = main(["caption", str(TINY / "images/emoji_1f431.png"), "--model", str(trained_show_tell),
                 "--json", "--n-best", "3", "--beam-size", "3"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["image"].endswith("emoji_1f431.png") and record["caption"] == "cat face"
    assert len(record["alternatives"]) == 3 and record["alternatives"][0]["caption"] == "cat face"
    scores = [a["score"] for a in record["alternatives"]]
    assert scores == sorted(scores, reverse=True) and record["score"] == scores[0]


def test_json_output_never_prints_infinity(trained_show_tell, monkeypatch, capsys):
    """A caption no beam could finish scores -inf; JSON has no such value, so it prints null."""
    from captioner import Captioner

    original = Captioner.caption_pixels

    def impossible(self, *args, **kwargs):
        captions = original(self, *args, **kwargs)
        for caption in captions:
            caption.score = caption.alternatives[0].score = float("-inf")
            caption.alternatives[1].score = float("nan")
        return captions

    monkeypatch.setattr(Captioner, "caption_pixels", impossible)
    code = main(["caption", str(TINY / "images/emoji_1f431.png"), "--model", str(trained_show_tell),
                 "--json", "--n-best", "2", "--beam-size", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Infinity" not in out and "NaN" not in out

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    record = json.loads(out, parse_constant=refuse)
    assert record["score"] is None and [a["score"] for a in record["alternatives"]] == [None, None]
    assert record["caption"] == record["alternatives"][0]["caption"]


def test_glob_and_missing_file(trained_show_tell, capsys):
    code = main(["caption", str(TINY / "images/emoji_1f44*.png"), str(TINY / "images/nope.jpg"),
                 "--model", str(trained_show_tell)])
    out, err = capsys.readouterr()
    assert code == 1 and "nope.jpg" in err
    assert {line.split("\t")[1] for line in out.strip().splitlines()} == {"thumbs up sign"}


def test_attention_out_refused_for_show_tell(trained_show_tell, tmp_path, capsys):
    code = main(["caption", str(TINY / "images/chelsea.jpg"), "--model", str(trained_show_tell),
                 "--attention-out", str(tmp_path)])
    assert code == 2 and "has no attention" in capsys.readouterr().err


def test_models_lists_registries(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "resnet152" in out and "efficientnet_lite0" in out and "show-tell" in out


def test_bad_model_dir_and_bad_config_key_are_one_line_errors(tmp_path):
    result = run_cli("caption", TINY / "images/chelsea.jpg", "--model", tmp_path)
    assert result.returncode == 2 and "config.json is missing" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("train", "--data", TINY / "captions.csv", "--out", tmp_path / "run", "--set", "optim.lrr=1")
    assert result.returncode == 2 and "unknown config key 'optim.lrr'" in result.stderr


def test_evaluate_model_on_data(trained_show_tell, tiny_one_caption, tmp_path, capsys, monkeypatch):
    out = tmp_path / "preds.json"
    code = main(["evaluate", "--model", str(trained_show_tell), "--data", str(tiny_one_caption),
                 "--split", "train", "--beam-size", "2", "--json", "--output", str(out)])
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["exact_match"] >= 0.9 and scores["CIDEr"] > 5 and scores["Bleu_4"] > 0.8
    predictions = json.loads(out.read_text())
    assert len(predictions) == 31 and {"image_id", "caption"} <= set(predictions[0])

    here = tmp_path / "cwd"  # without --output it writes nothing (it used to leave predictions-<split>.json here)
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["evaluate", "--model", str(trained_show_tell), "--data", str(tiny_one_caption),
                 "--split", "train", "--beam-size", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == scores and list(here.iterdir()) == []


def test_evaluate_predictions_file_against_references(tmp_path, capsys):
    references = json.loads((TINY / "captions_coco.json").read_text())
    first = {}
    for annotation in references["annotations"]:
        first.setdefault(annotation["image_id"], annotation["caption"])
    predictions = [{"image_id": i, "caption": c} for i, c in first.items()]
    predictions[0]["caption"] = "a completely different caption"
    (tmp_path / "preds.json").write_text(json.dumps(predictions))
    code = main(["evaluate", "--predictions", str(tmp_path / "preds.json"),
                 "--references", str(TINY / "captions_coco.json"), "--json"])
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert 0 < scores[key] <= 10, key
    assert scores["Bleu_1"] < 1.0 and "per_image" not in scores
    library = evaluate_files(tmp_path / "preds.json", TINY / "captions_coco.json")  # what the command ran
    assert {key: library[key] for key in scores} == scores
    predictions.pop()
    (tmp_path / "preds.json").write_text(json.dumps(predictions))
    assert main(["evaluate", "--predictions", str(tmp_path / "preds.json"),
                 "--references", str(TINY / "captions_coco.json")]) == 2


def test_evaluate_by_artist(trained_show_tell, tmp_path, capsys):
    """--by FIELD scores each value of a per-image field on its own (the cross-artist protocol)."""
    data = json.loads((TINY / "dataset_tiny.json").read_text())
    for i, image in enumerate(data["images"]):
        image["split"] = "test"
        image["artist"] = "photo" if image["filename"].endswith(".jpg") else "drawing"
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    (tmp_path / "images").symlink_to(TINY / "images")
    code = main(["evaluate", "--model", str(trained_show_tell), "--data", str(path), "--split", "test",
                 "--beam-size", "1", "--by", "artist", "--json", "--output", str(tmp_path / "p.json")])
    assert code == 0
    scores = json.loads(capsys.readouterr().out)
    groups = scores["by_artist"]
    assert set(groups) == {"photo", "drawing", "all"}
    assert groups["photo"]["images"] + groups["drawing"]["images"] == groups["all"]["images"] == len(data["images"])
    assert groups["all"]["exact_match"] == scores["exact_match"]

    del data["images"][0]["artist"]
    path.write_text(json.dumps(data))
    assert main(["evaluate", "--model", str(trained_show_tell), "--data", str(path), "--split", "test",
                 "--by", "artist"]) == 2
    assert "have no 'artist' field" in capsys.readouterr().err
