"""The recipe's policy model: where its weights are, and the FP8 options both engines apply
(refused up front for a model whose rollout could not quantize as the trainer does)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from rl import demo_model
from rl.config import ConfigError, RunConfig

# A hub repo id: `org/name` (letters, digits, `-`, `_`, `.`), as huggingface_hub accepts it.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def resolve_model_path(cfg: RunConfig) -> str:
    """`model.path` as the engines load it: a checked local directory, a hub id (its config
    fetched once, so an unreachable hub fails here), or the built `demo:` model. Anything else is
    a ConfigError naming model.path, raised before any actor starts (the engines would fail
    30+ s later inside their actors, or read a missing directory as a malformed hub id)."""
    path = cfg.model.path
    if path.startswith("demo:"):
        try:
            return str(Path(demo_model.resolve(path, cfg.model.cache_dir)).absolute())  # as actors elsewhere see it
        except ValueError as e:
            raise ConfigError(str(e)) from None
    local = Path(path).expanduser()
    if local.exists():
        check_model_dir(local)
        return str(local.absolute())  # resolved on the driver: an actor's cwd may be elsewhere
    if HUB_ID.fullmatch(path) and ".." not in path and "--" not in path:
        check_hub_model(path)
        return path
    raise ConfigError(f"model.path: no such directory {path!r}; give a model directory (config.json and "
                      "weights), a hub id 'org/name', or demo:<name>")


def check_model_dir(path: Path) -> None:
    """A Hugging Face model directory: a readable config.json and weights (every shard its
    index names)."""
    if not path.is_dir():
        raise ConfigError(f"model.path: {path} is a file; point it at the model's directory (config.json and weights)")
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"model.path: {path} has no config.json; point model.path at a Hugging Face model "
                          "directory (what save_pretrained writes: config.json, weights, tokenizer)")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"model.path: {config} is not valid JSON ({e}); restore the model's config.json") from None
    for index in WEIGHT_INDEXES:
        if (path / index).is_file():
            try:
                shards = set(json.loads((path / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
                raise ConfigError(f"model.path: {path / index} is not a valid weight index ({type(e).__name__}: {e}); "
                                  "restore it from the model's source") from None
            missing = sorted(s for s in shards if not (path / s).is_file())
            if missing:
                raise ConfigError(f"model.path: {path} lacks {len(missing)} of the {len(shards)} weight shards {index} "
                                  f"names (first: {missing[0]}); copy the missing shards into it")
            return
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise ConfigError(f"model.path: {path} has config.json but no weights (no *.safetensors or "
                          "pytorch_model*.bin); copy the weights into it or point model.path at the directory that "
                          "holds them")


HUB_DEADLINE_S = 60.0  # the hub's own retries take ~25 s to give up; a slow resolver, minutes


def check_hub_model(repo_id: str, deadline_s: float = HUB_DEADLINE_S) -> None:
    """A hub id that is not a local directory: fetch its config.json (from the local hub cache
    if it is there), so a model the hub does not have, or a hub this machine cannot reach, is
    one line now instead of a failure inside the engines' actors. The engines then load the hub
    id themselves, as before. A fetch that has not ended after `deadline_s` is an unreachable hub
    (it is left to finish in a daemon thread)."""
    import threading

    import huggingface_hub
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    outcome: list[BaseException | None] = []

    def fetch() -> None:
        try:
            huggingface_hub.hf_hub_download(repo_id, "config.json")
            outcome.append(None)
        except Exception as e:  # noqa: BLE001 - sorted below, in the caller's thread
            outcome.append(e)

    worker = threading.Thread(target=fetch, name="lockstep-hub-check", daemon=True)
    worker.start()
    worker.join(deadline_s)
    unreachable = (f"model.path: {repo_id!r} is not a local directory, and the Hugging Face hub cannot be reached "
                   "to fetch it (nor is it in the local hub cache); download it where the hub is reachable "
                   f"(`hf download {repo_id} --local-dir DIR`) and set model.path=DIR")
    if not outcome:
        raise ConfigError(unreachable.replace("cannot be reached", f"did not answer within {deadline_s:.0f} s"))
    error = outcome[0]
    if error is None:
        return
    if isinstance(error, LocalEntryNotFoundError):  # no connection and not cached (before EntryNotFound: a subclass)
        raise ConfigError(unreachable)
    if isinstance(error, GatedRepoError):
        raise ConfigError(f"model.path: {repo_id!r} is gated on the hub; accept its licence on the model's page and "
                          "log in (`hf auth login`), or download it and set model.path to the directory")
    if isinstance(error, RepositoryNotFoundError):
        raise ConfigError(f"model.path: {repo_id!r} is neither a local directory nor a model on the hub (or it is "
                          "private: log in with `hf auth login`); check the path")
    if isinstance(error, EntryNotFoundError):
        raise ConfigError(f"model.path: the hub repo {repo_id!r} has no config.json; it is not a transformers model")
    if isinstance(error, OSError):  # other network failures (HTTP errors, timeouts)
        raise ConfigError(f"model.path: cannot fetch {repo_id!r} from the Hugging Face hub ({type(error).__name__}: "
                          f"{error}); download it and set model.path to the directory")
    raise error


def load_tokenizer(model_path: str, trust_remote_code: bool):
    """The model's tokenizer; a directory without a usable one is a ConfigError naming model.path.
    (Without tokenizer files, transformers 5 builds an empty tokenizer of the config's model type
    that encodes any text to no tokens: refused too.)"""
    from transformers import AutoTokenizer

    fix = "add the tokenizer files (tokenizer.json, tokenizer_config.json) to the model directory"
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(f"model.path: cannot load a tokenizer from {model_path} ({type(e).__name__}: {first}); "
                          f"{fix}") from None
    if not tokenizer("Question: 12 + 7", add_special_tokens=False)["input_ids"]:
        raise ConfigError(f"model.path: cannot load a tokenizer from {model_path} (it has no vocabulary: text "
                          f"encodes to no tokens); {fix}")
    return tokenizer


def fp8_options(cfg: RunConfig) -> dict[str, bool | int] | None:
    """The recipe's ``model.fp8`` as both engines take it (``kernels.fp8.swap_linears_to_fp8``'s
    keyword options, which the rollout engine's model also reads from its config), or None
    when off."""
    fp8 = cfg.model.fp8
    if not fp8.enabled:
        return None
    return {"pow2_scale": fp8.pow2_scale, "batch_invariant": cfg.mode == "strict",
            "min_weight_elements": fp8.min_weight_elements}


def model_architectures(cfg: RunConfig, model_path: str, field: str) -> list[str] | None:
    """The `architectures` of the model's config, for a recipe `field` that needs Lockstep's own
    layers in both engines (an unreadable config is that field's error)."""
    from transformers import AutoConfig

    import models.ring_linear  # noqa: F401  (registers the Ring-linear config type)

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{field}: cannot read the config of {model_path} to check its "
                          f"architecture ({e})") from None
    return config.architectures


def check_fp8_model(cfg: RunConfig, model_path: str) -> None:
    """``model.fp8`` needs the rollout engine to run Lockstep's layers, which quantize as the
    trainer does: the Ring-linear plugin. Models vLLM runs natively use vLLM's own layers (and
    its own FP8 recipes), so their rollout would silently differ from an FP8 trainer."""
    if not cfg.model.fp8.enabled:
        return
    from models.ring_linear import ARCHITECTURE

    architectures = model_architectures(cfg, model_path, "model.fp8.enabled")
    if architectures != [ARCHITECTURE]:
        raise ConfigError(
            f"model.fp8.enabled: FP8 runs where both engines run Lockstep's kernels, i.e. the Ring-linear "
            f"model ({ARCHITECTURE}); {model_path} is {architectures}, which vLLM samples with its own "
            f"layers, so rollout and trainer would quantize differently. Use a Ring-linear model or set "
            f"model.fp8.enabled=false")


def check_strict_model(cfg: RunConfig, model_path: str) -> None:
    """``mode: strict`` needs both engines to run Lockstep's batch-invariant layers: the Ring-linear
    plugin does; a model vLLM runs natively is sampled by vLLM's own kernels, whose reduction
    orders Lockstep does not control."""
    if cfg.mode != "strict":
        return
    from models.ring_linear import ARCHITECTURE

    architectures = model_architectures(cfg, model_path, "mode: strict")
    if architectures != [ARCHITECTURE]:
        raise ConfigError(
            f"mode: strict: bitwise-equal log-probs need Lockstep's batch-invariant layers in both engines, "
            f"i.e. the Ring-linear model ({ARCHITECTURE}); {model_path} is {architectures}, which vLLM "
            f"samples with its own kernels. Use a Ring-linear model or mode: fast")


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def weight_bytes(model_path: str, dtype: str) -> int:
    """The model's weights in `dtype`, from its safetensors headers (no tensor is read)."""
    from rl.checkpoint import safetensors_tensors

    elements = 0
    for shard in Path(model_path).glob("*.safetensors"):
        tensors = safetensors_tensors(shard)
        if tensors is None:
            raise ConfigError(f"model.path: {shard} is a truncated or damaged safetensors file; "
                              "restore the model's weights")
        for entry in tensors.values():
            elements += math.prod(entry["shape"])
    return elements * DTYPE_BYTES[dtype]


def strict_kernels(cfg: RunConfig) -> bool | None:
    """Strict mode on CPU: whether its C kernels build here (True), or both engines fall back to
    the PyTorch formulations (False: slower, equally batch-invariant, other bits), said in one
    line; None outside strict mode. Actors on this machine (or one like it) take the same path.
    A run placed on GPUs does not ask (its strict ops are Triton kernels, not these)."""
    if cfg.mode != "strict":
        return None
    from kernels.batch_invariant import cpu

    native = cpu.available()
    if not native:
        print("lockstep: warning: mode: strict runs its PyTorch formulations (its C kernels are off or did not build "
              "here: the reason is in run.log); slower, still bitwise between the engines", file=sys.stderr)
    return native


def check_engine_memory(cfg: RunConfig, model_bytes: int, gpu_bytes: int) -> None:
    """The rollout engine gets `rollout.gpu_memory_utilization` of its GPU for weights, activations
    and KV cache; refuse up front a share its weights alone would fill (vLLM would fail minutes
    later inside the engine's actor, with a traceback about cache blocks)."""
    share = cfg.rollout.gpu_memory_utilization
    budget = share * gpu_bytes
    # an engine over n GPUs holds about 1/n of the weights on each (its embedding and LM head
    # replicated: a lower bound, which only refuses what cannot fit)
    model_bytes = model_bytes / cfg.rollout.tensor_parallel_size
    if model_bytes > 0.9 * budget:
        need = min(1.0, model_bytes / 0.9 / gpu_bytes + 0.05)
        raise ConfigError(
            f"rollout.gpu_memory_utilization={share} gives the engine {budget / 2**30:.1f} GiB of the "
            f"{gpu_bytes / 2**30:.1f} GiB GPU, but the model's weights alone take {model_bytes / 2**30:.1f} GiB in "
            f"{cfg.model.dtype}: raise rollout.gpu_memory_utilization (to ~{need:.2f}) or use a larger GPU")
