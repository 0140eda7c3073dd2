"""Self-contained Hugging Face model code for Ring-linear checkpoint directories.

``write_remote_code(directory)`` writes ``configuration_bailing_moe_linear_v2.py`` and
``modeling_bailing_moe_linear_v2.py`` beside a checkpoint's ``config.json`` and adds ``auto_map``
to it, so that ``AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)`` builds
the model in plain transformers, without Lockstep installed (as published Ring-linear checkpoints
load).  Every Ring-linear directory Lockstep writes carries them: run checkpoints and the SFT
export (``trainer.worker.TrainerRank.export_hf``), random checkpoints, the demo model.

The two files are *generated* from the modules that define the model, never kept by hand
(docs/decisions.md, "Self-contained checkpoints"): starting from the model classes of
:mod:`trainer.ring_linear.modeling` (and everything of :mod:`models.ring_linear.config` for the
configuration file), each definition is copied from its module's source with the definitions it
uses, transitively, across the project's modules (``models/``, ``kernels/``), then the modeling
module's top-level calls (the registration of the expert-stacking weight conversion: the
checkpoint keeps one tensor per expert, the model stacks them).  Imports of
third-party packages are kept; imports of the project are replaced by the definitions they name.
The public ops that choose between Triton, a C kernel and PyTorch at run time are bound to their
PyTorch implementation (:data:`TORCH_PATHS`): the exported code runs the same PyTorch ops the
trainer runs on CPU, so its logits equal Lockstep's bitwise there (tests/integration/
test_hf_export.py); on CUDA, Lockstep's Triton kernels and the exported PyTorch ops agree to
fp32 rounding.  A name defined twice under one name, or a project import inside a function body
(other than :data:`TRAINING_ONLY_IMPORTS`), stops the generation with an error naming it.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import json
import os
from pathlib import Path

PROJECT_PACKAGES = ("kernels", "models", "trainer", "rollout", "rl", "rewards")
CONFIG_MODULE = "models.ring_linear.config"
MODELING_MODULE = "trainer.ring_linear.modeling"
CONFIG_FILE = "configuration_bailing_moe_linear_v2"
MODELING_FILE = "modeling_bailing_moe_linear_v2"
MODEL_CLASSES = ("BailingMoeLinearV2PreTrainedModel", "BailingMoeLinearV2Model", "BailingMoeLinearV2ForCausalLM")
AUTO_MAP = {
    "AutoConfig": f"{CONFIG_FILE}.BailingMoeLinearV2Config",
    "AutoModel": f"{MODELING_FILE}.BailingMoeLinearV2Model",
    "AutoModelForCausalLM": f"{MODELING_FILE}.BailingMoeLinearV2ForCausalLM",
}
# (module, name) of a public op → (module, name) of the PyTorch implementation the exported code
# calls in its place (same signature for the arguments the model passes).
TORCH_PATHS = {
    ("kernels.linear_attention.chunk", "chunk"): ("kernels.linear_attention.chunk_torch", "chunk_torch"),
    ("kernels.linear_attention.recurrent", "recurrent"): ("kernels.linear_attention.recurrent_torch", "recurrent_step"),
    ("kernels.lm_head.logits", "logits_fp32"): ("kernels.lm_head.logits", "logits_fp32_torch"),
    ("kernels.softmax_attention.causal", "causal_attention"): ("kernels.softmax_attention.causal_torch",
                                                               "causal_torch"),
    # strict mode's ops: their PyTorch formulations, not strict_cpu.c (kernels.batch_invariant.cpu)
    ("kernels.batch_invariant.matmul", "_rows"): ("kernels.batch_invariant.matmul", "_tiled"),
    ("kernels.batch_invariant.matmul", "grouped_linear"): ("kernels.batch_invariant.matmul", "no_grouped_linear"),
    ("kernels.batch_invariant.attention", "_attention_forward"): ("kernels.batch_invariant.attention", "_blocked"),
    ("kernels.batch_invariant.linear_attention", "_recurrence_forward"): ("kernels.batch_invariant.linear_attention",
                                                                          "_token_loop"),
    ("kernels.batch_invariant.activation", "_activation"): ("kernels.batch_invariant.activation",
                                                            "_activation_torch"),
    ("kernels.batch_invariant.norm", "_norm_forward"): ("kernels.batch_invariant.norm", "_norm_torch"),
}

_BUILTINS = set(dir(builtins))


class RemoteCodeError(RuntimeError):
    """The model's modules cannot be assembled into one file (a clash or an unsupported import)."""


class _Module:
    """One project module's source, parsed: its top-level definitions and import bindings."""

    def __init__(self, name: str):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RemoteCodeError(f"module {name} not found")
        self.name, self.path = name, Path(spec.origin)
        self.is_package = self.path.name == "__init__.py"
        self.source = self.path.read_text()
        self.tree = ast.parse(self.source)
        self.definitions: dict[str, ast.stmt] = {}
        self.imports: dict[str, tuple[str, str | None]] = {}   # bound name → (module, imported name or None)
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.definitions[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for n in ast.walk(target):
                        if isinstance(n, ast.Name):
                            self.definitions[n.id] = node
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    bound = alias.asname or alias.name.split(".")[0]
                    self.imports[bound] = (alias.name if alias.asname else bound, None)
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (self.absolute(node), alias.name)

    def absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module
        package = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
        base = package[:len(package) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    def segment(self, node: ast.stmt) -> str:
        """The definition's source text, decorators included."""
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return "\n".join(self.source.splitlines()[first - 1:node.end_lineno])


# Project modules that a function body may import lazily and the export leaves as they are: paths
# only Lockstep's trainer turns on (FP8 training through `swap_linears_to_fp8`), never reached by
# plain transformers loading and running the exported model. Turning one on there fails with an
# ImportError naming the module.
TRAINING_ONLY_IMPORTS = {"kernels.fp8"}


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT_PACKAGES


def _used_names(node: ast.stmt) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


class _Bundle:
    """Definitions copied in dependency order, third-party imports, and names imported from a
    sibling generated file (``local``: module name → the file's module name)."""

    def __init__(self, local: dict[str, str]):
        self.local = local
        self.modules: dict[str, _Module] = {}
        self.chunks: list[str] = []
        self.third_party: dict[str, str] = {}                 # bound name → import statement
        self.sibling: dict[str, set[str]] = {}                # file module → names
        self.bound: dict[str, tuple[str, str]] = {}           # name in the file → its definition
        self.done: set[tuple[str, str]] = set()

    def module(self, name: str) -> _Module:
        if name not in self.modules:
            self.modules[name] = _Module(name)
        return self.modules[name]

    def bind(self, name: str, origin: tuple[str, str]) -> None:
        if self.bound.setdefault(name, origin) != origin:
            raise RemoteCodeError(f"two definitions named {name!r} ({self.bound[name][0]} and {origin[0]}); "
                                  "rename one so that the exported model code can hold both")

    def resolve(self, module: str, name: str) -> tuple[str, str]:
        """The module that defines ``name`` as imported from ``module`` (following re-exports)."""
        m = self.module(module)
        if name in m.definitions:
            return module, name
        if name in m.imports and _is_project(m.imports[name][0]) and m.imports[name][1] is not None:
            return self.resolve(*m.imports[name])
        if m.is_package or name not in m.imports:  # a submodule imported as a name
            raise RemoteCodeError(f"{module}.{name}: not a definition the exported code can copy")
        raise RemoteCodeError(f"{module}.{name} is a third-party import; import it from there")

    def add(self, module: str, name: str) -> str:
        """Copies ``module.name`` (and what it uses) into the bundle; returns its name there."""
        module, name = self.resolve(module, name)
        module, name = TORCH_PATHS.get((module, name), (module, name))
        if module in self.local:
            self.sibling.setdefault(self.local[module], set()).add(name)
            self.bind(name, (module, name))
            return name
        key = (module, name)
        if key in self.done:
            return name
        self.done.add(key)
        m = self.module(module)
        node = m.definitions[name]
        for dependency in sorted(_used_names(node)):
            self.add_global(m, dependency, node)
        for inner in ast.walk(node):
            if isinstance(inner, (ast.Import, ast.ImportFrom)) and inner is not node:
                target = m.absolute(inner) if isinstance(inner, ast.ImportFrom) else inner.names[0].name
                if _is_project(target) and target not in TRAINING_ONLY_IMPORTS:
                    raise RemoteCodeError(f"{module}.{name} imports {target} inside its body; the exported "
                                          "code cannot follow that import (import it at module level)")
        names = [name]
        if isinstance(node, (ast.Assign, ast.AnnAssign)):  # e.g. `A, B = ...` binds several names
            names = [n.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                     for n in ast.walk(t) if isinstance(n, ast.Name)]
            for other in names:
                self.done.add((module, other))
        for bound in names:
            self.bind(bound, (module, bound))
        self.chunks.append(f"# {m.path.relative_to(_root(m))}\n{m.segment(node)}")
        return name

    def add_global(self, m: _Module, name: str, user: ast.stmt) -> None:
        """A name used by a definition of ``m``: its own definition, an import, or a local/builtin."""
        if name in m.definitions:
            if m.definitions[name] is not user:
                defined = self.add(m.name, name)
                if defined != name and name not in self.bound:  # bound to its PyTorch path (TORCH_PATHS)
                    self.bind(name, self.bound[defined])
                    self.chunks.append(f"{name} = {defined}")
            return
        if name not in m.imports:
            return  # a local variable, a parameter or a builtin
        target, imported = m.imports[name]
        if not _is_project(target):
            statement = (f"import {target} as {name}" if imported is None and target != name
                         else f"import {target}" if imported is None
                         else f"from {target} import {imported}" + (f" as {name}" if imported != name else ""))
            if self.third_party.setdefault(name, statement) != statement:
                raise RemoteCodeError(f"{name!r} is imported two ways: {self.third_party[name]!r}, {statement!r}")
            return
        if imported is None:
            raise RemoteCodeError(f"{m.name} uses the project module {target} as a name ({name})")
        defined = self.add(target, imported)
        if defined != name:  # `from x import a as b`: the file binds b too
            self.bind(name, self.bound[defined])
            self.chunks.append(f"{name} = {defined}")

    def add_registrations(self, module: str) -> None:
        """Copies the module's top-level calls (and what they use), after its definitions: the
        registrations with transformers that loading needs, e.g. the checkpoint conversion that
        stacks the per-expert tensors into :class:`~models.ring_linear.moe.GroupedExperts`."""
        m = self.module(module)
        for node in m.tree.body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                for dependency in sorted(_used_names(node)):
                    self.add_global(m, dependency, node)
                self.chunks.append(f"# {m.path.relative_to(_root(m))}\n{m.segment(node)}")

    def render(self, title: str, exports: list[str]) -> str:
        imports = sorted(set(self.third_party.values()), key=lambda s: (s.startswith("from"), s))
        siblings = [f"from .{file} import {', '.join(sorted(names))}" for file, names in sorted(self.sibling.items())]
        body = "\n\n\n".join(self.chunks)
        return (f'"""{title}\n\nGenerated by Lockstep (trainer/ring_linear/remote_code.py) from its own modules; '
                "do not edit.\nNeeds only torch and transformers (written against transformers 5.x).\n\"\"\"\n\n"
                "from __future__ import annotations\n\n" + "\n".join(imports + siblings) + "\n\n\n"
                + body + f"\n\n\n__all__ = {exports!r}\n")


def _root(m: _Module) -> Path:
    """The directory holding the project's top-level packages."""
    return m.path.parents[len(m.name.split(".")) - (0 if m.is_package else 1)]


def configuration_source() -> str:
    """The configuration file: every definition of :mod:`models.ring_linear.config`."""
    bundle = _Bundle(local={})
    module = bundle.module(CONFIG_MODULE)
    for name in module.definitions:
        if name != "__all__":
            bundle.add(CONFIG_MODULE, name)
    return bundle.render("Ring-linear configuration (BailingMoeLinearV2Config).", ["BailingMoeLinearV2Config"])


def modeling_source() -> str:
    """The modeling file: the model classes and everything they use, the config imported from
    the configuration file."""
    bundle = _Bundle(local={CONFIG_MODULE: CONFIG_FILE})
    for name in MODEL_CLASSES:
        bundle.add(MODELING_MODULE, name)
    bundle.add_registrations(MODELING_MODULE)
    return bundle.render("Ring-linear hybrid linear/softmax-attention MoE model (BailingMoeLinearV2ForCausalLM).",
                         list(MODEL_CLASSES))


def write_remote_code(directory: str | os.PathLike) -> None:
    """Writes the two files into a Ring-linear checkpoint directory and points ``config.json``'s
    ``auto_map`` at them (replacing one that named other files, e.g. a published checkpoint's)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    (directory / f"{CONFIG_FILE}.py").write_text(configuration_source())
    (directory / f"{MODELING_FILE}.py").write_text(modeling_source())
    config["auto_map"] = dict(AUTO_MAP)
    tmp = config_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, config_path)


__all__ = ["write_remote_code", "configuration_source", "modeling_source", "RemoteCodeError", "TORCH_PATHS",
           "AUTO_MAP"]
