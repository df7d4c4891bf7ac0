"""Profile set loading and validation, through the library and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgm_bake.cli import main
from sgm_bake.datasets.profile_set import load_profile_set
from sgm_bake.errors import SGMError
from tests.helpers import labelled_rows


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_builtin_default_is_a_real_contrastive_set():
    profile_set = load_profile_set("builtin:default")
    toxic, benign = profile_set.counts()
    assert toxic >= 200 and benign >= 200
    by_pair: dict[str, list] = {}
    for sample in profile_set.samples:
        assert sample.render is not None and sample.prompt
        by_pair.setdefault(sample.id.rsplit("-", 1)[0], []).append(sample)
    for pair in by_pair.values():
        assert sorted(s.label for s in pair) == [0, 1]
        assert pair[0].prompt == pair[1].prompt
    image = profile_set.samples[0].image()
    assert image.size == (224, 224) and image.mode == "RGB"


def test_csv_with_images_and_labels(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "img" / "a.png")
    lines = ["text,label,image"]
    for index in range(4):
        lines.append(f"bad words {index},1,img/a.png")
        lines.append(f"kind words {index},0,img/a.png")
    path = tmp_path / "set.csv"
    path.write_text("\n".join(lines) + "\n")
    profile_set = load_profile_set(str(path))
    assert profile_set.counts() == (4, 4)
    assert profile_set.samples[0].image().size == (8, 8)


def test_max_samples_keeps_both_classes(tmp_path):
    profile_set = load_profile_set(str(_jsonl(tmp_path / "s.jsonl", labelled_rows(10))))
    limited = profile_set.limited(6)
    assert limited.counts() == (3, 3)


def test_prompt_response_split(tmp_path):
    rows = [
        {"prompt": "what?", "response": r["text"], "label": r["label"]} for r in labelled_rows()
    ]
    sample = load_profile_set(str(_jsonl(tmp_path / "s.jsonl", rows))).samples[0]
    assert sample.prompt == "what?" and sample.text.startswith("you are")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"text": "x", "label": "toxic"}] * 8, "only toxic"),
        (labelled_rows(2), "too few samples"),
        ([*labelled_rows(4), {"text": "x", "label": "spicy"}], "unknown label 'spicy'"),
        ([*labelled_rows(4), {"text": "  ", "label": "toxic"}], "empty text"),
        ([*labelled_rows(4), {"text": "x"}], "missing 'label'"),
        (labelled_rows(4, image="../outside.png"), "points outside its folder"),
        (labelled_rows(4, image="/etc/passwd"), "points outside its folder"),
        (labelled_rows(4, image="missing.png"), "does not exist"),
        (labelled_rows(4, render={"kind": "hologram"}), "unknown image render kind"),
        (
            labelled_rows(4, render={"kind": "scene", "shapes": [{"shape": "circle", "x": 9}]}),
            r"\[0, 1\]",
        ),
        (labelled_rows(4, render={"kind": "text", "text": ["x"]}), "non-empty string"),
    ],
)
def test_validation_errors(tmp_path, rows, message):
    """Bad rows, render specs included, fail when the set is loaded, before any model."""
    path = _jsonl(tmp_path / "set.jsonl", rows)
    with pytest.raises(SGMError, match=message):
        load_profile_set(str(path))


def test_unreadable_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = _jsonl(tmp_path / "set.jsonl", labelled_rows(4, image="broken.png"))
    with pytest.raises(SGMError, match="unreadable"):
        load_profile_set(str(path))


def test_bad_json_line(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(SGMError, match=r"set.jsonl:2 is not valid JSON"):
        load_profile_set(str(path))


def test_unknown_builtin_and_missing_file(tmp_path):
    with pytest.raises(SGMError, match="built-in sets: default"):
        load_profile_set("builtin:nope")
    with pytest.raises(SGMError, match="does not exist"):
        load_profile_set(str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(
    ("rows", "message"),
    [(labelled_rows(2), "too few samples"), ([{"text": "x", "label": "0"}] * 8, "only non-toxic")],
)
def test_cli_reports_set_errors_in_one_line(runner, llava_dir, tmp_path, rows, message):
    path = _jsonl(tmp_path / "set.jsonl", rows)
    output = tmp_path / "e.safetensors"
    result = runner.invoke(
        main, ["profile", str(llava_dir), "-o", str(output), "--profile-set", str(path)]
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.output and not output.exists()


def test_cli_profile_refuses_existing_output(runner, llava_dir, tmp_path):
    output = tmp_path / "e.safetensors"
    output.write_text("keep")
    result = runner.invoke(main, ["profile", str(llava_dir), "-o", str(output)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert output.read_text() == "keep"


def test_cli_layers_outside_range(runner, llava_dir, tmp_path):
    path = _jsonl(tmp_path / "set.jsonl", labelled_rows(4))
    result = runner.invoke(
        main,
        [
            "profile",
            str(llava_dir),
            "-o",
            str(tmp_path / "e.safetensors"),
            "--profile-set",
            str(path),
            "--layers",
            "5-9",
        ],
    )
    assert result.exit_code == 2 and "outside the post-fusion layers" in result.output


# --- text files as editors and spreadsheets save them -----------------------------------------


def _texts(path: Path) -> list[str]:
    return [sample.text for sample in load_profile_set(str(path)).samples]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_unicode_files_with_a_byte_order_mark(tmp_path, encoding):
    """UTF-8 with a BOM (Notepad, Excel's 'CSV UTF-8'), UTF-16/32 with one ('Unicode text')."""
    rows = labelled_rows(4)
    rows[0]["text"] = "café, naïve, 東京"
    jsonl = tmp_path / "set.jsonl"
    text = "\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n"
    jsonl.write_bytes(
        text.encode(encoding) if encoding != "utf-16-be" else b"\xfe\xff" + text.encode(encoding)
    )
    assert _texts(jsonl)[0] == "café, naïve, 東京"
    csv_file = tmp_path / "set.csv"
    lines = ["text,label", *(f"{row['text'].replace(',', ' ')},{row['label']}" for row in rows)]
    table = "\r\n".join(lines) + "\r\n"
    csv_file.write_bytes(
        table.encode(encoding) if encoding != "utf-16-be" else b"\xfe\xff" + table.encode(encoding)
    )
    assert _texts(csv_file)[0] == "café  naïve  東京"


def test_a_legacy_code_page_is_refused_naming_the_line(tmp_path):
    rows = labelled_rows(4)
    rows[2]["text"] = "you are a naïve fool"
    path = tmp_path / "set.jsonl"
    path.write_bytes(("\n".join(json.dumps(r, ensure_ascii=False) for r in rows)).encode("cp1252"))
    with pytest.raises(SGMError, match=r"not UTF-8 text \(byte 0xef on line 3.*Windows-1252"):
        load_profile_set(str(path))


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_unicode_line_separators_inside_strings_stay_in_their_row(tmp_path, separator):
    rows = labelled_rows(4)
    rows[0]["text"] = f"first part{separator}second part"
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    texts = _texts(path)
    assert len(texts) == 8 and texts[0] == f"first part{separator}second part"


def test_csv_fields_keep_their_quoted_line_breaks(tmp_path):
    path = tmp_path / "set.csv"
    lines = ["text,label", '"two\nlines, one field",toxic']
    lines += [f"kind words {i},non-toxic" for i in range(4)]
    lines += [f"bad words {i},toxic" for i in range(3)]
    path.write_text("\n".join(lines) + "\n")
    assert _texts(path)[0] == "two\nlines, one field"


def test_a_csv_row_with_more_fields_than_the_header_is_refused(tmp_path):
    path = tmp_path / "set.csv"
    lines = ["text,label", "you are bad, really,toxic"]
    lines += [f"kind words {i},non-toxic" for i in range(4)]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SGMError, match=r"set.csv:2 has more fields than the header"):
        load_profile_set(str(path))
