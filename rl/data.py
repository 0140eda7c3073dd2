"""Datasets and prompts: rows from files, hub names, ../shared/data or the synthetic task,
rendered into prompt token ids, and the seeded, resumable order in which a run visits them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from rl import synthetic
from rl.config import ConfigError, DatasetConfig


@dataclass(frozen=True)
class Example:
    prompt: str  # the problem text, before the template
    answer: str  # the reference final answer, for the verifier
    solution: str | None = None  # a worked solution, for the SFT warm start
    dataset: int = 0  # which dataset of a mix it came from (its template renders it)


def as_list(cfg: DatasetConfig | list[DatasetConfig] | None) -> list[DatasetConfig]:
    """A dataset entry of the recipe (one, a list, or none) as a list."""
    return [] if cfg is None else list(cfg) if isinstance(cfg, list) else [cfg]


def dataset_name(cfg: DatasetConfig) -> str:
    """The dataset's label in metrics: its `name`, else its source without folder and suffix."""
    if cfg.name:
        return cfg.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.source.removeprefix("synthetic:")).stem) or "data"


def shared_data_dir() -> Path | None:
    """The folder of the bundled data sets: $LOCKSTEP_DATA_DIR, else ../shared/data next to the
    project (as laid out in development and CI)."""
    env = os.environ.get("LOCKSTEP_DATA_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    candidates += [here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), None)


GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


def reference_answer(raw: object, answer_format: str, where: str) -> str:
    text = str(raw).strip()
    if answer_format == "gsm8k":
        match = GSM8K_ANSWER.search(text)
        if not match:
            raise ConfigError(f"{where}: answer has no final '#### N' line (answer_format=gsm8k); got {text[-80:]!r}")
        return match.group(1).replace(",", "").strip()
    return text


JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
              type(None): "null"}


def _decode(raw: bytes, path: Path, where: str, lineno: int | None = None) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); anything else is one line naming the
    file, the line and the byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = lineno if lineno is not None else raw[: e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"{where}: {path}:{line} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column}); "
                          "save the file as UTF-8") from None


def _read_jsonl(path: Path, where: str) -> tuple[list, list[int]]:
    rows, lines = [], []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, path, where, lineno)
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{where}: {path}:{lineno} is not valid JSON ({e.msg} at column {e.colno}); "
                                      "a .jsonl file holds one JSON object per line") from None
                lines.append(lineno)
    return rows, lines


def _read_json(path: Path, where: str) -> list:
    text = _decode(path.read_bytes(), path, where)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: {path}:{e.lineno} is not valid JSON ({e.msg} at column {e.colno}); a .json "
                          "data file holds one JSON list of records (or use .jsonl, one record per line)") from None
    if not isinstance(data, list):
        raise ConfigError(f"{where}: {path} must hold a JSON list of records, not a JSON {JSON_TYPES.get(type(data), type(data).__name__)}")
    return data


def _read_rows(cfg: DatasetConfig, where: str) -> tuple[list, list[int] | None]:
    """The dataset's rows as read (not yet checked to be records), and for a .jsonl file each
    row's line number (None otherwise). A file that cannot be read or parsed is a ConfigError
    naming the file (and the line)."""
    source = cfg.source
    path = Path(source).expanduser()
    if not path.exists() and not source.startswith(("/", ".")) and (shared := shared_data_dir()):
        bundled = shared / (source if source.endswith(".jsonl") else f"{source}.jsonl")
        if bundled.exists():
            path = bundled
    if path.exists():
        try:
            if path.suffix == ".jsonl":
                return _read_jsonl(path, where)
            if path.suffix == ".json":
                return _read_json(path, where), None
            if path.suffix == ".parquet":
                import pyarrow
                import pyarrow.parquet as pq

                try:
                    return pq.read_table(path).to_pylist(), None
                except pyarrow.ArrowException as e:
                    raise ConfigError(f"{where}: {path} is not a readable Parquet file ({e})") from None
        except (IsADirectoryError, PermissionError) as e:
            raise ConfigError(f"{where}: cannot read {path} ({e.strerror})") from None
        raise ConfigError(f"{where}: {path}: unsupported file type (use .jsonl, .json or .parquet)")
    if source.startswith(("/", ".", "~")) or source.endswith((".jsonl", ".json", ".parquet")):
        raise ConfigError(f"{where}: data file {source!r} does not exist (check the path, or set LOCKSTEP_DATA_DIR for bundled sets)")
    try:  # a dataset name on the hub (or in the local datasets cache)
        import datasets

        return list(datasets.load_dataset(source, split=cfg.split)), None
    except Exception as e:  # noqa: BLE001 - any loader failure is the user's missing dataset
        raise ConfigError(f"{where}: could not load dataset {source!r} split {cfg.split!r}: {type(e).__name__}: {e}") from None


def load_examples(cfg: DatasetConfig | list[DatasetConfig], where: str = "data.train") -> list[Example]:
    """Rows of a dataset (or of each dataset of a mix, in order) as Examples; missing fields
    raise ConfigError naming the field."""
    if isinstance(cfg, list):
        if not cfg:
            raise ConfigError(f"{where}: an empty list of datasets")
        return [dataclasses.replace(e, dataset=i) for i, c in enumerate(cfg)
                for e in load_examples(c, f"{where}[{i}]")]
    if cfg.source.startswith("synthetic:"):
        task = cfg.source.removeprefix("synthetic:")
        try:
            problems = synthetic.load_split(cfg.split, cfg.limit or cfg.num_examples, cfg.seed, task)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        return [Example(p.question, p.answer, p.solution) for p in problems]
    rows, lines = _read_rows(cfg, where)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    if not rows:
        raise ConfigError(f"{where}: dataset {cfg.source!r} is empty")
    out = []
    for i, row in enumerate(rows):
        at = f"row {i} of {cfg.source!r}" + (f" (line {lines[i]})" if lines else "")
        if not isinstance(row, dict):
            kind = JSON_TYPES.get(type(row), type(row).__name__)
            raise ConfigError(f"{where}: {at} is a JSON {kind} ({_short(row)}), not a record; each row must be an "
                              f"object with the fields {cfg.prompt_key!r} and {cfg.answer_key!r}")
        for key in (cfg.prompt_key, cfg.answer_key):
            if key not in row:
                raise ConfigError(
                    f"{where}: {at} has no field {key!r} (fields: {', '.join(map(str, row))}); "
                    f"set {where}.prompt_key / {where}.answer_key to the dataset's field names"
                )
        solution = row.get(cfg.solution_key)
        out.append(Example(str(row[cfg.prompt_key]), reference_answer(row[cfg.answer_key], cfg.answer_format, f"{where} {at}"), None if solution is None else str(solution)))
    return out


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."

MATH_TEMPLATE = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}."

# Named data sets for `lockstep eval --data NAME` and recipes: the bundled files' fields.
PRESETS = {
    "arithmetic": DatasetConfig(source="synthetic:arithmetic", split="test", template="Q: {prompt}\nA:", num_examples=1000),
    "gsm8k": DatasetConfig(source="gsm8k_test", prompt_key="question", answer_key="answer", answer_format="gsm8k", template=MATH_TEMPLATE),
    "gsm8k_train": DatasetConfig(source="gsm8k_train", prompt_key="question", answer_key="answer", answer_format="gsm8k", template=MATH_TEMPLATE),
    "math500": DatasetConfig(source="math500_test", prompt_key="problem", answer_key="answer", template=MATH_TEMPLATE),
    "aime24": DatasetConfig(source="aime24", prompt_key="problem", answer_key="answer", template=MATH_TEMPLATE),
    "amc23": DatasetConfig(source="amc23", prompt_key="problem", answer_key="answer", template=MATH_TEMPLATE),
}


class PromptRenderer:
    """Template → (chat template if the tokenizer has one and the recipe wants it) → token ids."""

    def __init__(self, tokenizer, cfg: DatasetConfig | list[DatasetConfig]):
        self.tokenizer, self.cfgs = tokenizer, as_list(cfg)
        for c in self.cfgs:
            if "{prompt}" not in c.template:
                raise ConfigError(f"data template {c.template!r} of {c.source!r} must contain '{{prompt}}'")
        has_chat = getattr(tokenizer, "chat_template", None) is not None
        self.chat = [c.use_chat_template and has_chat for c in self.cfgs]

    def text(self, example: Example) -> str:
        body = self.cfgs[example.dataset].template.replace("{prompt}", example.prompt)
        if self.chat[example.dataset]:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True)
        return body

    def ids(self, example: Example) -> list[int]:
        return self.tokenizer(self.text(example), add_special_tokens=not self.chat[example.dataset])["input_ids"]


class DataOrder:
    """Seeded epoch-wise permutation: the prompts of step s are a pure function of (seed, s), so
    a resumed run visits exactly the prompts it would have visited."""

    def __init__(self, size: int, seed: int, shuffle: bool):
        self.size, self.seed, self.shuffle = size, seed, shuffle

    def indices(self, start: int, count: int) -> list[int]:
        out = []
        for cursor in range(start, start + count):
            epoch, offset = divmod(cursor, self.size)
            out.append(self._permutation(epoch)[offset])
        return out

    @functools.lru_cache(maxsize=4)
    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order
