"""`model.path` is checked before any actor starts: one ConfigError line naming model.path and
the fix for a missing directory, a directory without config.json or weights, and a hub id the
hub cannot serve."""

import json

import pytest

from rl.config import ConfigError, from_data
from rl.model import load_tokenizer, resolve_model_path


def resolve(path: str) -> str:
    return resolve_model_path(from_data({"model": {"path": path}}))


def model_dir(tmp_path, *files: str):
    d = tmp_path / "model"
    d.mkdir()
    for name in files:
        (d / name).write_text(json.dumps({"model_type": "qwen2"}) if name.endswith(".json") else "x")
    return d


def test_a_missing_directory_is_no_such_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as e:
        resolve(str(missing))
    assert str(e.value) == (f"model.path: no such directory {str(missing)!r}; give a model directory (config.json "
                            "and weights), a hub id 'org/name', or demo:<name>")
    for path in ("./models/x", "~/no/such/model", "my_model", "a/b/c"):
        with pytest.raises(ConfigError, match="model.path: no such directory"):
            resolve(path)


def test_a_directory_without_config_or_weights(tmp_path):
    d = model_dir(tmp_path, "model.safetensors")
    with pytest.raises(ConfigError) as e:
        resolve(str(d))
    assert str(e.value) == (f"model.path: {d} has no config.json; point model.path at a Hugging Face model directory "
                            "(what save_pretrained writes: config.json, weights, tokenizer)")
    (d / "model.safetensors").unlink()
    (d / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as e:
        resolve(str(d))
    assert str(e.value) == (f"model.path: {d} has config.json but no weights (no *.safetensors or "
                            "pytorch_model*.bin); copy the weights into it or point model.path at the directory "
                            "that holds them")
    (d / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON"):
        resolve(str(d))


def test_missing_shards_and_a_file(tmp_path):
    d = model_dir(tmp_path, "config.json", "model-00001-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ConfigError, match=r"lacks 1 of the 2 weight shards model.safetensors.index.json names "
                                          r"\(first: model-00002-of-00002.safetensors\)"):
        resolve(str(d))
    (d / "model-00002-of-00002.safetensors").write_text("x")
    assert resolve(str(d)) == str(d)
    with pytest.raises(ConfigError, match="is a file; point it at the model's directory"):
        resolve(str(d / "config.json"))


def test_a_hub_id_the_hub_cannot_serve(monkeypatch):
    """These machines cannot reach the hub: hf_hub_download raises LocalEntryNotFoundError after
    its retries (~20 s); the same error, at once."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def unreachable(repo_id, filename, **_):
        calls.append((repo_id, filename))
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(ConfigError) as e:
        resolve("Qwen/Qwen2.5-0.5B")
    assert calls == [("Qwen/Qwen2.5-0.5B", "config.json")]
    assert str(e.value) == (
        "model.path: 'Qwen/Qwen2.5-0.5B' is not a local directory, and the Hugging Face hub cannot be reached to "
        "fetch it (nor is it in the local hub cache); download it where the hub is reachable "
        "(`hf download Qwen/Qwen2.5-0.5B --local-dir DIR`) and set model.path=DIR")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **_: "/cache/config.json")
    assert resolve("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"  # reachable: the hub path, unchanged


def test_a_hub_that_does_not_answer_in_time(monkeypatch):
    """A slow resolver can keep hf_hub_download's retries going for minutes: a deadline."""
    import threading

    import huggingface_hub

    from rl.model import check_hub_model

    release = threading.Event()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **_: release.wait(10))
    try:
        with pytest.raises(ConfigError, match=r"'org/name' is not a local directory, and the Hugging Face hub did "
                                              r"not answer within 0 s"):
            check_hub_model("org/name", deadline_s=0.2)
    finally:
        release.set()


def test_a_directory_without_a_tokenizer(tmp_path):
    d = model_dir(tmp_path, "config.json", "model.safetensors")
    with pytest.raises(ConfigError, match=rf"model.path: cannot load a tokenizer from {d} .*add the tokenizer files"):
        load_tokenizer(str(d), trust_remote_code=False)
