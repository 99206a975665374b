"""Pytrees without jax: tuples, NamedTuples, lists, dicts and ``None``.

These helpers walk containers in the same leaf order as ``jax.tree_util``
(sequences by position, dicts by sorted key, ``None`` holds no leaf), so a
tree flattened here lines up with one flattened by jax. They work on trees of
NumPy arrays, jax arrays and tracers alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "describe",
    "first_difference",
    "same_structure",
    "tree_leaves",
    "tree_map",
    "tree_paths",
    "tree_structure",
    "tree_unflatten",
]


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _children(node: Any) -> list[tuple[str, Any]] | None:
    """(path step, child) pairs of a container, or None for a leaf."""
    if node is None:
        return []
    if _is_namedtuple(node):
        return [(f".{f}", c) for f, c in zip(node._fields, node, strict=True)]
    if isinstance(node, tuple | list):
        return [(f"[{i}]", c) for i, c in enumerate(node)]
    if isinstance(node, dict):
        return [(f"[{k!r}]", node[k]) for k in sorted(node)]
    return None


def _collect(node: Any, out: list[Any]) -> None:
    if type(node) is tuple or isinstance(node, tuple | list):  # NamedTuples too
        for child in node:
            _collect(child, out)
    elif isinstance(node, dict):
        for key in sorted(node):
            _collect(node[key], out)
    elif node is not None:
        out.append(node)


def tree_leaves(tree: Any) -> list[Any]:
    """The leaves of ``tree`` in jax order."""
    out: list[Any] = []
    _collect(tree, out)
    return out


def _build(like: Any, it: Iterator[Any]) -> Any:
    if isinstance(like, tuple):
        children = [_build(child, it) for child in like]
        return type(like)(*children) if hasattr(type(like), "_fields") else type(like)(children)
    if isinstance(like, list):
        return type(like)(_build(child, it) for child in like)
    if isinstance(like, dict):
        return type(like)((key, _build(like[key], it)) for key in sorted(like))
    if like is None:
        return None
    return next(it)


def tree_unflatten(like: Any, leaves: list[Any]) -> Any:
    """A tree with the structure of ``like`` whose leaves are ``leaves`` (in jax order)."""
    it = iter(leaves)
    try:
        out = _build(like, it)
    except StopIteration:
        raise ValueError(f"too few leaves for a tree of structure {describe(like)}") from None
    if next(it, it) is not it:
        raise ValueError(f"more leaves than a tree of structure {describe(like)} has places for")
    return out


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leaf by leaf to ``tree`` and trees of the same structure."""
    for other in rest:
        if not same_structure(tree, other):
            raise ValueError(
                "tree structures differ:\n"
                f"  first:  {describe(tree)}\n  other:  {describe(other)}\n"
                f"  first difference at {first_difference(tree, other)}"
            )
    leaves = tree_leaves(tree)
    if not rest:
        return tree_unflatten(tree, [fn(leaf) for leaf in leaves])
    others = [tree_leaves(other) for other in rest]
    return tree_unflatten(tree, [fn(*xs) for xs in zip(leaves, *others, strict=True)])


def same_structure(a: Any, b: Any, leaves_match: Callable[[Any, Any], bool] | None = None) -> bool:
    """True when ``a`` and ``b`` have the same containers (types, lengths, dict keys) and,
    if ``leaves_match`` is given, ``leaves_match(leaf_a, leaf_b)`` holds for every leaf pair."""
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(
            same_structure(x, y, leaves_match) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(
            same_structure(a[k], b[k], leaves_match) for k in a
        )
    if a is None or b is None:
        return a is b
    if isinstance(b, tuple | list | dict):
        return False
    return leaves_match is None or leaves_match(a, b)


def _walk(tree: Any, path: str) -> Iterator[tuple[str, Any]]:
    kids = _children(tree)
    if kids is None:
        yield path, tree
        return
    for step, child in kids:
        yield from _walk(child, path + step)


def tree_paths(tree: Any) -> list[tuple[str, Any]]:
    """(path, leaf) pairs, e.g. ``("[0].W", array)``, in jax order."""
    return list(_walk(tree, ""))


def tree_structure(tree: Any) -> Any:
    """A hashable description of the containers of ``tree`` (leaves become ``*``)."""
    kids = _children(tree)
    if kids is None:
        return "*"
    return (type(tree).__name__, tuple((s, tree_structure(c)) for s, c in kids))


def describe(tree: Any) -> str:
    """A short readable structure with leaf shapes, e.g. ``(Dense(W=f32[2,3], b=f32[3]),)``."""
    kids = _children(tree)
    if kids is None:
        shape = getattr(tree, "shape", None)
        dtype = getattr(tree, "dtype", None)
        if shape is None:
            return type(tree).__name__
        return f"{getattr(dtype, 'name', dtype)}[{','.join(map(str, shape))}]"
    if tree is None:
        return "None"
    if _is_namedtuple(tree):
        inner = ", ".join(f"{s[1:]}={describe(c)}" for s, c in kids)
        return f"{type(tree).__name__}({inner})"
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{s[1:-1]}: {describe(c)}" for s, c in kids) + "}"
    inner = ", ".join(describe(c) for _, c in kids)
    if isinstance(tree, tuple):
        return f"({inner}{',' if len(kids) == 1 else ''})"
    return f"[{inner}]"


def first_difference(a: Any, b: Any, path: str = "", *, shapes: bool = False) -> str | None:
    """The path of the first place where ``a`` and ``b`` differ in structure (or leaf shape)."""
    ka, kb = _children(a), _children(b)
    if ka is None and kb is None:
        if shapes and getattr(a, "shape", None) != getattr(b, "shape", None):
            return f"{path or '<root>'} (shape {getattr(a, 'shape', None)} vs "\
                f"{getattr(b, 'shape', None)})"
        return None
    if ka is None or kb is None or type(a) is not type(b):
        return f"{path or '<root>'} ({type(a).__name__} vs {type(b).__name__})"
    steps_a, steps_b = [s for s, _ in ka], [s for s, _ in kb]
    if steps_a != steps_b:
        return f"{path or '<root>'} (children {steps_a} vs {steps_b})"
    for (step, ca), (_, cb) in zip(ka, kb, strict=True):
        found = first_difference(ca, cb, path + step, shapes=shapes)
        if found is not None:
            return found
    return None
