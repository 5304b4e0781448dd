"""Site datasets: bounded loading, clear errors naming file and line, safe names, stable split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.training.datasets import (
    DatasetError,
    DatasetLimits,
    Example,
    Message,
    dataset_dir,
    load_dataset,
    split_examples,
)


def _write(root: Path, name: str, files: dict[str, list[object] | str]) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    for file_name, lines in files.items():
        text = lines if isinstance(lines, str) else "".join(json.dumps(x) + "\n" for x in lines)
        (directory / file_name).write_text(text, encoding="utf-8")
    return directory


CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
}


def test_loads_text_and_chat_examples_in_file_then_line_order(tmp_path: Path) -> None:
    _write(tmp_path, "site", {"b.jsonl": [{"text": "three"}], "a.jsonl": [{"text": "one"}, CHAT]})
    (tmp_path / "site" / "notes.txt").write_text("ignored")
    examples = load_dataset(tmp_path, "site")
    assert examples[0] == Example(text="one")
    assert examples[1].messages == (
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello."),
    )
    assert examples[2] == Example(text="three")


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    _write(tmp_path, "site", {"a.jsonl": '{"text": "x"}\n\n   \n{"text": "y"}'})
    assert [e.text for e in load_dataset(tmp_path, "site")] == ["x", "y"]


def test_chat_examples_render_through_the_template() -> None:
    calls: list[object] = []

    def template(turns: object, tokenize: bool) -> str:
        calls.append((turns, tokenize))
        return "<rendered>"

    example = Example(messages=(Message("user", "Hi"),))
    assert example.render(template) == "<rendered>"
    assert calls == [([{"role": "user", "content": "Hi"}], False)]
    assert Example(text="plain").render(template) == "plain"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        ".",
        "../etc",
        "a/b",
        "/etc",
        "/",
        "a\\b",
        "bad\x00name",
        ".hidden",
        "tab\tname",
    ],
)
def test_hostile_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match=r"not a single plain path component|non-empty"):
        dataset_dir(tmp_path, name)
    with pytest.raises(DatasetError):
        load_dataset(tmp_path, name)


def test_a_symlinked_escape_is_still_just_a_name(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    assert dataset_dir(root, "site-1.v2") == root / "site-1.v2"
    _write(tmp_path, "outside", {"a.jsonl": [{"text": "secret"}]})
    assert outside.is_dir()
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(root, "outside")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset 'absent' not found"):
        load_dataset(tmp_path, "absent")


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is not a directory"):
        load_dataset(tmp_path, "file")


def test_no_jsonl_files(tmp_path: Path) -> None:
    _write(tmp_path, "site", {"data.json": [{"text": "x"}]})
    with pytest.raises(DatasetError, match=r"no \.jsonl files"):
        load_dataset(tmp_path, "site")


def test_no_examples(tmp_path: Path) -> None:
    _write(tmp_path, "site", {"a.jsonl": "\n\n", "b.jsonl": ""})
    with pytest.raises(DatasetError, match="has no examples"):
        load_dataset(tmp_path, "site")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "site", {"a.jsonl": [{"text": "x"}]})

    def denied(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # root reads a chmod 0 file, so fake the denial
    with pytest.raises(DatasetError, match=r"cannot read .*a\.jsonl: Permission denied"):
        load_dataset(tmp_path, "site")


def test_a_jsonl_directory_is_not_a_file(tmp_path: Path) -> None:
    directory = _write(tmp_path, "site", {"a.jsonl": [{"text": "x"}]})
    (directory / "b.jsonl").mkdir()
    with pytest.raises(DatasetError, match=r"b\.jsonl is not a regular file"):
        load_dataset(tmp_path, "site")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "x"', "malformed JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"text": 3}', '"text" must be a non-empty string'),
        ('{"text": ""}', '"text" must be a non-empty string'),
        ('{"prompt": "x"}', "expected exactly one field"),
        ('{"text": "x", "messages": []}', "expected exactly one field"),
        ('{"messages": []}', '"messages" must be a non-empty list'),
        ('{"messages": "hi"}', '"messages" must be a non-empty list'),
        ('{"messages": [{"role": "user"}]}', r"messages\[0\] must be an object"),
        ('{"messages": ["hi"]}', r"messages\[0\] must be an object"),
        ('{"messages": [{"role": "tool", "content": "x"}]}', "role must be one of"),
        ('{"messages": [{"role": "user", "content": 1}]}', "content must be a string"),
        (b'{"text": "\xff"}', "not UTF-8"),
        ("[" * 100_000, "nested too deeply|malformed JSON"),
    ],
)
def test_malformed_lines_name_file_and_line(
    tmp_path: Path, line: str | bytes, message: str
) -> None:
    directory = _write(tmp_path, "site", {"a.jsonl": [{"text": "fine"}]})
    raw = line if isinstance(line, bytes) else line.encode()
    (directory / "b.jsonl").write_bytes(b'{"text": "ok"}\n' + raw + b"\n")
    with pytest.raises(DatasetError, match=rf"b\.jsonl line 2: .*(?:{message})"):
        load_dataset(tmp_path, "site", DatasetLimits(max_line_bytes=1_000_000))


def test_oversized_file_line_and_example_count(tmp_path: Path) -> None:
    _write(tmp_path, "site", {"a.jsonl": [{"text": "x" * 50}] * 3})
    with pytest.raises(DatasetError, match=r"a\.jsonl is \d+ bytes, over the 100 limit"):
        load_dataset(tmp_path, "site", DatasetLimits(max_file_bytes=100))
    with pytest.raises(DatasetError, match=r"a\.jsonl line 1 is 62 bytes, over the 20 limit"):
        load_dataset(tmp_path, "site", DatasetLimits(max_line_bytes=20))
    with pytest.raises(DatasetError, match=r"a\.jsonl line 3: over the 2 example limit"):
        load_dataset(tmp_path, "site", DatasetLimits(max_examples=2))


def _texts(count: int) -> list[Example]:
    return [Example(text=f"example number {i}") for i in range(count)]


def test_split_is_disjoint_complete_and_about_one_fifth() -> None:
    examples = _texts(50)
    split = split_examples(examples)
    assert len(split.heldout) == 10
    assert len(split.train) == 40
    assert not set(split.train) & set(split.heldout)
    assert set(split.train) | set(split.heldout) == set(examples)
    assert list(split.train) == [e for e in examples if e in split.train]


def test_split_does_not_depend_on_order() -> None:
    examples = _texts(30)
    first = split_examples(examples)
    shuffled = split_examples(list(reversed(examples[10:])) + examples[:10])
    assert set(first.heldout) == set(shuffled.heldout)
    assert set(first.train) == set(shuffled.train)
    # adding examples only moves the new ones or the cut, never reshuffles: same hash order
    assert split_examples(examples, 0.5).heldout[:3] == first.heldout[:3]


def test_small_datasets_hold_out_at_least_one() -> None:
    assert split_examples(_texts(1)) == split_examples(_texts(1), 0.0)
    assert len(split_examples(_texts(1)).heldout) == 0
    for count in (2, 3, 4):
        split = split_examples(_texts(count))
        assert len(split.heldout) == 1
        assert len(split.train) == count - 1
    assert len(split_examples(_texts(5), 0.0).heldout) == 1


def test_copies_stay_on_one_side_unless_a_side_would_be_empty() -> None:
    examples = [Example(text="dup")] * 3 + _texts(7)
    split = split_examples(examples)
    assert (Example(text="dup") in split.train) != (Example(text="dup") in split.heldout)
    same = split_examples([Example(text="same")] * 4)
    assert (len(same.train), len(same.heldout)) == (3, 1)


def test_bad_fraction_is_refused() -> None:
    with pytest.raises(DatasetError, match="held-out fraction"):
        split_examples(_texts(3), 1.0)
