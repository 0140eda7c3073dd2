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
