"""``build_emoji_dataset``: find the sources, name, render, split and write the dataset folder."""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

from ...cache import cache_root
from ...errors import InvalidInputError
from ...io import atomic_write_text
from ..language import get_tokenizer, normalize_language, tokenizer_for
from .cldr import CLDR_LICENCE, CLDR_VERSION, cldr_names, resolve_cldr
from .names import (
    NameTable, add_emoji_package_names, emoji_key, hex_string, normalize_name, parse_codepoints, read_emoji_test,
    tokenize,
)
from .rendering import default_jobs, run_jobs
from .sources import (
    ARTIST_FAMILIES, ICONIFY_SETS, LICENSES, NOTO_FONT_SIZE, NPM_PACKAGES, SOURCES, EmojiSourceError, Item,
    check_source_names, collect_google, collect_iconify, collect_noto, collect_openmoji, openmoji_entries,
    package_version, partial_families, resolve_sources,
)
from .splits import ARTIST_SPLIT, SPLITS, split_images

DEFAULT_IMAGE_SIZE = 64  # the Google PNGs' own size


def build_emoji_dataset(
    out_dir,
    *,
    sources: Iterable[str] | str = SOURCES,
    source_dirs: dict | None = None,
    google_dir=None,
    openmoji_dir=None,
    noto_font=None,
    emoji_test=None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    test_fraction: float = 0.1,
    val_fraction: float = 0.05,
    holdout_artists: Iterable[str] = (),
    split_by: str = "emoji",
    fetch: bool = False,
    cache_dir=None,
    jobs: int | None = None,
    progress: bool = True,
    languages: Iterable[str] | str | None = None,
    cldr_dir=None,
) -> dict:
    """Build ``out_dir/dataset.json`` (Karpathy format, each image with its ``artist``),
    ``out_dir/images/<artist>/*.png``, ``out_dir/SOURCES.md`` and ``out_dir/unmapped.json``; return summary
    counts.

    ``sources``: names from :data:`SOURCES` (a list or comma-separated). ``source_dirs``: source name →
    its untarred npm package (``google_dir``/``openmoji_dir`` are the same for those two); by default each
    is looked up in ``cache_dir`` (``captioner.cache.cache_root("emoji-sources")``), fetched there with
    ``npm pack`` when ``fetch``. ``holdout_artists``: every image of these artists goes to the
    ``test-artist`` split; ``split_by="image"`` holds out single drawings of emoji instead of whole emoji,
    so every emoji trains (see :func:`split_images`). Missing sources are reported (``summary["missing"]``
    and on stderr) and skipped; :class:`EmojiSourceError` only when no requested source is available.

    ``languages`` (a list or comma-separated, e.g. ``"en,de,ja"``): every image gets one caption per
    language, each sentence tagged with its ``language`` — English as without languages, the others
    the CLDR short names (:mod:`.cldr`: from ``cldr_dir``, else the cache folder, fetched with
    ``fetch``). Same images and splits whatever the languages (splits come from the English names); an
    emoji CLDR does not name in a language is counted (``summary["languages"]``) and listed in
    ``out_dir/unnamed.json``; an image left without any caption is dropped. Without ``languages`` the
    dataset is exactly the English one, with no ``language`` fields.
    """
    started = time.monotonic()
    sources = check_source_names(sources)
    holdout = sorted(set(holdout_artists))
    for name in source_dirs or {}:
        if name not in NPM_PACKAGES:
            raise EmojiSourceError(f"source folder given for {name!r}, which is not an npm emoji source; "
                                   f"choose from {', '.join(NPM_PACKAGES)}")
    for artist in holdout:
        if artist not in sources:
            raise EmojiSourceError(
                f"--holdout-artist {artist}: not among the sources being built ({', '.join(sources)}); "
                "an artist is the name of its source"
            )
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise InvalidInputError("test_fraction and val_fraction must be in [0, 1) and sum to less than 1")
    image_size = int(image_size)
    if not 8 <= image_size <= 1024:
        raise InvalidInputError(f"image_size must be between 8 and 1024, got {image_size}")

    def log(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    wanted_languages = _language_list(languages)
    names_in = {}  # language → emoji key → CLDR name, for the languages not taken from emoji-test.txt
    if any(lang != "en" for lang in wanted_languages):
        folders = resolve_cldr(cldr_dir, Path(cache_dir) if cache_dir is not None else cache_root("emoji-sources"),
                               fetch=fetch, log=log)
        names_in = {lang: cldr_names(folders, lang) for lang in wanted_languages if lang != "en"}

    dirs = {"google": google_dir, "openmoji": openmoji_dir, **(source_dirs or {})}
    found = resolve_sources(sources, source_dirs=dirs, noto_font=noto_font, emoji_test=emoji_test,
                            fetch=fetch, cache_dir=cache_dir, log=log)
    for message in found.missing.values():
        print(f"warning: {message}", file=sys.stderr, flush=True)
    available = [s for s in sources if s not in found.missing]
    if not available:
        raise EmojiSourceError("no emoji source available:\n" + "\n".join(f"  {m}" for m in found.missing.values()))
    for family, left in partial_families(holdout, available).items():
        print(f"warning: holding out part of {family}; {', '.join(left)} still train on the same design "
              "(add --holdout-artist for each, or the held-out estimate leaks)", file=sys.stderr, flush=True)

    # Names: emoji-test.txt, then OpenMoji annotations, then the emoji package.
    table = NameTable()
    test_entries, unicode_version = [], None
    if found.emoji_test is not None:
        test_entries, unicode_version = read_emoji_test(found.emoji_test)
        for cps, name in test_entries:
            table.add(cps, name, "emoji-test.txt")
    if "openmoji" in found.folders:
        for entry in openmoji_entries(found.folders["openmoji"]):
            table.add(parse_codepoints(entry["hexcode"]), entry.get("annotation", ""), "openmoji.json")
    has_emoji_package = add_emoji_package_names(table)

    skipped: dict[str, Counter] = {s: Counter() for s in available}
    mapping: dict[str, Counter] = {}
    unmapped: dict[str, list[str]] = {}
    items: list[Item] = []
    if "google" in found.folders:
        items += collect_google(found.folders["google"], table, skipped["google"])
    if found.noto_font is not None:
        items += collect_noto(test_entries, table)
        from PIL import features

        if not features.check("raqm"):
            print("warning: noto: Pillow has no libraqm text layout, so skin tones, ZWJ sequences and flags "
                  "cannot be joined into one glyph and are skipped (install libraqm: "
                  "`apt-get install -y libraqm0`)", file=sys.stderr, flush=True)
    if "openmoji" in found.folders:
        items += collect_openmoji(found.folders["openmoji"], table, skipped["openmoji"])
    for source in ICONIFY_SETS:
        if source in found.folders:
            mapping[source], unmapped[source] = Counter(), []
            items += collect_iconify(source, found.folders[source], table, skipped[source],
                                     mapping[source], unmapped[source])

    # One image per (source, emoji).
    unique: dict = {}
    for item in items:
        key = (item.source, emoji_key(item.cps))
        if key in unique:
            skipped[item.source]["duplicate"] += 1
        else:
            unique[key] = item
    source_rank = {s: i for i, s in enumerate(SOURCES)}
    items = sorted(unique.values(), key=lambda it: (emoji_key(it.cps), source_rank[it.source]))

    # Render.
    out_dir = Path(out_dir).expanduser()
    image_root = out_dir / "images"
    jobs_list = [
        (it.kind, it.input, str(image_root / it.source / it.filename), image_size,
         str(found.noto_font) if found.noto_font else None)
        for it in items
    ]
    jobs = default_jobs() if jobs is None else max(1, int(jobs))
    log(f"rendering {len(jobs_list)} images from {', '.join(available)} at {image_size}px with {jobs} process(es) ...")
    results = run_jobs(jobs_list, jobs, progress)
    kept = []
    for item, result in zip(items, results):
        if result == "ok":
            kept.append(item)
        else:
            reason = result.split(":", 1)[0] if result.startswith("error") else result
            skipped[item.source][reason] += 1
            if result.startswith("error"):
                log(f"  {item.source} {hex_string(item.cps)}: {result}")

    # PNGs left by an earlier build in the folders of the sources built now and not part of this build.
    current = {(it.source, it.filename) for it in kept}
    for source in available:
        for stale in sorted((image_root / source).glob("*.png")):
            if (source, stale.name) not in current:
                stale.unlink()

    # Splits over distinct captions (so the same caption never lands in two splits), artists apart.
    split_of = split_images([it.caption for it in kept], [it.source for it in kept], holdout_artists=holdout,
                            test_fraction=test_fraction, val_fraction=val_fraction, by=split_by)
    images, sentid = [], 0
    unnamed: dict[str, set[str]] = {lang: set() for lang in wanted_languages}
    unnamed_images = 0
    for item, split in zip(kept, split_of):
        captions = (_captions_in(item, wanted_languages, names_in, unnamed) if wanted_languages
                    else [(item.caption, None)])
        if not captions:
            unnamed_images += 1
            continue
        imgid = len(images)
        sentences = []
        for raw, language in captions:
            sentences.append({"raw": raw, "tokens": _caption_tokens(raw, language), "imgid": imgid, "sentid": sentid,
                              **({"language": language} if language else {})})
            sentid += 1
        images.append({
            "filepath": f"images/{item.source}",
            "filename": item.filename,
            "imgid": imgid,
            "split": split,
            "source": item.source,
            "artist": item.source,
            "emoji": hex_string(item.cps),
            "char": "".join(chr(c) for c in item.cps),
            "sentences": sentences,
            "sentids": [s["sentid"] for s in sentences],
        })
    dataset = {"dataset": "emoji", "images": images}
    atomic_write_text(out_dir / "dataset.json", json.dumps(dataset, ensure_ascii=False, separators=(",", ":")) + "\n")
    atomic_write_text(out_dir / "unmapped.json", json.dumps(unmapped, indent=1, sort_keys=True) + "\n")
    if wanted_languages:
        atomic_write_text(out_dir / UNNAMED_FILE, json.dumps({lang: sorted(keys) for lang, keys in unnamed.items()},
                                                            indent=1) + "\n")
    else:
        (out_dir / UNNAMED_FILE).unlink(missing_ok=True)  # left by an earlier build with languages

    names_from = Counter()
    for caption, origin in sorted({(it.caption, it.name_origin) for it in kept}):
        names_from[origin] += 1
    summary = summarize(images, available, found, skipped, image_size, unicode_version, has_emoji_package,
                        names_from, mapping, holdout, split_by)
    if wanted_languages:
        summary["languages"] = summarize_languages(images, wanted_languages, unnamed, unnamed_images)
    atomic_write_text(out_dir / "SOURCES.md", sources_markdown(summary))
    summary["out_dir"] = str(out_dir)
    summary["dataset_json"] = str(out_dir / "dataset.json")
    summary["seconds"] = round(time.monotonic() - started, 1)
    return summary



UNNAMED_FILE = "unnamed.json"  # per language, the emoji (code points) CLDR gives no name in it


def _language_list(languages) -> list[str]:
    """``--languages``: checked language codes, in the order given, without repeats."""
    if languages is None:
        return []
    items = languages.split(",") if isinstance(languages, str) else list(languages)
    codes = (normalize_language(str(lang).strip(), "--languages") for lang in items if str(lang).strip())
    return list(dict.fromkeys(codes))


def _captions_in(item: Item, languages: list[str], names_in: dict, unnamed: dict) -> list[tuple[str, str]]:
    """(caption, language) of an image in each language that names its emoji; the others note it."""
    captions = []
    for language in languages:
        if language == "en":
            captions.append((item.caption, language))
            continue
        name = names_in[language].get(emoji_key(item.cps))
        if name is None:
            unnamed[language].add(hex_string(item.cps))
        else:
            captions.append((normalize_name(name), language))
    return captions


def _caption_tokens(caption: str, language: str | None) -> list[str]:
    """The Karpathy ``tokens`` of a caption: the English builder's words, else the language's tokenizer's."""
    if language is None or language == "en":
        return tokenize(caption)
    return get_tokenizer(tokenizer_for(language))(caption)


def summarize_languages(images, languages: list[str], unnamed: dict, unnamed_images: int) -> dict:
    """Per language: captions, distinct captions, distinct words, emoji without a CLDR name."""
    out = {}
    for language in languages:
        sentences = [s for image in images for s in image["sentences"] if s.get("language") == language]
        out[language] = {
            "captions": len(sentences),
            "distinct_captions": len({s["raw"] for s in sentences}),
            "vocab_size": len({w for s in sentences for w in s["tokens"]}),
            "tokenizer": "emoji builder" if language == "en" else tokenizer_for(language),
            "unnamed_emoji": len(unnamed[language]),
        }
    return {"per_language": out, "images_without_caption": unnamed_images,
            "cldr": f"cldr-annotations-full + cldr-annotations-derived-full {CLDR_VERSION}"}


def _split_names(holdout: list[str]) -> tuple[str, ...]:
    return (*SPLITS, ARTIST_SPLIT) if holdout else SPLITS


def summarize(images, available, found, skipped, image_size, unicode_version, has_emoji_package, names_from,
              mapping, holdout, split_by: str = "emoji") -> dict:
    """Counts per source and split, vocabulary, versions, name origins, skipped and unmapped entries."""
    split_names = _split_names(holdout)
    per_source = {s: {split: 0 for split in split_names} for s in available}
    split_images_count = Counter()
    split_captions: dict[str, set] = {split: set() for split in split_names}
    vocab, train_vocab = set(), set()
    for image in images:
        sentence = image["sentences"][0]
        per_source[image["source"]][image["split"]] += 1
        split_images_count[image["split"]] += 1
        split_captions[image["split"]].add(sentence["raw"])
        vocab.update(sentence["tokens"])
        if image["split"] == "train":
            train_vocab.update(sentence["tokens"])
    for counts in per_source.values():
        counts["total"] = sum(counts[s] for s in split_names)
    versions = {s: f"{NPM_PACKAGES[s][0]} {package_version(folder)}" for s, folder in found.folders.items()}
    if found.noto_font is not None:
        versions["noto"] = f"{found.noto_font.name} ({found.noto_font.stat().st_size} bytes), size {NOTO_FONT_SIZE}"
    return {
        "images": len(images),
        "distinct_captions": len({image["sentences"][0]["raw"] for image in images}),
        "splits": {s: {"images": split_images_count[s], "emoji": len(split_captions[s])} for s in split_names},
        "per_source": per_source,
        "holdout_artists": list(holdout),
        "split_by": split_by,
        "vocab_size": len(vocab),
        "train_vocab_size": len(train_vocab),
        "image_size": image_size,
        "sources": available,
        "versions": versions,
        "emoji_test": f"emoji-test.txt {unicode_version}" if unicode_version else None,
        "names_from": dict(sorted(names_from.items())),  # distinct captions per name source
        "emoji_package": has_emoji_package,
        "mapping": {s: dict(sorted(c.items())) for s, c in mapping.items()},  # icon name → emoji, per set
        "skipped": {s: dict(sorted(c.items())) for s, c in skipped.items() if c},
        "missing": dict(found.missing),
    }


def sources_markdown(summary: dict) -> str:
    """The dataset's SOURCES.md: every artist with its licence, the splits table, skipped and unmapped."""
    split_names = _split_names(summary["holdout_artists"])
    lines = [
        "# Emoji captioning dataset",
        "",
        "Emoji art captioned with Unicode CLDR short names (lowercased), built by `captioner data emoji`.",
        "`dataset.json` is in Karpathy split format; images are "
        f"{summary['image_size']}x{summary['image_size']} RGB PNGs (transparency composited onto white) "
        "at `images/<artist>/<codepoints>.png` (`filepath` + `filename`, relative to this folder); each image's "
        "`artist` (the same as its `source`) names who drew it.",
        "",
        "## Sources and licences",
        "",
    ]
    for source in summary["sources"]:
        version = summary["versions"].get(source)
        lines.append(f"- **{source}**" + (f" ({version})" if version else "") + f": {LICENSES[source]}")
    origins = ", ".join(f"{n} from {origin}" for origin, n in summary["names_from"].items())
    lines.append(
        f"- Captions (CLDR short names, lowercased): {origins}"
        + (f" ({summary['emoji_test']}, Unicode License)" if summary["emoji_test"] else "")
        + ". Lookup order: emoji-test.txt, OpenMoji `annotation`, the `emoji` Python package (BSD)."
    )
    lines += [
        "- Not used: the Twemoji set (`emoji-datasource-twitter`, `twemoji`, `@iconify-json/twemoji`, "
        "`@svgmoji/twemoji`, the fonts) and Apple's and Facebook's art, reserved for external held-out "
        "evaluation; Blobmoji (npm `@svgmoji/blob` ships no images).",
        "- One design drawn several ways, to hold out together (else the estimate leaks): "
        + "; ".join(f"{family}: {', '.join(f'`{m}`' for m in members)}" for family, members in ARTIST_FAMILIES.items())
        + ".",
        "",
        "## Splits",
        "",
        "Whole emoji are held out: test and val contain emoji never seen in "
        "train, chosen in a fixed hash order only when every word of their caption also occurs in a train "
        "caption (new combinations of seen parts). The same emoji from several sources is in one split."
        if summary.get("split_by", "emoji") == "emoji" else
        "Single drawings are held out (`--split-by image`): test and val hold at most one drawing of an emoji, "
        "and only of an emoji drawn by another artist in train, in a fixed hash order, so every emoji trains "
        "and val/test measure known emoji in unseen drawings.",
    ]
    if summary["holdout_artists"]:
        lines.append(
            f"Held-out artists ({', '.join(summary['holdout_artists'])}): all their images are in `{ARTIST_SPLIT}`; "
            "the other splits are drawn over the remaining artists' captions only."
        )
    lines += [
        "",
        "| source | " + " | ".join(split_names) + " | total |",
        "|---|" + "---:|" * (len(split_names) + 1),
    ]
    for source, counts in summary["per_source"].items():
        lines.append(f"| {source} | " + " | ".join(str(counts[s]) for s in split_names) + f" | {counts['total']} |")
    splits = summary["splits"]
    lines.append("| **images** | " + " | ".join(str(splits[s]["images"]) for s in split_names)
                 + f" | {summary['images']} |")
    lines.append("| **distinct emoji** | " + " | ".join(str(splits[s]["emoji"]) for s in split_names)
                 + f" | {summary['distinct_captions']} |")
    lines += ["", f"Vocabulary: {summary['vocab_size']} words ({summary['train_vocab_size']} in train captions).", ""]
    if summary["mapping"]:
        lines += ["Icon names mapped to emoji (Iconify sets; the unmapped names are in `unmapped.json`):", ""]
        for source, counts in summary["mapping"].items():
            lines.append(f"- {source}: " + ", ".join(f"{n} by {how}" if how != "unmapped" else f"{n} unmapped"
                                                      for how, n in counts.items()))
        lines.append("")
    if summary["skipped"]:
        lines += ["Skipped entries:", ""]
        for source, reasons in summary["skipped"].items():
            lines.append(f"- {source}: " + ", ".join(f"{n} {why}" for why, n in reasons.items()))
        lines.append("")
    if "languages" in summary:
        lines += _languages_markdown(summary["languages"])
    return "\n".join(lines)


def _languages_markdown(languages: dict) -> list[str]:
    lines = [
        "## Languages",
        "",
        "Each image has one caption per language, tagged with its `language` in `dataset.json`. English "
        "captions are the names above; the others are Unicode CLDR short names (`tts`, lowercased) from npm "
        f"{languages['cldr']} (`annotations/<locale>` and `annotationsDerived/<locale>`), {CLDR_LICENCE}. "
        "Every language has the same images and splits (drawn from the English names). Emoji CLDR does "
        f"not name in a language are listed per language in `{UNNAMED_FILE}`.",
        "",
        "| language | captions | distinct | words | word tokenizer | emoji without a name |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for language, row in languages["per_language"].items():
        lines.append(f"| {language} | {row['captions']} | {row['distinct_captions']} | {row['vocab_size']} | "
                     f"{row['tokenizer']} | {row['unnamed_emoji']} |")
    if languages["images_without_caption"]:
        lines += ["", f"{languages['images_without_caption']} images had a name in none of these languages and "
                      "were left out."]
    return [*lines, ""]


def format_summary(summary: dict) -> str:
    """The table ``captioner data emoji`` prints: images per source and split, distinct emoji."""
    split_names = _split_names(summary["holdout_artists"])
    width = max(10, *(len(s) + 1 for s in summary["per_source"]))
    lines = [f"wrote {summary['dataset_json']} ({summary['images']} images, {summary['distinct_captions']} "
             f"distinct emoji, vocabulary {summary['vocab_size']}) in {summary['seconds']} s"]
    lines.append(f"  {'source':<{width}}" + "".join(f"{s:>12}" for s in (*split_names, "total")))
    for source, counts in summary["per_source"].items():
        lines.append(f"  {source:<{width}}" + "".join(f"{counts[s]:>12}" for s in (*split_names, "total")))
    lines.append(f"  {'emoji':<{width}}" + "".join(f"{summary['splits'][s]['emoji']:>12}" for s in split_names)
                 + f"{summary['distinct_captions']:>12}")
    for source, counts in summary["mapping"].items():
        lines.append(f"  {source}: " + ", ".join(f"{n} {how}" for how, n in counts.items()))
    for source, message in summary["missing"].items():
        lines.append(f"  skipped source {message}")
    if "languages" in summary:
        per = summary["languages"]["per_language"]
        lines.append("  captions per language: " + ", ".join(
            f"{lang} {row['captions']}" + (f" ({row['unnamed_emoji']} emoji unnamed)" if row["unnamed_emoji"] else "")
            for lang, row in per.items()))
    return "\n".join(lines)
