"""The recipe's policy model: where its weights are, and the FP8 options both engines apply
(refused up front for a model whose rollout could not quantize as the trainer does)."""

from __future__ import annotations

from rl import demo_model
from rl.config import ConfigError, RunConfig


def resolve_model_path(cfg: RunConfig) -> str:
    if cfg.model.path.startswith("demo:"):
        try:
            return str(demo_model.resolve(cfg.model.path, cfg.model.cache_dir))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return cfg.model.path


def fp8_options(cfg: RunConfig) -> dict[str, bool] | None:
    """The recipe's ``model.fp8`` as both engines take it (``kernels.fp8.swap_linears_to_fp8``'s
    keyword options, which the rollout engine's model also reads from its config), or None
    when off."""
    fp8 = cfg.model.fp8
    return {"pow2_scale": fp8.pow2_scale, "batch_invariant": cfg.mode == "strict"} if fp8.enabled else None


def check_fp8_model(cfg: RunConfig, model_path: str) -> None:
    """``model.fp8`` needs the rollout engine to run Lockstep's layers, which quantize as the
    trainer does: the Ring-linear plugin. Models vLLM runs natively use vLLM's own layers (and
    its own FP8 recipes), so their rollout would silently differ from an FP8 trainer."""
    if not cfg.model.fp8.enabled:
        return
    from transformers import AutoConfig

    from models.ring_linear import ARCHITECTURE  # registers the Ring-linear config type

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.fp8.enabled: cannot read the config of {model_path} to check its "
                          f"architecture ({e})") from None
    architectures = config.architectures
    if architectures != [ARCHITECTURE]:
        raise ConfigError(
            f"model.fp8.enabled: FP8 runs where both engines run Lockstep's kernels, i.e. the Ring-linear "
            f"model ({ARCHITECTURE}); {model_path} is {architectures}, which vLLM samples with its own "
            f"layers, so rollout and trainer would quantize differently. Use a Ring-linear model or set "
            f"model.fp8.enabled=false")
