"""Data sets in their own format: local Parquet files and folders with images the tests write,
other column names, label mapping, streaming caps and the content digest."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from sgm_bake.datasets.hub_dataset import (
    DataFormat,
    is_dataset_spec,
    parse_columns,
    parse_toxic_labels,
)
from sgm_bake.datasets.profile_set import load_profile_set
from sgm_bake.datasets.prompt_set import load_prompt_set
from sgm_bake.errors import SGMError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

COLOURS = ("blue", "red")


@pytest.fixture(autouse=True)
def image_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _png(colour: str, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _safety_rows(n: int = 12) -> dict[str, list]:
    """MM-SafetyBench-like columns: unsafe rows (is_safe false) carry a red image."""
    return {
        "question": [f"question {i}" for i in range(n)],
        "answer": [("a harmful answer " if i % 2 else "a kind answer ") + str(i) for i in range(n)],
        "is_safe": [i % 2 == 0 for i in range(n)],
        "picture": [{"bytes": _png(COLOURS[i % 2]), "path": None} for i in range(n)],
    }


def _write_parquet(path: Path, columns: dict[str, list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


SAFETY = DataFormat(
    parse_columns("prompt=question,response=answer,label=is_safe,image=picture"), ("false",)
)


def test_parquet_with_image_bytes_and_mapped_columns(tmp_path):
    path = _write_parquet(tmp_path / "set.parquet", _safety_rows())
    profile_set = load_profile_set(str(path), data_format=SAFETY)
    assert profile_set.counts() == (6, 6)
    for sample in profile_set.samples:
        toxic = sample.label == 1
        assert sample.text.startswith("a harmful" if toxic else "a kind")
        assert sample.prompt.startswith("question")
        image = sample.image()
        assert image.size == (8, 8)
        assert image.getpixel((0, 0)) == ((255, 0, 0) if toxic else (0, 0, 255))
    again = load_profile_set(str(path), data_format=SAFETY)
    assert again.sha256 == profile_set.sha256 and again.revision is None


def test_the_digest_follows_the_content(tmp_path):
    rows = _safety_rows()
    first = load_profile_set(str(_write_parquet(tmp_path / "a.parquet", rows)), data_format=SAFETY)
    rows["picture"][3] = {"bytes": _png("green"), "path": None}
    second = load_profile_set(str(_write_parquet(tmp_path / "b.parquet", rows)), data_format=SAFETY)
    assert first.sha256 != second.sha256


def test_parquet_written_by_datasets_with_an_image_feature(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _safety_rows()
    rows["picture"] = [
        Image.new("RGB", (6, 6), COLOURS[i % 2]) for i in range(len(rows["question"]))
    ]
    table = datasets.Dataset.from_dict(rows).cast_column("picture", datasets.Image())
    path = tmp_path / "hub-style.parquet"
    table.to_parquet(str(path))
    profile_set = load_profile_set(str(path), data_format=SAFETY)
    assert profile_set.counts() == (6, 6)
    toxic = next(s for s in profile_set.samples if s.label == 1)
    assert toxic.image().size == (6, 6) and toxic.image().getpixel((0, 0)) == (255, 0, 0)


def test_a_folder_with_splits_and_image_paths(tmp_path):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    for colour in COLOURS:
        (folder / "images" / f"{colour}.png").write_bytes(_png(colour))
    rows = _safety_rows()
    rows["picture"] = [f"images/{COLOURS[i % 2]}.png" for i in range(12)]
    _write_parquet(folder / "train-00000-of-00001.parquet", rows)
    test_rows = {k: v[:8] for k, v in _safety_rows(8).items()}
    test_rows["answer"] = [f"held out {i}" for i in range(8)]
    test_rows["picture"] = [f"images/{COLOURS[i % 2]}.png" for i in range(8)]
    _write_parquet(folder / "test-00000-of-00001.parquet", test_rows)
    train = load_profile_set(str(folder), data_format=SAFETY)
    assert train.counts() == (6, 6)
    held_out = load_profile_set(
        str(folder), data_format=DataFormat(SAFETY.columns, ("false",), split="test")
    )
    assert held_out.counts() == (4, 4)
    assert all(s.text.startswith("held out") for s in held_out.samples)
    assert held_out.samples[1].image().getpixel((0, 0)) == (255, 0, 0)


def test_an_image_path_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "outside.png").write_bytes(_png("red"))
    rows = _safety_rows()
    rows["picture"] = ["../outside.png"] * 12
    path = _write_parquet(tmp_path / "data" / "set.parquet", rows)
    with pytest.raises(SGMError, match="outside"):
        load_profile_set(str(path), data_format=SAFETY)


def test_a_capped_stream_fills_both_classes(tmp_path):
    rows = _safety_rows(40)
    # All toxic rows first: a plain cap of the first rows would hold one class only.
    order = sorted(range(40), key=lambda i: rows["is_safe"][i])
    path = _write_parquet(
        tmp_path / "s.parquet", {k: [v[i] for i in order] for k, v in rows.items()}
    )
    capped = load_profile_set(str(path), data_format=SAFETY, max_samples=6)
    assert capped.counts() == (3, 3)


def test_native_files_take_a_column_mapping_too(tmp_path):
    lines = ["utterance,verdict"]
    for index in range(4):
        lines += [f"you are an idiot {index},unsafe", f"you are kind {index},safe"]
    path = tmp_path / "set.csv"
    path.write_text("\n".join(lines) + "\n")
    fmt = DataFormat(parse_columns("text=utterance,label=verdict"), parse_toxic_labels("unsafe"))
    profile_set = load_profile_set(str(path), data_format=fmt)
    assert profile_set.counts() == (4, 4)
    assert profile_set.samples[0].text == "you are an idiot 0"


def test_prompt_set_from_parquet_with_defaults_from_the_label(tmp_path):
    rows = _safety_rows(6)
    rows["scenario"] = ["illegal_activity", "hate_speech"] * 3
    rows["gold"] = ["", "paris", "", "blue", "", "red"]
    path = _write_parquet(tmp_path / "eval.parquet", rows)
    fmt = DataFormat(
        parse_columns(
            "prompt=question,image=picture,label=is_safe,category=scenario,expected=gold"
        ),
        ("false",),
    )
    prompts = load_prompt_set(str(path), fmt)
    assert [i.condition for i in prompts.items] == ["benign", "standard"] * 3
    assert prompts.items[1].category == "hate_speech"
    assert prompts.items[3].expected == "blue" and prompts.items[0].expected is None
    assert prompts.items[1].image().getpixel((0, 0)) == (255, 0, 0)
    assert len(load_prompt_set(str(path), fmt, max_items=2).items) == 2


def test_prompt_set_without_labels_is_all_standard_requests(tmp_path):
    path = _write_parquet(tmp_path / "eval.parquet", {"query": ["how do I do a bad thing"] * 3})
    prompts = load_prompt_set(str(path), DataFormat(parse_columns("prompt=query")))
    assert {(i.condition, i.category) for i in prompts.items} == {("standard", "unspecified")}


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ("prompt", "FIELD=COLUMN"),
        ("colour=picture", "not one of"),
        ("prompt=a,prompt=b", "twice"),
    ],
)
def test_bad_column_mappings_are_refused(columns, message):
    with pytest.raises(SGMError, match=message):
        parse_columns(columns)


def test_a_column_mapping_from_a_json_file(tmp_path):
    path = tmp_path / "columns.json"
    path.write_text(json.dumps({"prompt": "question", "label": "is_safe"}))
    assert parse_columns(str(path)) == (("prompt", "question"), ("label", "is_safe"))


def test_a_missing_column_names_the_columns_there_are(tmp_path):
    path = _write_parquet(tmp_path / "set.parquet", _safety_rows())
    fmt = DataFormat(parse_columns("response=reply,label=is_safe"), ("false",))
    with pytest.raises(SGMError, match=r"no column 'reply'.*question"):
        load_profile_set(str(path), data_format=fmt)


def test_dataset_options_on_a_native_file_are_refused(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text('{"text": "x", "label": 1}\n')
    with pytest.raises(SGMError, match="--dataset-revision applies"):
        load_profile_set(str(path), data_format=DataFormat(revision="main"))
    with pytest.raises(SGMError, match="--dataset-revision applies"):
        load_profile_set(
            str(_write_parquet(tmp_path / "s.parquet", _safety_rows())),
            data_format=DataFormat(SAFETY.columns, ("false",), revision="main"),
        )


def test_which_specs_go_through_datasets(tmp_path):
    assert is_dataset_spec("hf:PKU-Alignment/MM-SafetyBench")
    assert not is_dataset_spec("hf://datasets/org/name/set.jsonl")
    assert not is_dataset_spec("builtin:safety-profile-v1")
    assert is_dataset_spec(str(tmp_path))
    assert is_dataset_spec("x.parquet") and not is_dataset_spec("x.jsonl")


def test_without_the_extra_the_error_names_it(tmp_path, monkeypatch):
    path = _write_parquet(tmp_path / "set.parquet", _safety_rows())
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(SGMError, match=r"sgm-bake\[datasets\]"):
        load_profile_set(str(path), data_format=SAFETY)


def test_a_hub_dataset_offline_is_one_line_naming_the_cause(monkeypatch):
    import huggingface_hub

    pytest.importorskip("datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SGMError, match="HF_HUB_OFFLINE is set; pass a local copy"):
        load_profile_set("hf:some-org/mm-safety-rows", data_format=SAFETY)
    with pytest.raises(SGMError, match="must look like hf:OWNER/NAME"):
        load_prompt_set("hf:a/b/c")
