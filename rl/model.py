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


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def weight_bytes(model_path: str, dtype: str) -> int:
    """The model's weights in `dtype`, from its safetensors headers (no tensor is read)."""
    import json
    import struct
    from pathlib import Path

    elements = 0
    for shard in Path(model_path).glob("*.safetensors"):
        with open(shard, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, entry in header.items():
            if name != "__metadata__":
                n = 1
                for d in entry["shape"]:
                    n *= d
                elements += n
    return elements * DTYPE_BYTES[dtype]


def check_engine_memory(cfg: RunConfig, model_bytes: int, gpu_bytes: int) -> None:
    """The rollout engine gets `rollout.gpu_memory_utilization` of its GPU for weights, activations
    and KV cache; refuse up front a share its weights alone would fill (vLLM would fail minutes
    later inside the engine's actor, with a traceback about cache blocks)."""
    share = cfg.rollout.gpu_memory_utilization
    budget = share * gpu_bytes
    if model_bytes > 0.9 * budget:
        need = min(1.0, model_bytes / 0.9 / gpu_bytes + 0.05)
        raise ConfigError(
            f"rollout.gpu_memory_utilization={share} gives the engine {budget / 2**30:.1f} GiB of the "
            f"{gpu_bytes / 2**30:.1f} GiB GPU, but the model's weights alone take {model_bytes / 2**30:.1f} GiB in "
            f"{cfg.model.dtype}: raise rollout.gpu_memory_utilization (to ~{need:.2f}) or use a larger GPU")
