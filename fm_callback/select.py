"""Which modules to watch: names, glob patterns and module types -> ordered ``(name, module)`` pairs."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence

from torch import nn

LayerSpec = str | type[nn.Module]
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_GLOB_CHARS = set("*?[")


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The eager module behind a ``torch.compile`` wrapper (hooks must fire, so the probe runs eagerly)."""
    return getattr(model, "_orig_mod", model)


def _as_specs(layers: LayerSpec | Sequence[LayerSpec] | None) -> list[LayerSpec]:
    if layers is None:
        return list(DEFAULT_TYPES)
    if isinstance(layers, str) or isinstance(layers, type):
        return [layers]
    specs = list(layers)
    for spec in specs:
        if not isinstance(spec, str) and not (isinstance(spec, type) and issubclass(spec, nn.Module)):
            raise TypeError(
                f"layers: each entry must be a module name, a glob pattern or an nn.Module type, got {spec!r}"
            )
    if not specs:
        raise ValueError("layers: the list is empty; pass None to watch every Conv1d/2d/3d layer")
    return specs


def select_layers(
    model: nn.Module, layers: LayerSpec | Sequence[LayerSpec] | None = None, argument: str = "layers"
) -> list[tuple[str, nn.Module]]:
    """Modules of ``model`` named or matched by ``layers``, in ``named_modules()`` order, each once.

    Raises ``ValueError`` naming the closest existing names when a name or pattern matches nothing.
    """
    named = [(name, module) for name, module in unwrap_compiled(model).named_modules() if name]
    names = [name for name, _ in named]
    chosen: set[str] = set()
    for spec in _as_specs(layers):
        if isinstance(spec, type):
            hits = {name for name, module in named if isinstance(module, spec)}
            if not hits and layers is not None:
                raise ValueError(f"{argument}: the model has no module of type {spec.__name__}")
        elif _GLOB_CHARS & set(spec):
            hits = set(fnmatch.filter(names, spec))
            if not hits:
                raise ValueError(f"{argument}: the pattern {spec!r} matches no module. {_name_hint(spec, names)}")
        else:
            if spec not in names:
                raise ValueError(f"{argument}: the model has no module named {spec!r}. {_name_hint(spec, names)}")
            hits = {spec}
        chosen |= hits
    if not chosen:
        kinds = ", ".join(t.__name__ for t in DEFAULT_TYPES)
        raise ValueError(
            f"{argument}: the model has no {kinds} layer to watch by default; pass layers=[...] with module "
            f"names, glob patterns or types (e.g. layers=[nn.Linear]). {_name_hint('', names)}"
        )
    return [(name, module) for name, module in named if name in chosen]


def _name_hint(wanted: str, names: list[str]) -> str:
    close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.5)
    if close:
        return f"Closest names: {', '.join(close)}."
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return f"Module names: {shown or '(none: the model has no submodules)'}."
