"""Crafted checkpoint files: loading never imports a module, never inflates, never trusts a size.

Each file starts as one ``funcnn.save`` (or ``save_fit_state``) wrote and is edited at the
zip level: its JSON header rewritten, a member compressed, a directory size changed.
"""

from __future__ import annotations

import importlib
import io
import json
import sys
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

import funcnn
import funcnn.cli
from funcnn import optim, serialization
from funcnn.callbacks import Best, FitState, load_fit_state, save_fit_state
from funcnn.checkpoint import CheckpointError, load, register, save

NET = funcnn.MLP((4, 6, 3))


def fit_checkpoint(path: Path) -> Path:
    """A fit checkpoint with early stopping: it names Dense, AdamState and Best."""
    params = funcnn.init_params(NET, 0, backend="numpy")
    state = optim.adam(1e-3).init(params)
    best = Best(0.5, 1, params, state)
    save_fit_state(path, NET, FitState(params, state, 2, np.zeros(2, np.uint32),
                                       {"loss": [1.0, 0.5], "val_loss": [0.7, 0.6]}, best))
    return path


def read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def write_members(path: Path, members: dict[str, bytes], methods: dict[str, int] | None = None):
    """Write ``members`` as a zip, each stored unless ``methods`` names its compression."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data, compress_type=(methods or {}).get(name, zipfile.ZIP_STORED))


def header_of(path: Path) -> dict[str, Any]:
    return json.loads(np.load(io.BytesIO(read_members(path)["__funcnn__.npy"])).tobytes())


def rewrite_header(path: Path, header: dict[str, Any]) -> None:
    members = read_members(path)
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(header).encode(), np.uint8))
    members["__funcnn__.npy"] = buf.getvalue()
    write_members(path, members)


def class_sites(node: Any, where: tuple = ()) -> list[tuple]:
    """The key paths of every ``"class"`` entry in a JSON header."""
    if isinstance(node, dict):
        found = [where] if "class" in node else []
        return found + [s for k, v in node.items() for s in class_sites(v, (*where, k))]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in class_sites(v, (*where, i))]
    return []


def at(header: dict[str, Any], where: tuple) -> dict[str, Any]:
    for step in where:
        header = header[step]
    return header


def load_refused(path: Path, **kwargs: Any) -> str:
    """The message of the CheckpointError (or ValueError) that loading ``path`` raises; fails
    the test when loading imports a module or raises anything else (SystemExit included)."""
    before = set(sys.modules)
    try:
        load(path, **kwargs)
    except (CheckpointError, ValueError) as err:
        message = str(err)
    except BaseException as err:  # noqa: BLE001  (SystemExit is what the defect raised)
        pytest.fail(f"loading raised {type(err).__name__}: {err}")
    else:
        pytest.fail("a forged checkpoint was loaded")
    assert set(sys.modules) == before, f"loading imported {sorted(set(sys.modules) - before)}"
    return message


def refused_and_peak(path: Path) -> tuple[str, int]:
    """:func:`load_refused`'s message and the peak memory (bytes) allocated meanwhile."""
    tracemalloc.start()
    try:
        message = load_refused(path)
        return message, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------- class names

FORGED_CLASSES = [
    "funcnn.__main__:AdamState",  # importing it ran the command line (issue 17)
    "funcnn.cli:main",
    "funcnn.launch:main",
    "funcnn.callbacks:FitState",  # one of funcnn's NamedTuples, but no checkpoint holds one
    "funcnn.mlp:MLP",
    "funcnn.optim:NoSuchState",
    "this:Zen",  # importing it prints
    "os:system",
    "collections:OrderedDict",
    "funcnn.optim:Adam State",
]


@pytest.fixture
def fresh_modules(monkeypatch):
    """Modules the forged names point at are not imported yet, so an import would show."""
    for name in ("funcnn.__main__", "funcnn.launch", "this"):
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize("forged", FORGED_CLASSES)
def test_a_forged_class_name_anywhere_is_refused_without_an_import(tmp_path, fresh_modules,
                                                                    forged):
    path = fit_checkpoint(tmp_path / "fit.npz")
    original = header_of(path)
    sites = class_sites(original)
    assert {at(original, s)["class"].rpartition(":")[2] for s in sites} == {
        "DenseParams", "AdamState", "Best"}
    for site in sites:
        header = header_of(fit_checkpoint(path))
        at(header, site)["class"] = forged
        rewrite_header(path, header)
        message = load_refused(path)
        assert repr(forged) in message, message
        assert "a class funcnn does not rebuild" in message
        for accepted in ("Dense", "AdamState", "SGDState", "Best", "funcnn.checkpoint.register"):
            assert accepted in message, message
        if forged.endswith(":AdamState"):
            assert "funcnn's AdamState is 'funcnn.optim._adam:AdamState'" in message, message
        else:
            assert "import it and call funcnn.checkpoint.register(" in message, message


def test_importing_funcnn_main_runs_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(funcnn.cli, "main", lambda *args: calls.append(args) or 0)
    monkeypatch.delitem(sys.modules, "funcnn.__main__", raising=False)
    try:
        importlib.import_module("funcnn.__main__")
    except SystemExit as exit_:
        pytest.fail(f"importing funcnn.__main__ exited ({exit_.code})")
    assert calls == []


@pytest.fixture
def no_user_classes(monkeypatch):
    monkeypatch.setattr(serialization, "_registry", {})


def test_funcnns_own_classes_load_without_registration(tmp_path, no_user_classes):
    path = fit_checkpoint(tmp_path / "fit.npz")
    state = load_fit_state(path, NET)
    assert type(state.best) is Best and type(state.best.params[0]) is funcnn.Dense
    params = funcnn.init_params(NET, 0, backend="numpy")
    states = [getattr(optim, name) for name in optim.__all__ if name.endswith("State")]
    assert len(states) >= 4
    for cls in states:  # every optimizer state, also one added later
        tree = cls(*[np.zeros(2, np.float32) for _ in cls._fields])
        save(tmp_path / "s.npz", params, tree)
        assert type(load(tmp_path / "s.npz").opt_state) is cls
    cache = funcnn.Cache((funcnn.layers.DenseCache(np.ones(2), np.ones(2), None, None),),
                         np.ones(2), np.ones(1))
    save(tmp_path / "c.npz", params, extra=cache)
    assert type(load(tmp_path / "c.npz").extra) is funcnn.Cache


class Mine(NamedTuple):
    x: Any


def test_register_keeps_funcnns_names_for_funcnns_classes(tmp_path, no_user_classes):
    assert register(optim.AdamState) is optim.AdamState  # harmless: it is the same class

    class Impostor(NamedTuple):
        count: Any
        mu: Any
        nu: Any

    Impostor.__module__, Impostor.__qualname__ = "funcnn.optim._adam", "AdamState"
    with pytest.raises(ValueError, match="funcnn.optim._adam:AdamState is the name of one of "
                                         "funcnn's own classes"):
        register(Impostor)
    save(tmp_path / "m.npz", (Mine(np.ones(2)),))
    message = load_refused(tmp_path / "m.npz")
    assert f"{__name__}:Mine" in message and "funcnn.checkpoint.register(Mine)" in message
    register(Mine)
    assert type(load(tmp_path / "m.npz").params[0]) is Mine


NET_FORGERIES = {
    "a module as activation": ({"hidden": "funcnn.__main__:main"}, "saved net spec"),
    "a module as loss": ({"loss": "funcnn.cli"}, "saved net spec"),
    "a custom piece": ({"hidden": {"custom": "activation", "name": "os.system"}},
                       "cannot rebuild your code from a file"),
    "an unknown field": ({"module": "funcnn.__main__"}, "saved net spec"),
}


@pytest.mark.parametrize("name", list(NET_FORGERIES))
def test_a_forged_net_spec_is_refused_without_an_import(tmp_path, fresh_modules, name):
    change, fragment = NET_FORGERIES[name]
    path = tmp_path / "net.npz"
    save(path, funcnn.init_params(NET, 0, backend="numpy"), net=NET)
    header = header_of(path)
    header["net"].update(change)
    rewrite_header(path, header)
    assert fragment in load_refused(path)


L = funcnn.layers
CNN = funcnn.Net([L.Conv2D(2, 3, padding="same"), L.BatchNorm(), L.Activation("relu"),
                  L.Residual([L.Conv2D(2, 3, padding="same")]), L.Flatten(), L.Dense(3)],
                 (4, 4, 1))


def net_checkpoint(path: Path) -> Path:
    save(path, funcnn.init_params(CNN, 0), net=CNN, state=funcnn.init_state(CNN))
    return path


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"layer": "Flatten", "fields": {}}
    for _ in range(depth):
        node = {"layer": "Serial", "fields": {"layers": [node]}}
    return node


def _layer(i: int, **fields: Any):
    """An edit of the saved layer ``i``'s fields."""
    return lambda spec: spec["fields"]["layers"][i]["fields"].update(fields)


NET_SPEC_FORGERIES = {
    "a module as a layer": (lambda spec: spec["fields"]["layers"][2].update(
        layer="funcnn.__main__:main"), "'funcnn.__main__:main', which funcnn does not rebuild"),
    "a class funcnn has but a net may not hold": (lambda spec: spec["fields"]["layers"][2].update(
        layer="Layer"), "'Layer', which funcnn does not rebuild"),
    "a field that is not a field": (_layer(0, module="funcnn.__main__"),
                                    "['module'], which are not fields of Conv2D"),
    "a private attribute as a field": (_layer(1, keeps_state=False),
                                       "['keeps_state'], which are not fields of BatchNorm"),
    "a string for an int": (_layer(0, filters="2"), "Conv2D filters must be a positive int"),
    "a float for a bool": (_layer(0, bias=1.0), "bias must be True or False"),
    "a dict for a str": (_layer(2, activation={"os": "system"}),
                         "a value funcnn does not rebuild"),
    "a module as activation": (_layer(2, activation="funcnn.cli:main"), "saved net spec"),
    "a custom piece": (_layer(2, activation={"custom": "activation", "name": "os.system"}),
                       "cannot rebuild your code from a file"),
    "a custom piece of no kind": (_layer(2, activation={"custom": ["os"], "name": "system"}),
                                  "malformed custom piece"),
    "an unknown kind of net": (lambda spec: spec.update(net="funcnn.__main__:Net"),
                               "unknown kind of net"),
    "a field of the net that is not a field": (
        lambda spec: spec["fields"].update(sizes=[4, 3]), "not fields of Net"),
    "a nested bomb": (lambda spec: spec["fields"]["layers"].insert(4, _nested(200)),
                      "nests deeper than 32"),
    "a wide bomb": (lambda spec: spec["fields"]["layers"].__setitem__(
        slice(4, 4), [{"layer": "Flatten", "fields": {}}] * 20_000), "more than 10000 layers"),
    "a layer of a terabyte": (_layer(5, n_out=2**38), "but the file stores"),
}


@pytest.mark.parametrize("name", list(NET_SPEC_FORGERIES))
def test_a_forged_layer_spec_is_refused_without_an_import(tmp_path, fresh_modules, name):
    edit, fragment = NET_SPEC_FORGERIES[name]
    path = net_checkpoint(tmp_path / "net.npz")
    assert load(path).net == CNN
    header = header_of(path)
    edit(header["net"])
    rewrite_header(path, header)
    message, peak = refused_and_peak(path)
    assert fragment in message, message
    assert peak < 64 * 2**20, f"refusing it took {peak / 2**20:.0f} MiB"


# ---------------------------------------------------------------------------- sizes


def test_a_deflated_bomb_is_refused_before_it_is_inflated(tmp_path):
    # 8 MiB of zero weights deflate to ~8 KiB: the file must not be inflated to be refused
    net = funcnn.MLP((2048, 1024))
    path = tmp_path / "bomb.npz"
    save(path, (funcnn.Dense(np.zeros((2048, 1024), np.float32), np.zeros(1024, np.float32)),),
         net=net)
    members = read_members(path)
    write_members(path, members, {name: zipfile.ZIP_DEFLATED for name in members})
    assert path.stat().st_size < 100_000
    message, peak = refused_and_peak(path)
    assert "is compressed" in message and "stored members only" in message
    assert peak < 1_000_000, f"refusing the file allocated {peak} bytes"


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
@pytest.mark.parametrize("member", ["__funcnn__.npy", "params/0.npy", "opt_state/1.npy"])
def test_any_compressed_member_is_refused(tmp_path, member, method):
    path = tmp_path / "c.npz"
    params = funcnn.init_params(NET, 0, backend="numpy")
    save(path, params, optim.adam(1e-3).init(params), net=NET)
    write_members(path, read_members(path), {member: method})
    message = load_refused(path)
    assert f"the member {member.removesuffix('.npy')!r} is compressed (zip method {method})" \
        in message


def _central_entries(raw: bytes):
    """Offsets of the central directory entries of a zip file's bytes."""
    start = raw.index(b"PK\x01\x02")
    while start != -1:
        yield start
        start = raw.find(b"PK\x01\x02", start + 46)


def test_declared_sizes_that_lie_are_refused(tmp_path):
    path = tmp_path / "lie.npz"
    save(path, funcnn.init_params(NET, 0, backend="numpy"), net=NET)
    good = path.read_bytes()
    entries = list(_central_entries(good))
    assert len(entries) == 5  # params/0 to params/3, __funcnn__

    # a stored member whose uncompressed size is not its stored size
    raw = bytearray(good)
    raw[entries[0] + 24:entries[0] + 28] = (10**6).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    assert "a size (1000000 bytes) that the file does not hold" in load_refused(path)

    # sizes that each fit in the file but add up to more: members that overlap
    raw = bytearray(good)
    for entry in entries[:2]:
        raw[entry + 20:entry + 28] = (len(good) - 100).to_bytes(4, "little") * 2
    path.write_bytes(bytes(raw))
    assert "its members overlap" in load_refused(path)


def test_the_header_size_is_bounded_when_writing_and_reading(tmp_path, monkeypatch):
    params = funcnn.init_params(NET, 0, backend="numpy")
    save(tmp_path / "small.npz", params)
    save(tmp_path / "h.npz", params, metadata={"note": "x" * 100})
    bound = len(json.dumps(header_of(tmp_path / "small.npz")))
    monkeypatch.setattr(serialization, "MAX_HEADER_BYTES", bound)
    assert load(tmp_path / "small.npz").metadata is None  # a header of the bound is read
    assert f"more than the {bound} a checkpoint header may have" in load_refused(
        tmp_path / "h.npz")
    with pytest.raises(ValueError, match=f"more than the {bound} a checkpoint may have"):
        save(tmp_path / "big.npz", params, metadata={"note": "x" * 100})
    assert not (tmp_path / "big.npz").exists()


@pytest.mark.parametrize("forgery", ["last leaf's dtype", "last class"])
def test_every_leaf_is_checked_before_any_is_read(tmp_path, monkeypatch, forgery):
    path = fit_checkpoint(tmp_path / "fit.npz")
    header = header_of(path)
    best = header["extra"]["children"][2]  # extra = {"key", "loss", "best"}: the last tree
    if forgery == "last class":
        best["class"] = "funcnn.__main__:Best"
    else:
        best["children"][3]["children"][2]["children"][1]["children"][1]["dtype"] = "<f8"
    rewrite_header(path, header)
    reads = []
    read = serialization.NpzReader.read
    monkeypatch.setattr(serialization.NpzReader, "read",
                        lambda self, name: reads.append(name) or read(self, name))
    load_refused(path)
    assert reads == ["__funcnn__"]
