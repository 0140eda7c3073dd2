import json

import pytest

from rl import synthetic
from rl.config import ConfigError, DatasetConfig
from rl.data import DataOrder, load_examples, reference_answer


def test_synthetic_train_and_test_disjoint():
    train = synthetic.load_split("train", 500, seed=3)
    test = synthetic.load_split("test", 200, seed=3)
    assert not {p.question for p in train} & {p.question for p in test}
    assert all(p.solution.endswith(f"The answer is {p.answer}.") for p in train)
    assert synthetic.load_split("test", 5, seed=3) == test[:5]  # deterministic


def test_gsm8k_answer_format():
    assert reference_answer("so 3+4=7\n#### 1,234", "gsm8k", "x") == "1234"
    with pytest.raises(ConfigError, match="no final '#### N' line"):
        reference_answer("no marker", "gsm8k", "data.train row 0")


def test_jsonl_missing_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"problem": "1+1", "answer": "2"}) + "\n")
    with pytest.raises(ConfigError, match=r"row 0 of .* has no field 'question' \(fields: problem, answer\)"):
        load_examples(DatasetConfig(source=str(path)))
    ex = load_examples(DatasetConfig(source=str(path), prompt_key="problem"))
    assert ex[0].prompt == "1+1" and ex[0].answer == "2"


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_examples(DatasetConfig(source=str(tmp_path / "nope.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": 1}\n{oops\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2 is not valid JSON"):
        load_examples(DatasetConfig(source=str(bad)))


def test_data_order_resumable():
    order = DataOrder(10, seed=1, shuffle=True)
    full = order.indices(0, 25)
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
    assert DataOrder(10, seed=1, shuffle=True).indices(7, 18) == full[7:25]


def test_a_mix_keeps_each_datasets_fields_and_template(tmp_path):
    from rl.config import from_data
    from rl.data import PromptRenderer, as_list, dataset_name, load_examples

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"q": "one", "ans": "1"}\n{"q": "two", "ans": "2"}\n')
    b.write_text('{"problem": "three", "answer": "#### 3"}\n')
    cfg = from_data({"name": "mix", "data": {
        "train": [{"source": str(a), "prompt_key": "q", "answer_key": "ans", "template": "A: {prompt}"},
                  {"source": str(b), "prompt_key": "problem", "answer_format": "gsm8k", "template": "B: {prompt}", "name": "bee"}],
        "eval": {"source": str(b), "prompt_key": "problem", "answer_format": "gsm8k"}}})
    examples = load_examples(cfg.data.train)
    assert [(e.prompt, e.answer, e.dataset) for e in examples] == [("one", "1", 0), ("two", "2", 0), ("three", "3", 1)]
    renderer = PromptRenderer(_Tok(), cfg.data.train)
    assert [renderer.text(e) for e in examples] == ["A: one", "A: two", "B: three"]
    assert [dataset_name(c) for c in as_list(cfg.data.train)] == ["a", "bee"]
    assert len(as_list(cfg.data.eval)) == 1 and as_list(None) == []


def test_mix_errors_name_the_entry():
    from rl.config import from_data

    with pytest.raises(ConfigError, match=r"data.train\[1\].prompt_kye: unknown key.*prompt_key"):
        from_data({"name": "x", "data": {"train": [{"source": "a.jsonl"}, {"source": "b.jsonl", "prompt_kye": "q"}]}})
    with pytest.raises(ConfigError, match=r"data.train\[0\]: .*does not exist"):
        from rl.data import load_examples

        load_examples(from_data({"name": "x", "data": {"train": [{"source": "/nope/a.jsonl"}]}}).data.train)


class _Tok:
    chat_template = None


# Bad data files: one ConfigError line naming the file (and line) and the fix, never a traceback.


def test_a_row_that_is_not_a_record_names_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "1+1", "answer": "2"}\n\n42\n')
    with pytest.raises(ConfigError) as e:
        load_examples(DatasetConfig(source=str(path)))
    assert str(e.value) == (f"data.train: row 1 of {str(path)!r} (line 3) is a JSON number (42), not a record; "
                            "each row must be an object with the fields 'question' and 'answer'")
    listed = tmp_path / "d.json"
    listed.write_text('[{"question": "1+1", "answer": "2"}, ["1+1", "2"]]')
    with pytest.raises(ConfigError, match=r"row 1 of .*d.json' is a JSON list \(\[\"1\+1\", \"2\"\]\), not a record"):
        load_examples(DatasetConfig(source=str(listed)))


def test_invalid_utf8_names_line_and_byte(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"question": "1+1", "answer": "2"}\n{"question": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(ConfigError) as e:
        load_examples(DatasetConfig(source=str(path)))
    assert str(e.value) == f"data.train: {path}:2 is not valid UTF-8 (byte 0xe9 at column 18); save the file as UTF-8"
    listed = tmp_path / "d.json"
    listed.write_bytes(b'[\n{"question": "\xff", "answer": "2"}]')
    with pytest.raises(ConfigError, match=r"d.json:2 is not valid UTF-8 \(byte 0xff at column 15\)"):
        load_examples(DatasetConfig(source=str(listed)))
    bom = tmp_path / "bom.jsonl"  # a byte-order mark is fine
    bom.write_bytes(b'\xef\xbb\xbf{"question": "1+1", "answer": "2"}\n')
    assert load_examples(DatasetConfig(source=str(bom)))[0].answer == "2"


def test_malformed_json_file_names_line_and_column(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"question": "1+1", "answer": "2"},\n  {"question": "2+2" "answer": "4"}\n]\n')
    with pytest.raises(ConfigError) as e:
        load_examples(DatasetConfig(source=str(path)), "data.eval")
    assert str(e.value) == (f"data.eval: {path}:3 is not valid JSON (Expecting ',' delimiter at column 22); a .json "
                            "data file holds one JSON list of records (or use .jsonl, one record per line)")
    path.write_text('{"question": "1+1"}')
    with pytest.raises(ConfigError, match="must hold a JSON list of records, not a JSON object"):
        load_examples(DatasetConfig(source=str(path)))


def test_unreadable_parquet_and_directory(tmp_path):
    bad = tmp_path / "d.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ConfigError, match=r"d.parquet is not a readable Parquet file"):
        load_examples(DatasetConfig(source=str(bad)))
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"cannot read .*dir.jsonl \(Is a directory\)"):
        load_examples(DatasetConfig(source=str(folder)))
