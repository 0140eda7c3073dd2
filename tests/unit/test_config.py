import pytest

from rl.config import ConfigError, RunConfig, from_data, load_recipe

RECIPES = sorted(__import__("pathlib").Path(__file__).resolve().parents[2].glob("recipes/*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(recipe):
    assert isinstance(load_recipe(recipe), RunConfig)


def test_defaults_and_overrides():
    cfg = from_data({"name": "x"}, ["trainer.lr=0.5", "rollout.group_size=4", "data.eval.source=gsm8k_test", "ray.address=null"])
    assert cfg.trainer.lr == 0.5 and isinstance(cfg.trainer.lr, float)
    assert cfg.rollout.group_size == 4
    assert cfg.data.eval.source == "gsm8k_test"


@pytest.mark.parametrize(
    "data, overrides, message",
    [
        ({"trainer": {"lrr": 1}}, [], r"trainer.lrr: unknown key. Did you mean 'lr'\?"),
        ({"bogus": 1}, [], r"bogus: unknown key"),
        ({"rollout": {"max_staleness": 1, "sleep_while_training": "on"}}, [], r"rollout.max_staleness: .* cannot sleep"),
        ({"rollout": {"max_staleness": -1}}, [], r"rollout.max_staleness: must be ≥ 0"),
        ({"rollout": {"partial": True}}, [], r"rollout.partial: .* set rollout.max_staleness ≥ 1"),
        ({"rollout": {"max_staleness": 2, "stale_policy": "finish"}}, [], r"rollout.stale_policy: got 'finish'; allowed: one of 'drop', 'resample'"),
        ({"rollout": {"max_staleness": 1}, "algorithm": {"dynamic_sampling": True, "dynamic_sampling_max_rounds": 2}}, [], r"rollout.max_staleness: refill rounds"),
        ({"algorithm": {"dynamic_sampling_max_rounds": 3}}, [], r"algorithm.dynamic_sampling_max_rounds: refill rounds need algorithm.dynamic_sampling=true"),
        ({"algorithm": {"dynamic_sampling": True, "dynamic_sampling_max_rounds": 0}}, [], r"dynamic_sampling_max_rounds: must be ≥ 1"),
        ({"mode": "strict", "model": {"fp8": {"enabled": True}}}, [], r"mode: strict mode does not cover model.fp8"),
        ({}, ["model.fp8.min_weight_elements=-1"], r"model.fp8.min_weight_elements: must be ≥ 0"),
        ({"mode": "strict"}, ["trainer.pack_tokens=512"], r"trainer.pack_tokens: strict mode runs padded micro-batches"),
        ({"rollout": {"group_size": "eight"}}, [], r"rollout.group_size: expected int, got 'eight'"),
        ({"trainer": {"zero_stage": 4}}, [], r"trainer.zero_stage: got 4; allowed: one of 0, 1, 2, 3"),
        ({"algorithm": {"kl_estimator": "k4"}}, [], r"algorithm.kl_estimator: got 'k4'"),
        ({"trainer": {"lr": True}}, [], r"trainer.lr: expected float, got True"),
        ({"rollout": {"group_size": 1}}, [], r"rollout.group_size: GRPO compares"),
        ({}, ["algorithm.correction=tis", "algorithm.old_logprobs=rollout"], r"algorithm.correction: a train/infer correction needs"),
        ({}, ["rollout.prompts_per_step=3", "rollout.group_size=3", "trainer.num_ranks=2"], r"must split evenly"),
        ({}, ["rollout.max_new_tokens=600"], r"rollout.max_new_tokens: must be below rollout.max_model_len"),
        ({"rollout": {"ignore_eos": True}, "algorithm": {"overlong": "filter"}}, [], r"rollout.ignore_eos: .* would drop them all; use algorithm.overlong: keep"),
        ({}, ["schedule.eval_samples=4"], r"schedule.eval_samples: k > 1 samples need"),
        ({"rollout": 3}, [], r"rollout: expected a mapping"),
        ({}, ["trainer"], r"expected key.sub=value"),
        ({}, ["trainer.lr.x=1"], r"trainer.lr: expected float, got \{'x': 1\}"),
        ({"model": {"fp8": True}}, [], r"model.fp8: expected a mapping of FP8Config fields"),
        ({}, ["model.fp8.enable=true"], r"model.fp8.enable: unknown key. Did you mean 'enabled'\?"),
        ({"trainer": {"lr": 1}}, ["trainer.lr.x=1"], r"trainer.lr is not a mapping"),
    ],
)
def test_errors_name_the_key(data, overrides, message):
    with pytest.raises(ConfigError, match=message):
        from_data(data, overrides)


def test_recipe_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_recipe(bad)


def test_fp8_switch_and_its_model_check(tmp_path):
    """``model.fp8`` reaches both engines as the same options, and is refused up front for a
    model that vLLM samples with its own layers (the rollout could not quantize as the trainer)."""
    import json

    from rl.model import check_fp8_model, fp8_options
    from trainer.ring_linear.random_checkpoint import build_random_checkpoint

    cfg = from_data({}, ["model.fp8.enabled=true", "model.fp8.pow2_scale=true"])
    assert fp8_options(cfg) == {"pow2_scale": True, "batch_invariant": False, "min_weight_elements": 0}
    assert fp8_options(from_data({})) is None
    check_fp8_model(cfg, str(build_random_checkpoint(tmp_path / "ring", "tiny")))
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(ConfigError, match=r"model.fp8.enabled: .*\['Qwen2ForCausalLM'\].*set model.fp8.enabled=false"):
        check_fp8_model(cfg, str(dense))
    check_fp8_model(from_data({}), str(dense))  # off: nothing to check


def test_strict_mode_is_refused_for_models_vllm_runs_natively(tmp_path):
    """``mode: strict`` needs Lockstep's layers in both engines: a dense model gets one line
    naming why (its rollout runs vLLM's own kernels)."""
    import json

    from rl.model import check_strict_model
    from trainer.ring_linear.random_checkpoint import build_random_checkpoint

    strict = from_data({"mode": "strict"})
    check_strict_model(strict, str(build_random_checkpoint(tmp_path / "ring", "tiny")))
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(ConfigError, match=r"mode: strict: .*Ring-linear.*\['Qwen2ForCausalLM'\].*vLLM samples "
                                          r"with its own kernels. Use a Ring-linear model or mode: fast"):
        check_strict_model(strict, str(dense))
    check_strict_model(from_data({}), str(dense))  # fast: nothing to check


def test_strict_mode_without_its_c_kernels_says_so_and_the_run_records_it(monkeypatch, capsys):
    """The PyTorch fallback of strict mode's C kernels is visible: one warning line, and the value
    the driver logs as strict/native_kernels every step."""
    from kernels.batch_invariant import cpu
    from rl.model import strict_kernels

    strict = from_data({"mode": "strict"})
    assert strict_kernels(from_data({})) is None
    assert strict_kernels(strict) is cpu.available()
    monkeypatch.setattr(cpu, "available", lambda: False)
    assert strict_kernels(strict) is False
    assert "mode: strict runs its PyTorch formulations" in capsys.readouterr().err
