"""Hostile and broken input through the CLI: one line, exit 2, and not one byte changed.

Every case builds its inputs under `tmp_path` (a copy of the tiny LLaVA as SOURCE, files beside
it that an attack might reach), runs one command, and asserts: exit code 2, exactly one output
line starting with `error: `, no traceback, and a snapshot of the whole of `tmp_path` (every
file's sha256, every symlink's target, every folder) identical before and after, so SOURCE, any
existing OUT and everything around them are unchanged and nothing was written elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sgm_bake.cli import main
from sgm_bake.core.expertise import load_expertise
from sgm_bake.io.checkpoint import open_checkpoint
from sgm_bake.io.source import resolve_source
from sgm_bake.pipeline.bake import BakeOptions, bake
from tests.helpers import REPO, labelled_rows, load_state, shard, snapshot, write_json

# --- builders of bad inputs -------------------------------------------------------------------


def rewrite_header(path: Path, edit: Callable[[dict], object]) -> None:
    """Rewrite a safetensors header (data kept); `edit` returns the new header (dict or text)."""
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    new = edit(header)
    raw = (new if isinstance(new, str) else json.dumps(new)).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + length :])


def first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def edit_entry(field: str, value: object) -> Callable[[dict], dict]:
    def edit(header: dict) -> dict:
        header[first_tensor(header)][field] = value
        return header

    return edit


def index_pointing(target: Callable[[Path, Path], str]) -> Callable[[Path, Path], None]:
    """A sharded SOURCE whose index sends one tensor to `target(src, tmp)`."""

    def build(src: Path, tmp: Path) -> None:
        index = shard(src)
        victim = tmp / "victim.safetensors"  # a valid file outside SOURCE that must stay as is
        shutil.copyfile(src / "model-00002-of-00002.safetensors", victim)
        key = sorted(index["weight_map"])[-1]
        index["weight_map"][key] = target(src, tmp)
        write_json(src / "model.safetensors.index.json", index)

    return build


def edit_config(**changes: object) -> Callable[[Path, Path], None]:
    def build(src: Path, tmp: Path) -> None:
        config = json.loads((src / "config.json").read_text())
        for key, value in changes.items():
            where = config
            *parents, last = key.split("__")
            for parent in parents:
                where = where[parent]
            where[last] = value
        write_json(src / "config.json", config)

    return build


def header_case(edit: Callable[[dict], object]) -> Callable[[Path, Path], None]:
    return lambda src, tmp: rewrite_header(src / "model.safetensors", edit)


def duplicate_in_header(header: dict) -> str:
    name = first_tensor(header)
    return "{" + f"{json.dumps(name)}:{json.dumps(header[name])}," + json.dumps(header)[1:]


def symlink_out(relative: str, is_dir: bool = False) -> Callable[[Path, Path], None]:
    """Replace a SOURCE entry by a symlink to an equal copy outside SOURCE."""

    def build(src: Path, tmp: Path) -> None:
        outside = tmp / "outside"
        outside.mkdir(exist_ok=True)
        if is_dir:
            (outside / "secret.txt").write_text("not yours")
            (src / relative).symlink_to(outside, target_is_directory=True)
            return
        shutil.copyfile(src / relative, outside / Path(relative).name)
        (src / relative).unlink()
        (src / relative).symlink_to(outside / Path(relative).name)

    return build


def bin_without_tensors(src: Path, tmp: Path) -> None:
    (src / "model.safetensors").unlink()
    torch.save({"global_step": 7, "epoch": 1}, src / "pytorch_model.bin")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def profile_set_with(image: str | None = None, render: dict | None = None, bomb: bool = False):
    def build(src: Path, tmp: Path) -> None:
        folder = tmp / "set"
        folder.mkdir()
        from PIL import Image

        Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp / "outside.png")
        if image == "link.png":
            (folder / "link.png").symlink_to(tmp / "outside.png")
        if bomb:
            (folder / "bomb.png").write_bytes(png_declaring(60_000, 60_000))
        rows = labelled_rows(4, image=image or ("bomb.png" if bomb else None), render=render)
        (folder / "set.jsonl").write_text("\n".join(json.dumps(r) for r in rows))

    return build


def prompt_set_with(image: str) -> Callable[[Path, Path], None]:
    def build(src: Path, tmp: Path) -> None:
        from PIL import Image

        folder = tmp / "prompts"
        folder.mkdir()
        Image.new("RGB", (8, 8)).save(tmp / "outside.png")
        if image == "link.png":
            (folder / "link.png").symlink_to(tmp / "outside.png")
        row = {"condition": "standard", "category": "x", "prompt": "hi", "image": image}
        (folder / "p.jsonl").write_text(json.dumps(row) + "\n")

    return build


def baked_output(damage: Callable[[Path, Path], None]) -> Callable[[Path, Path], None]:
    """A real baked OUT (tmp/baked), then damaged."""

    def build(src: Path, tmp: Path) -> None:
        expertise = load_expertise(tmp / "expertise.safetensors")
        options = BakeOptions(progress=False)
        bake(resolve_source(str(src)), tmp / "baked", expertise, options)
        damage(tmp / "baked", tmp)

    return build


def readme_becomes_symlink(out: Path, tmp: Path) -> None:
    shutil.copyfile(out / "README.md", tmp / "README.copy.md")
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(tmp / "README.copy.md")


def cp1252_profile_set(src: Path, tmp: Path) -> None:
    """A profile set saved by a Windows editor in its legacy code page."""
    rows = labelled_rows(4)
    rows[3]["text"] = "a naïve café insult"
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    (tmp / "set.jsonl").write_bytes(text.encode("cp1252"))


def long_row_profile_set(src: Path, tmp: Path) -> None:
    """A row longer than the tiny model's context of 1024 positions (one token per byte)."""
    rows = labelled_rows(4)
    rows[5]["text"] = "na " * 1500
    (tmp / "set.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def chat_template(text: str) -> Callable[[Path, Path], None]:
    def build(src: Path, tmp: Path) -> None:
        (src / "chat_template.jinja").write_text(text)
        (tmp / "set.jsonl").write_text("\n".join(json.dumps(r) for r in labelled_rows(4)) + "\n")
        (tmp / "template.jinja").write_text(text)
        row = {"condition": "benign", "category": "benign", "prompt": "what colour?"}
        (tmp / "prompts.jsonl").write_text(json.dumps(row) + "\n")

    return build


def long_prompt_set(src: Path, tmp: Path) -> None:
    row = {"condition": "standard", "category": "insult", "prompt": "tell me " * 400}
    (tmp / "prompts.jsonl").write_text(json.dumps(row) + "\n")


def responses_dir_of_others(src: Path, tmp: Path) -> None:
    (tmp / "set.jsonl").write_text("\n".join(json.dumps(r) for r in labelled_rows(4)) + "\n")
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.tex").write_text("years of work")


def tamper_config(out: Path, tmp: Path) -> None:
    (out / "config.json").write_text((out / "config.json").read_text() + " ")


def add_unbaked_copy(out: Path, tmp: Path) -> None:
    shutil.copyfile(tmp / "src" / "model.safetensors", out / "model-copy.safetensors")


SANDBOX_ESCAPE = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
RAISING_TEMPLATE = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"


# --- the matrix -------------------------------------------------------------------------------

BAKE = ["bake", "{src}", "{out}", "--expertise", "{expertise}", "--no-verify"]
PROFILE = ["profile", "{src}", "-o", "{tmp}/expertise-new.safetensors", "--profile-set"]

# case: (builder, command, fragment of the one error line[, exit code, 2 when not given])
CASES: dict[str, tuple] = {
    # Security: names from inside the checkpoint, symlinks, one tensor one place.
    "index-absolute": (
        index_pointing(lambda s, t: str(t / "victim.safetensors")),
        BAKE,
        "points outside its folder",
    ),
    "index-dotdot": (
        index_pointing(lambda s, t: "../victim.safetensors"),
        BAKE,
        "points outside its folder",
    ),
    "index-inner-dotdot": (
        index_pointing(lambda s, t: "sub/../../victim.safetensors"),
        BAKE,
        "points outside its folder",
    ),
    "index-backslash": (
        index_pointing(lambda s, t: "..\\victim.safetensors"),
        BAKE,
        "points outside its folder",
    ),
    "index-drive": (
        index_pointing(lambda s, t: "C:/victim.safetensors"),
        BAKE,
        "points outside its folder",
    ),
    "index-not-a-name": (index_pointing(lambda s, t: 7), BAKE, "not a file name"),  # type: ignore[arg-type,return-value]
    "index-symlinked-shard": (
        lambda s, t: (shard(s), symlink_out("model-00002-of-00002.safetensors")(s, t)),
        BAKE,
        "resolves outside",
    ),
    "index-empty-map": (
        lambda s, t: (shard(s), write_json(s / "model.safetensors.index.json", {"weight_map": {}})),
        BAKE,
        "no weight_map",
    ),
    "index-duplicate-key": (
        lambda s, t: (
            shard(s),
            (s / "model.safetensors.index.json").write_text(
                '{"weight_map": {"a": "model-00001-of-00002.safetensors", '
                '"a": "model-00002-of-00002.safetensors"}}'
            ),
        ),
        BAKE,
        "appears twice",
    ),
    "tensor-in-two-shards": (
        lambda s, t: (
            shard(s),
            save_file(
                {
                    **load_file(str(s / "model-00002-of-00002.safetensors")),
                    **dict(
                        list(load_file(str(s / "model-00001-of-00002.safetensors")).items())[:1]
                    ),
                },
                str(s / "model-00002-of-00002.safetensors"),
                metadata={"format": "pt"},
            ),
        ),
        BAKE,
        "stored in both",
    ),
    "symlinked-weights": (symlink_out("model.safetensors"), BAKE, "resolves outside"),
    "symlinked-config": (symlink_out("config.json"), BAKE, "resolves outside"),
    "symlinked-tokenizer": (symlink_out("tokenizer.json"), BAKE, "outside the source folder"),
    "symlinked-folder": (symlink_out("extra", is_dir=True), BAKE, "outside the source folder"),
    # The safetensors header, every field.
    "header-duplicate-name": (header_case(duplicate_in_header), BAKE, "appears twice"),
    "header-unknown-dtype": (header_case(edit_entry("dtype", "Q7")), BAKE, "unknown dtype"),
    "header-dtype-not-string": (header_case(edit_entry("dtype", 4)), BAKE, "unknown dtype"),
    "header-negative-shape": (header_case(edit_entry("shape", [-1, 4])), BAKE, "shape"),
    "header-bool-shape": (header_case(edit_entry("shape", [True])), BAKE, "shape"),
    "header-float-shape": (header_case(edit_entry("shape", [2.0, 16])), BAKE, "shape"),
    "header-shape-not-list": (header_case(edit_entry("shape", "16")), BAKE, "shape"),
    "header-offsets-mismatch": (
        header_case(edit_entry("shape", [3, 3])),
        BAKE,
        "bytes for shape",
    ),
    "header-offsets-short": (header_case(edit_entry("data_offsets", [0])), BAKE, "data_offsets"),
    "header-offsets-reversed": (
        header_case(edit_entry("data_offsets", [8, 0])),
        BAKE,
        "data_offsets",
    ),
    "header-entry-not-object": (
        header_case(lambda h: {**h, first_tensor(h): [1, 2]}),
        BAKE,
        "not an object",
    ),
    "header-metadata-not-strings": (
        header_case(lambda h: {**h, "__metadata__": {"format": 1}}),
        BAKE,
        "__metadata__",
    ),
    "header-not-json": (header_case(lambda h: "{not json"), BAKE, "not JSON"),
    "header-array": (header_case(lambda h: "[1, 2]"), BAKE, "not a JSON object"),
    "header-length-huge": (
        lambda s, t: (s / "model.safetensors").write_bytes(
            struct.pack("<Q", 2**62) + (s / "model.safetensors").read_bytes()[8:]
        ),
        BAKE,
        "exceeds the file",
    ),
    "header-truncated": (
        lambda s, t: (s / "model.safetensors").write_bytes(
            (s / "model.safetensors").read_bytes()[:-100]
        ),
        BAKE,
        "expected",
    ),
    # config.json fields, before anything uses them.
    "config-model-type-int": (edit_config(model_type=3), BAKE, "model_type must be"),
    "config-text-config-list": (edit_config(text_config=[1]), BAKE, "text_config must be"),
    "config-absurd-layers": (
        edit_config(text_config__num_hidden_layers=10**9),
        BAKE,
        "num_hidden_layers",
    ),
    "config-layers-string": (edit_config(text_config__num_hidden_layers="2"), BAKE, "whole"),
    "config-layers-bool": (edit_config(text_config__num_hidden_layers=True), BAKE, "whole"),
    "config-hidden-zero": (edit_config(text_config__hidden_size=0), BAKE, "hidden_size"),
    "config-not-json": (
        lambda s, t: (s / "config.json").write_text("{'model_type': llava"),
        BAKE,
        "not valid JSON",
    ),
    "config-array": (lambda s, t: write_json(s / "config.json", [1]), BAKE, "JSON object"),
    "config-unknown-model-type": (edit_config(model_type="frobnicator"), BAKE, "sgm-bake recipes"),
    # Weights in PyTorch form without any tensor.
    "bin-no-tensors": (bin_without_tensors, BAKE, "holds no tensors"),
    # Operating-system failures, an existing output, the expertise file.
    "out-parent-is-file": (
        lambda s, t: (t / "afile").write_text("x"),
        ["bake", "{src}", "{tmp}/afile/out", "--expertise", "{expertise}", "--no-verify"],
        "is a file, not a folder",
    ),
    "out-name-too-long": (
        None,
        ["bake", "{src}", "{tmp}/" + "o" * 300, "--expertise", "{expertise}", "--no-verify"],
        "too long",
    ),
    "out-is-file": (lambda s, t: (t / "out").write_text("x"), BAKE, "is a file"),
    "out-not-empty": (
        lambda s, t: ((t / "out").mkdir(), (t / "out" / "keep.txt").write_text("mine")),
        BAKE,
        "--overwrite",
    ),
    "out-inside-source": (
        None,
        ["bake", "{src}", "{src}/out", "--expertise", "{expertise}", "--no-verify"],
        "inside the source",
    ),
    "expertise-corrupt": (
        lambda s, t: (t / "bad.safetensors").write_bytes(b"\x10" * 64),
        ["bake", "{src}", "{out}", "--expertise", "{tmp}/bad.safetensors", "--no-verify"],
        "not a readable expertise file",
    ),
    # Profile sets and prompt sets: refused when loaded, before any model.
    "profile-image-symlink": (
        profile_set_with(image="link.png"),
        [*PROFILE, "{tmp}/set/set.jsonl"],
        "resolves outside",
    ),
    "profile-image-dotdot": (
        profile_set_with(image="../outside.png"),
        [*PROFILE, "{tmp}/set/set.jsonl"],
        "points outside its folder",
    ),
    "profile-decompression-bomb": (
        profile_set_with(bomb=True),
        [*PROFILE, "{tmp}/set/set.jsonl"],
        "decompression bomb",
    ),
    "profile-bad-render": (
        profile_set_with(render={"kind": "scene", "shapes": [{"shape": "circle", "y": "top"}]}),
        [*PROFILE, "{tmp}/set/set.jsonl"],
        "[0, 1]",
    ),
    "prompt-image-symlink": (
        prompt_set_with("link.png"),
        ["eval", "{src}", "--prompt-set", "{tmp}/prompts/p.jsonl"],
        "resolves outside",
    ),
    "prompt-image-absolute": (
        prompt_set_with("/etc/hostname"),
        ["eval", "{src}", "--prompt-set", "{tmp}/prompts/p.jsonl"],
        "points outside its folder",
    ),
    # Readers of a baked folder.
    "push-symlinked-file": (
        baked_output(readme_becomes_symlink),
        ["push", "{tmp}/baked", "me/model", "--dry-run"],
        "has become a symlink",
    ),
    "inspect-damaged-record": (
        baked_output(lambda out, t: (out / "sgm" / "bake.json").write_text("{")),
        ["inspect", "{tmp}/baked"],
        "not valid JSON",
    ),
    "unbake-dest-parent-file": (
        baked_output(lambda out, t: (t / "afile").write_text("x")),
        ["unbake", "{tmp}/baked", "{tmp}/afile/dest"],
        "is a file, not a folder",
    ),
    # Round two: text as editors save it, rows beyond the context, templates the sandbox stops.
    "profile-set-cp1252": (
        cp1252_profile_set,
        [*PROFILE, "{tmp}/set.jsonl"],
        "not UTF-8 text (byte 0xef on line 4",
    ),
    "profile-row-beyond-context": (
        long_row_profile_set,
        [*PROFILE, "{tmp}/set.jsonl", "--device", "cpu"],
        "more than the model's context of 1024 tokens",
    ),
    "profile-template-escapes-sandbox": (
        chat_template(SANDBOX_ESCAPE),
        [*PROFILE, "{tmp}/set.jsonl", "--device", "cpu"],
        "Jinja's sandbox forbids",
    ),
    "eval-template-raises": (
        chat_template(RAISING_TEMPLATE),
        ["eval", "{src}", "--prompt-set", "{tmp}/prompts.jsonl", "--device", "cpu"],
        "roles must alternate",
    ),
    "eval-prompt-beyond-context": (
        long_prompt_set,
        ["eval", "{src}", "--prompt-set", "{tmp}/prompts.jsonl", "--device", "cpu"],
        "more than the model's context",
    ),
    "profile-responses-dir-of-others": (
        responses_dir_of_others,
        [*PROFILE, "{tmp}/set.jsonl", "--responses-dir", "{tmp}/mine"],
        "not an sgm-bake response store",
    ),
    "push-repo-id-with-newline": (
        baked_output(lambda out, t: None),
        ["push", "{tmp}/baked", "me/model\nlicense: mit", "--dry-run"],
        "is not a Hub repository id",
    ),
    "unbake-compare-other-names": (
        baked_output(lambda out, t: None),
        ["unbake", "{tmp}/baked", "{tmp}/dest", "--compare", "{tmp}/other"],
        "does not exist locally",
    ),
    # A baked folder that no longer matches its record: exit 4 before anything is written.
    "verify-tampered": (baked_output(tamper_config), ["verify", "{tmp}/baked"], "changed", 4),
    "verify-unrecorded-weights": (
        baked_output(add_unbaked_copy),
        ["verify", "{tmp}/baked"],
        "not in the record: model-copy.safetensors",
        4,
    ),
    "push-dry-run-tampered": (
        baked_output(add_unbaked_copy),
        ["push", "{tmp}/baked", "me/model", "--dry-run"],
        "not in the record: model-copy.safetensors",
        4,
    ),
    "eval-tampered": (
        baked_output(tamper_config),
        ["eval", "{tmp}/baked", "--no-base"],
        "changed: config.json",
        4,
    ),
    "unbake-tampered": (
        baked_output(tamper_config),
        ["unbake", "{tmp}/baked", "{tmp}/dest"],
        "changed: config.json",
        4,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, runner, tmp_path, llava_dir, llava_expertise):
    build, args, fragment, *code = CASES[case]
    src = tmp_path / "src"
    shutil.copytree(llava_dir, src)
    shutil.copyfile(llava_expertise, tmp_path / "expertise.safetensors")
    if build is not None:
        build(src, tmp_path)
    before = snapshot(tmp_path)
    values = {"src": src, "out": tmp_path / "out", "tmp": tmp_path}
    values["expertise"] = tmp_path / "expertise.safetensors"
    result = runner.invoke(main, ["-q", *(a.format(**values) for a in args)])
    # stderr: the one error line; stdout may have announced the step that failed
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == (code[0] if code else 2), result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "error" not in result.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment in lines[0], lines[0]
    assert snapshot(tmp_path) == before


# --- legal inputs that must keep working ------------------------------------------------------


@pytest.mark.slow
def test_shards_in_a_subfolder_bake_into_the_same_subfolder(tmp_path, llava_dir, llava_expertise):
    src = tmp_path / "src"
    shutil.copytree(llava_dir, src)
    index = shard(src)
    (src / "weights").mkdir()
    for name in set(index["weight_map"].values()):
        (src / name).rename(src / "weights" / name)
    index["weight_map"] = {k: f"weights/{v}" for k, v in index["weight_map"].items()}
    write_json(src / "model.safetensors.index.json", index)
    out = tmp_path / "out"
    bake(
        resolve_source(str(src)), out, load_expertise(llava_expertise), BakeOptions(progress=False)
    )
    shards = {value.split("/")[1] for value in index["weight_map"].values()}
    assert {p.name for p in (out / "weights").iterdir()} == shards
    assert set(load_state(out / "weights")) == set(index["weight_map"])
    assert open_checkpoint(out).weight_files == open_checkpoint(src).weight_files


@pytest.mark.slow
def test_symlinks_inside_source_are_followed(tmp_path, llava_dir, llava_expertise):
    src = tmp_path / "src"
    shutil.copytree(llava_dir, src)
    (src / "tokenizer.real.json").write_bytes((src / "tokenizer.json").read_bytes())
    (src / "tokenizer.json").unlink()
    (src / "tokenizer.json").symlink_to("tokenizer.real.json")
    out = tmp_path / "out"
    bake(
        resolve_source(str(src)), out, load_expertise(llava_expertise), BakeOptions(progress=False)
    )
    assert not (out / "tokenizer.json").is_symlink()
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.real.json").read_bytes()


def test_bin_training_entries_are_skipped_with_a_warning(tmp_path, llava_dir, caplog):
    caplog.set_level(logging.WARNING)
    src = tmp_path / "src"
    shutil.copytree(llava_dir, src)
    state = load_state(src)
    (src / "model.safetensors").unlink()
    torch.save({**state, "global_step": 12, "optimizer": {"lr": 0.1}}, src / "pytorch_model.bin")
    keys = open_checkpoint(src).tensor_keys()
    assert set(keys) == set(state)
    assert "skipped 2 entries that are not tensors" in caplog.text


@pytest.mark.slow
def test_two_bakes_are_byte_identical(tmp_path, llava_dir, llava_expertise):
    """Every output file is byte-identical, the expertise file included; the record differs
    only in its time stamp and the stages' measured time and memory."""
    expertise = load_expertise(llava_expertise)
    for name in ("a", "b"):
        bake(
            resolve_source(str(llava_dir)), tmp_path / name, expertise, BakeOptions(progress=False)
        )
    first, second = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    assert "sgm/expertise.sgm" in first
    assert not any(name.endswith("expertise.safetensors") for name in first)
    records = [json.loads((tmp_path / n / "sgm" / "bake.json").read_text()) for n in "ab"]
    for record in records:
        record.pop("created")
        for stage in record.pop("stages").values():  # measured time and memory differ
            assert stage["seconds"] > 0 and stage["host_peak_rss_anon_bytes"] > 0
    assert records[0] == records[1]
    first.pop("sgm/bake.json"), second.pop("sgm/bake.json")
    assert first == second


@pytest.mark.slow
def test_inspect_never_modifies_the_folder(runner, tmp_path, llava_dir, llava_expertise):
    out = tmp_path / "out"
    bake(resolve_source(str(llava_dir)), out, load_expertise(llava_expertise), BakeOptions())
    before = snapshot(tmp_path)
    result = runner.invoke(main, ["-q", "inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert snapshot(tmp_path) == before
    (out / "README.md").write_text("tampered")
    before = snapshot(tmp_path)
    result = runner.invoke(main, ["-q", "inspect", str(out)])
    assert result.exit_code == 4 and snapshot(tmp_path) == before


@pytest.mark.slow
def test_old_expertise_name_is_still_read(runner, tmp_path, llava_dir, llava_expertise):
    from sgm_bake.pipeline.bake import expertise_path

    out = tmp_path / "out"
    bake(resolve_source(str(llava_dir)), out, load_expertise(llava_expertise), BakeOptions())
    (out / "sgm" / "expertise.sgm").rename(out / "sgm" / "expertise.safetensors")
    assert expertise_path(out).name == "expertise.safetensors"
    assert load_expertise(expertise_path(out)).modules


@pytest.mark.slow
def test_top_k_zero_means_no_cap_and_a_no_op_bake_warns(
    tmp_path, llava_dir, llava_expertise, caplog
):
    from sgm_bake.core.expertise import Expertise, ModuleExpertise
    from sgm_bake.core.rules import RuleOptions, factors

    caplog.set_level(logging.WARNING)
    scores = [torch.tensor([0.9, 0.2, 0.7])]
    assert torch.equal(factors(scores, RuleOptions(top_k=0))[0], factors(scores, RuleOptions())[0])
    assert RuleOptions(top_k=0).describe()["top_k"] == ""
    expertise = load_expertise(llava_expertise)
    modules = {
        name: ModuleExpertise(name, entry.side, torch.ones_like(entry.alpha))
        for name, entry in expertise.modules.items()
    }
    options = BakeOptions(progress=False)
    bake(resolve_source(str(llava_dir)), tmp_path / "out", Expertise(modules, {}), options)
    assert "changes no weight" in caplog.text


@pytest.mark.slow
def test_file_size_limit_is_one_line(tmp_path, llava_dir, llava_expertise):
    """A write failing in the OS (here EFBIG under a file-size limit, as ENOSPC would) is one
    line naming the path, and no temporary folder stays."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    out = tmp_path / "out"
    command = [sys.executable, "-m", "sgm_bake", "-q", "bake", str(llava_dir), str(out)]
    command += ["--expertise", str(llava_expertise), "--no-verify"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, preexec_fn=limit, env=env, timeout=120
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "File too large" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []
