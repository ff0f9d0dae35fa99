"""Which modules to watch: names, glob patterns and module types -> ordered ``(name, module)`` pairs."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from torch import nn

# The type comes first so that LightningCLI/jsonargparse reads "torch.nn.Conv2d" in YAML as the class
# (tried first) and anything that is not an importable class ("features.0", "layer?.conv1") as a name.
LayerSpec = type[nn.Module] | str
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_GLOB_CHARS = set("*?[")
# Characters a user mistypes for one another because they look alike (a typo "features.O" means "features.0").
_LOOKALIKES = {(a, b) for group in ("0Oo", "1lIi|", "2Zz", "5Ss", "8B") for a in group for b in group}


def is_attention_block(module: nn.Module) -> bool:
    """A transformer block, watched by default with the convs: a module with an attention module among its children
    (timm's ViT ``Block``, torchvision's ``EncoderBlock``, Swin's blocks). Its output is read as tokens or
    channels-last maps (see ``layout.py``)."""
    return any(
        isinstance(child, nn.MultiheadAttention) or type(child).__name__.endswith("Attention")
        for child in module.children()
    )


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The eager module behind a ``torch.compile`` wrapper (hooks must fire, so the probe runs eagerly)."""
    return getattr(model, "_orig_mod", model)


def named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every submodule, seeing through ``torch.compile`` wrappers anywhere in the model.

    A compiled submodule ``body = torch.compile(net)`` shows as ``body``, ``body.0``, ... (not
    ``body._orig_mod.0``): the names of the model as written, and the eager modules, whose hooks fire.
    """
    named = []
    for name, module in unwrap_compiled(model).named_modules():
        if not name or (type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod")):
            continue
        named.append((_strip_compiled(name), module))
    return named


def _strip_compiled(name: str) -> str:
    return name.replace("._orig_mod", "").removeprefix("_orig_mod.")


def _as_specs(layers: LayerSpec | Sequence[LayerSpec] | None, argument: str = "layers") -> list[LayerSpec]:
    if layers is None:
        return list(DEFAULT_TYPES)
    if isinstance(layers, str | type | nn.Module) or not isinstance(layers, Iterable):
        specs = [layers]
    else:
        specs = list(layers)
    for spec in specs:
        if isinstance(spec, nn.Module):
            raise TypeError(
                f"{argument}: got a module instance ({type(spec).__name__}); pass its name in the model "
                f"(e.g. 'features.0') or its type (e.g. {type(spec).__name__}) instead"
            )
        if not isinstance(spec, str) and not (isinstance(spec, type) and issubclass(spec, nn.Module)):
            raise TypeError(
                f"{argument}: each entry must be a module name, a glob pattern or an nn.Module type "
                f"(e.g. ['features.0', 'layer*.conv1', nn.Conv2d]), got {spec!r} of type {type(spec).__name__}"
            )
    if not specs:
        raise ValueError(f"{argument}: the list is empty; pass None to watch every Conv1d/2d/3d layer")
    return specs


def select_layers(
    model: nn.Module, layers: LayerSpec | Sequence[LayerSpec] | None = None, argument: str = "layers"
) -> list[tuple[str, nn.Module]]:
    """Modules of ``model`` named or matched by ``layers``, in ``named_modules()`` order, each once; ``None``: every
    conv and transformer block (:func:`is_attention_block`).

    Raises ``ValueError`` naming the closest existing names when a name or pattern matches nothing.
    """
    named = named_modules(model)
    names = [name for name, _ in named]
    chosen: set[str] = set()
    for spec in _as_specs(layers, argument):
        if isinstance(spec, str):
            spec = _strip_compiled(spec)  # a name copied from a state_dict of a compiled model
        if isinstance(spec, type):
            hits = {name for name, module in named if isinstance(module, spec)}
            if not hits and layers is not None:
                kinds = ", ".join(sorted({type(m).__name__ for _, m in named})) or "none: it has no submodules"
                raise ValueError(
                    f"{argument}: the model has no module of type {spec.__name__}; pass a type it has "
                    f"({kinds}) or module names"
                )
        elif _GLOB_CHARS & set(spec):
            hits = set(fnmatch.filter(names, spec))
            if not hits:
                raise ValueError(f"{argument}: the pattern {spec!r} matches no module. {_name_hint(spec, names)}")
        else:
            if spec not in names:
                raise ValueError(f"{argument}: the model has no module named {spec!r}. {_name_hint(spec, names)}")
            hits = {spec}
        chosen |= hits
    if layers is None:
        chosen |= {name for name, module in named if is_attention_block(module)}
    if not chosen:
        kinds = ", ".join(t.__name__ for t in DEFAULT_TYPES)
        raise ValueError(
            f"{argument}: the model has no {kinds} layer to watch by default; pass layers=[...] with module "
            f"names, glob patterns or types (e.g. layers=[nn.Linear]). {_name_hint('', names)}"
        )
    return [(name, module) for name, module in named if name in chosen]


def _name_hint(wanted: str, names: list[str]) -> str:
    close = _closest(wanted, names)
    if close:
        return f"Closest names: {', '.join(close)}."
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return f"Module names: {shown or '(none: the model has no submodules)'}."


def _closest(wanted: str, names: list[str], n: int = 5) -> list[str]:
    """Up to ``n`` names within an edit distance of half the longer string, nearest first.

    Ties go to the name reached by look-alike substitutions (``O`` for ``0``, ``l`` for ``1``, ...), then to the
    earlier name in ``names``: among ``features.0`` .. ``features.20``, ``features.O`` means ``features.0``.
    """
    close = []
    for i, name in enumerate(names):
        limit = max(len(wanted), len(name)) // 2
        if abs(len(wanted) - len(name)) <= limit:  # the distance is at least the difference in length
            distance, other = _distance(wanted, name)
            if distance <= limit:
                close.append((distance, other, i))
    return [names[i] for *_, i in sorted(close)[:n]]


def _distance(a: str, b: str) -> tuple[int, int]:
    """Levenshtein distance from ``a`` to ``b``, and the fewest of its edits that are not look-alike substitutions.

    One integer per cell, ``distance * k + other``, keeps the dynamic programme fast: ``other < k``.
    """
    k = len(a) + len(b) + 1
    row = [j * (k + 1) for j in range(len(b) + 1)]
    for i, ca in enumerate(a, 1):
        previous, row = row, [i * (k + 1)]
        for j, cb in enumerate(b, 1):
            substitute = previous[j - 1] if ca == cb else previous[j - 1] + k + (not _lookalike(ca, cb))
            row.append(min(substitute, previous[j] + k + 1, row[j - 1] + k + 1))
    return divmod(row[-1], k)


def _lookalike(a: str, b: str) -> bool:
    return (a, b) in _LOOKALIKES or a.lower() == b.lower()
