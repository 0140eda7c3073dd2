"""A Ring-linear checkpoint directory loads in plain transformers (trust_remote_code=True) in a
process that cannot import Lockstep, and gives Lockstep's logits bitwise (CPU, fp32 and bf16
weights) and its greedy generation bitwise (trainer/ring_linear/remote_code.py).  No Ray: one
subprocess importing torch and transformers (~10-25 s on the 2-core machine)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import trainer.ring_linear  # noqa: F401  (registers the model type with transformers)
from trainer.ring_linear.modeling import BailingMoeLinearV2ForCausalLM
from trainer.ring_linear.random_checkpoint import build_random_checkpoint
from trainer.ring_linear.remote_code import AUTO_MAP, CONFIG_FILE, MODELING_FILE, TRAINING_ONLY_IMPORTS

pytestmark = pytest.mark.integration

# Runs in the clean process: no site processing (the venv's editable install of Lockstep is a
# .pth file), site-packages on the path, cwd outside the repository.
CLEAN_SCRIPT = """
import importlib, json, sys
for name in ("rl", "trainer", "models", "rollout"):
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    raise SystemExit(f"{name} is importable: this process is not clean")
import torch
from transformers import AutoModelForCausalLM
ckpt, out = sys.argv[1], sys.argv[2]
ids = torch.load(out + "/ids.pt")
result = {}
for dtype in (torch.float32, torch.bfloat16):
    model = AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True, dtype=dtype).eval()
    with torch.no_grad():
        result[str(dtype)] = model(ids).logits
gen = model.generate(ids[:1, :9], max_new_tokens=6, do_sample=False, output_scores=True,
                     return_dict_in_generate=True)
result["generated"], result["scores"] = gen.sequences, torch.stack(gen.scores)
model.save_pretrained(out + "/resaved")  # through the exported code's expert-stacking conversion
project = sorted(m for m in sys.modules if m.split(".")[0] in ("rl", "trainer", "models", "kernels", "rollout"))
result["project_modules"] = project
result["model_module"] = type(model).__module__
torch.save(result, out + "/exported.pt")
"""


def _lockstep_outputs(ckpt, ids):
    result = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = BailingMoeLinearV2ForCausalLM.from_pretrained(str(ckpt), dtype=dtype).eval()
        with torch.no_grad():
            result[str(dtype)] = model(ids).logits
    gen = model.generate(ids[:1, :9], max_new_tokens=6, do_sample=False, output_scores=True,
                         return_dict_in_generate=True)
    result["generated"], result["scores"] = gen.sequences, torch.stack(gen.scores)
    return result


def test_checkpoint_loads_in_plain_transformers_with_lockstep_logits(tmp_path):
    ckpt = build_random_checkpoint(tmp_path / "ckpt", "tiny", seed=7)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    # imports: standard library, torch, transformers, siblings, and the training-only lazy imports
    # (inside a try, which transformers' import check skips; the clean run below never takes them)
    for file in (CONFIG_FILE, MODELING_FILE):
        tree = ast.parse((ckpt / f"{file}.py").read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        tops = {name.split(".")[0] for name in modules - TRAINING_ONLY_IMPORTS}
        assert tops - sys.stdlib_module_names <= {"torch", "transformers", "safetensors", "deepspeed"}, (file, tops)

    ids = torch.randint(1, config["vocab_size"], (2, 70), generator=torch.Generator().manual_seed(1))
    torch.save(ids, tmp_path / "ids.pt")
    clean = tmp_path / "clean"
    clean.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=sysconfig.get_paths()["purelib"], HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(CLEAN_SCRIPT), str(ckpt), str(tmp_path)],
                         cwd=clean, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    exported = torch.load(tmp_path / "exported.pt")
    assert exported["project_modules"] == []
    assert exported["model_module"].startswith("transformers_modules.")

    # saved again by plain transformers: the published per-expert names, the same (bf16) weights
    original = {k: v for f in ckpt.glob("*.safetensors") for k, v in load_file(f).items()}
    resaved = {k: v for f in (tmp_path / "resaved").glob("*.safetensors") for k, v in load_file(f).items()}
    assert set(resaved) == set(original) and "model.layers.1.mlp.experts.7.up_proj.weight" in resaved
    assert all(resaved[k].equal(original[k].to(resaved[k].dtype)) for k in original)

    expected = _lockstep_outputs(ckpt, ids)
    for key in (str(torch.float32), str(torch.bfloat16), "generated", "scores"):
        assert exported[key].dtype == expected[key].dtype, key
        assert torch.equal(exported[key], expected[key]), (
            key, (exported[key].double() - expected[key].double()).abs().max().item())
