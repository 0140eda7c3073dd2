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
