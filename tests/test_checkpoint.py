"""Tests for funcnn.checkpoint: exact round trips, refusal of damaged files, atomic writes."""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import funcnn
from funcnn import _files, optim, serialization
from funcnn.checkpoint import Checkpoint, CheckpointError, load, register, save
from funcnn.mlp import Dense

NET = funcnn.MLP((4, 6, 3))

OPTIMIZERS = {
    "sgd": (lambda: optim.sgd(lr=0.1, momentum=0.9, nesterov=True), optim.SGDState),
    "adam": (lambda: optim.adam(lr=0.01), optim.AdamState),
    "adamw": (lambda: optim.adamw(lr=0.01, mask=optim.weights_only), optim.AdamState),
    "rmsprop": (lambda: optim.rmsprop(lr=0.01), optim.RMSPropState),
    "adagrad": (lambda: optim.adagrad(lr=0.1), optim.AdagradState),
}

STEPS = 3


@functools.cache
def trained(opt_name: str, dtype: str = "float32") -> tuple[Any, Any]:
    """NumPy params and optimizer state after a few real updates (non-trivial values).

    Cached: callers must not modify the arrays."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype(dtype)
    y = rng.integers(0, 3, size=8)
    params = funcnn.init_params(NET, 1, backend="numpy", dtype=dtype)
    opt = OPTIMIZERS[opt_name][0]()
    state = opt.init(params)
    for _ in range(STEPS):
        _, grads = funcnn.value_and_grad(NET, params, x, y)
        params, state = opt.update(params, grads, state)
    return params, state


def x64_enabled() -> bool:
    import jax

    return bool(jax.config.jax_enable_x64)


def assert_identical(got: Any, want: Any, *, backend: str = "numpy", path: str = "tree") -> None:
    """Same container types, same leaf types and dtypes, bit-identical values."""
    if isinstance(want, np.ndarray | np.generic):
        if backend == "jax":
            import jax

            assert isinstance(got, jax.Array), f"{path}: {type(got)} is not a jax array"
        else:
            assert type(got) is type(want), f"{path}: {type(got)} is not {type(want)}"
        assert got.dtype == want.dtype, f"{path}: dtype {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, f"{path}: shape {got.shape} != {want.shape}"
        g, w = np.asarray(got), np.asarray(want)
        assert g.tobytes() == w.tobytes(), f"{path}: values differ"
        assert np.array_equal(g, w, equal_nan=w.dtype.kind in "fc"), f"{path}: values differ"
        return
    assert type(got) is type(want), f"{path}: {type(got).__name__} is not {type(want).__name__}"
    if isinstance(want, bool | int | float):
        assert got == want or (got != got and want != want), f"{path}: {got!r} != {want!r}"
    elif isinstance(want, tuple | list):
        assert len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_identical(g, w, backend=backend, path=f"{path}[{i}]")
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{path}: keys {list(got)} != {list(want)}"
        for k in want:
            assert_identical(got[k], want[k], backend=backend, path=f"{path}[{k!r}]")
    else:
        assert want is None and got is None, f"{path}: unexpected {want!r}"


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_round_trip_numpy(tmp_path, opt_name, dtype):
    params, state = trained(opt_name, dtype)
    path = tmp_path / "ckpt.npz"
    save(path, params, state)
    out = load(path)
    assert type(out) is Checkpoint
    assert type(out.opt_state) is OPTIMIZERS[opt_name][1]
    assert type(out.params) is tuple and all(type(layer) is Dense for layer in out.params)
    assert out.params[0].W.dtype == np.dtype(dtype)
    count = out.opt_state.count  # a NumPy int32 scalar after updates (0-d array after init)
    assert type(count) is type(state.count) and count.shape == () and count.dtype == np.int32
    assert int(count) == STEPS
    assert_identical(out.params, params)
    assert_identical(out.opt_state, state)
    assert out.net is None and out.metadata is None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_round_trip_jax(tmp_path, opt_name, dtype):
    pytest.importorskip("jax")
    params, state = trained(opt_name, dtype)
    path = tmp_path / "ckpt.npz"
    save(path, params, state)
    if dtype == "float64" and not x64_enabled():
        with pytest.raises(ValueError, match="jax_enable_x64") as info:
            load(path, backend="jax")
        assert not isinstance(info.value, CheckpointError)
        return
    out = load(path, backend="jax")
    assert type(out.opt_state) is OPTIMIZERS[opt_name][1]
    assert all(type(layer) is Dense for layer in out.params)
    assert_identical(out.params, params, backend="jax")
    assert_identical(out.opt_state, state, backend="jax")


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_saving_jax_arrays_loads_as_numpy(tmp_path, opt_name):
    pytest.importorskip("jax")
    params, state = trained(opt_name, "float32")
    on_jax = funcnn.to_backend((params, state), "jax")
    save(tmp_path / "ckpt.npz", *on_jax)
    out = load(tmp_path / "ckpt.npz")
    assert_identical(out.params, params)
    # a jax leaf comes back as an array: the NumPy int32 scalar count became a 0-d array
    assert_identical(out.opt_state, funcnn.to_backend(on_jax[1], "numpy"))
    assert_identical(out.opt_state, funcnn.to_backend(state, "numpy"))


def exotic_tree() -> dict[str, Any]:
    """Every supported container and leaf kind, in a non-sorted key order."""
    return {
        "zeta": [Dense(np.arange(6.0).reshape(2, 3), np.array([-0.0, np.nan, np.inf]))],
        "key": funcnn.random.key(7, backend="numpy"),
        "count": np.asarray(5, dtype=np.int32),
        "scalar": np.float32(1.5),
        "u64": np.uint64(2**64 - 1),
        "flags": np.array([True, False]),
        "complex": np.array([1 + 2j, -3j], dtype=np.complex64),
        "big_endian": np.arange(3, dtype=">i2"),
        "empty": (),
        "empty_dict": {},
        "nothing": None,
        "python": (3, 0.1, True, -(2**63)),
        "nested": ((np.zeros((0, 4), np.float32),), [], optim.AdamState(np.int32(1), None, {})),
        "alpha": np.float16(-2.5),
    }


def test_round_trip_of_every_container_and_leaf_kind(tmp_path):
    tree = exotic_tree()
    save(tmp_path / "t.npz", tree, [tree["nested"]])
    out = load(tmp_path / "t.npz")
    assert_identical(out.params, tree)
    assert_identical(out.opt_state, [tree["nested"]])
    assert type(out.params["scalar"]) is np.float32
    assert out.params["key"].dtype == np.uint32 and out.params["key"].shape == (2,)


def test_jax_backend_converts_array_leaves_and_keeps_python_scalars(tmp_path):
    jax = pytest.importorskip("jax")
    tree = {
        "key": funcnn.random.key(3, backend="numpy"),
        "count": np.asarray(2, np.int32),
        "scalar": np.float32(0.25),
        "w": np.array([-0.0, np.nan, 1e-40], np.float32),
        "mask": np.array([True, False]),
        "step": 4,
        "layer": Dense(np.ones(2, np.float32), None),
    }
    save(tmp_path / "t.npz", tree)
    out = load(tmp_path / "t.npz", backend="jax").params
    assert_identical(out, tree, backend="jax")
    assert out["key"].dtype == np.uint32 and isinstance(out["key"], jax.Array)
    assert type(out["step"]) is int
    assert type(out["layer"]) is Dense


def test_net_and_metadata_round_trip(tmp_path):
    params, state = trained("adam")
    net = funcnn.MLP((4, 6, 3), hidden="tanh", dropout=0.25)
    metadata = {
        "epoch": 3,
        "loss": 0.125,
        "history": [1.0, 0.5, -0.0],
        "name": "run-1 \u00e9\u00e8",
        "done": False,
        "nothing": None,
        "nested": {"a": [1, {"b": "c"}], "big": 2**80},
    }
    save(tmp_path / "c.npz", params, state, net=net, metadata=metadata)
    out = load(tmp_path / "c.npz", net=net)
    assert out.net == net and type(out.net) is funcnn.MLP
    assert out.metadata == metadata
    assert str(out.metadata["history"][2]) == "-0.0"
    assert_identical(out.params, params)


def test_path_is_used_exactly_with_or_without_suffix(tmp_path):
    params, _ = trained("sgd")
    save(tmp_path / "ckpt", params)
    save(str(tmp_path / "other.npz"), params)
    save(tmp_path / "third.ckpt", params)
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "other.npz", "third.ckpt"]
    for name in ("ckpt", "other.npz", "third.ckpt"):
        assert_identical(load(tmp_path / name).params, params)
        assert_identical(load(str(tmp_path / name)).params, params)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_permissions_follow_umask_then_existing_file(tmp_path):
    params, _ = trained("sgd")
    path = tmp_path / "ckpt.npz"
    umask = os.umask(0o022)
    os.umask(umask)
    save(path, params)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    save(path, params)
    assert path.stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------- nets


def test_net_mismatch_shows_both_specs(tmp_path):
    params, _ = trained("adam")
    save(tmp_path / "c.npz", params, net=NET)
    other = funcnn.MLP((4, 6, 3), hidden="tanh")
    with pytest.raises(ValueError, match="different net") as info:
        load(tmp_path / "c.npz", net=other)
    message = str(info.value)
    assert repr(NET) in message and repr(other) in message and "c.npz" in message
    assert not isinstance(info.value, CheckpointError)


def test_given_net_is_checked_against_params_when_none_was_saved(tmp_path):
    params, _ = trained("adam")
    save(tmp_path / "c.npz", params)
    assert load(tmp_path / "c.npz", net=NET).net is None
    with pytest.raises(ValueError, match=r"first difference at \[1\]\.W") as info:
        load(tmp_path / "c.npz", net=funcnn.MLP((4, 6, 2), output="softmax"))
    assert "c.npz" in str(info.value)
    with pytest.raises(TypeError, match="funcnn.MLP"):
        load(tmp_path / "c.npz", net="mlp")


def test_save_refuses_params_that_do_not_fit_the_net(tmp_path):
    params, _ = trained("adam")
    with pytest.raises(ValueError, match="first difference"):
        save(tmp_path / "c.npz", params, net=funcnn.MLP((4, 5, 3)))
    with pytest.raises(TypeError, match="funcnn.MLP"):
        save(tmp_path / "c.npz", params, net={"sizes": (4, 6, 3)})
    assert list(tmp_path.iterdir()) == []


L = funcnn.layers


def every_layer_net(**dense) -> funcnn.Net:
    """A net with every layer a checkpoint may name, nested stacks included."""
    return funcnn.Net([
        L.Conv2D(3, (3, 2), stride=1, padding="same", bias=False), L.BatchNorm(momentum=0.75),
        L.Activation("tanh"), L.MaxPool2D(2), L.Residual([L.Conv2D(3, 3, padding="same"),
                                                          L.LayerNorm(eps=1e-3)]),
        L.AvgPool2D(window=(2, 1), stride=(2, 1), drop_remainder=True),
        L.Serial([L.Flatten(), L.Dropout(0.125)]),
        L.Dense(5, activation="relu", dropout=0.25, kernel_init="glorot_uniform", **dense),
        L.Serial([L.BatchNorm(), L.Dense(4)]),
    ], (8, 6, 2), output="sigmoid")


def header_of(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(data["__funcnn__"].tobytes())


def trained_net(net: funcnn.Net, backend: str = "numpy") -> tuple[Any, Any]:
    """Params and a model state moved by a training pass (not the initial values)."""
    params = funcnn.to_backend(funcnn.init_params(net, 3), backend)
    x = np.random.default_rng(1).normal(size=(6, *net.in_shape)).astype(np.float32)
    _, _, state = funcnn.forward(net, params, funcnn.to_backend(x, backend), train=True,
                                 key=2, state=funcnn.init_state(net, backend=backend))
    return params, state


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_a_net_with_every_layer_and_its_model_state_round_trip(tmp_path, backend):
    net = every_layer_net()
    params, state = trained_net(net, backend)
    assert not np.allclose(np.asarray(state[1].mean), 0)
    opt_state = optim.adam(1e-3).init(params)
    save(tmp_path / "net.npz", params, opt_state, net=net, state=state, metadata={"epoch": 1})
    for expected in (None, net):
        out = load(tmp_path / "net.npz", net=expected, backend=backend)
        assert out.net == net and type(out.net) is funcnn.Net and hash(out.net) == hash(net)
        assert type(out.state[1]) is L.BatchNormState
        want = funcnn.to_backend((params, opt_state, state), "numpy")
        assert_identical(funcnn.to_backend((out.params, out.opt_state, out.state), "numpy"),
                         want)
        assert out.metadata == {"epoch": 1}
    header = header_of(tmp_path / "net.npz")
    assert header["version"] == serialization.VERSION == 3
    assert header["net"]["fields"]["layers"][4]["layer"] == "Residual"


def test_files_without_a_net_or_model_state_stay_version_2_and_load_with_an_empty_state(
        tmp_path):
    params, _ = trained("adam")
    save(tmp_path / "mlp.npz", params, net=NET)
    header = header_of(tmp_path / "mlp.npz")
    assert header["version"] == 2 and "sizes" in header["net"]  # as older funcnn wrote them
    # a file written before the model state existed
    rewrite(tmp_path / "mlp.npz", lambda header, members: header.pop("state"))
    out = load(tmp_path / "mlp.npz", net=NET)
    assert out.state == () and out.net == NET


def test_the_model_state_is_checked_against_the_net(tmp_path):
    net = every_layer_net()
    params, state = trained_net(net)
    with pytest.raises(ValueError, match=r"keeps model state.*state="):
        save(tmp_path / "a.npz", params, net=net)
    bad = (*state[:-1], (L.BatchNormState(np.zeros(7, np.float32), np.ones(7, np.float32)),
                         ()))
    with pytest.raises(ValueError, match=r"state does not match.*first difference at \[8\]"):
        save(tmp_path / "a.npz", params, net=net, state=bad)
    assert list(tmp_path.iterdir()) == []
    save(tmp_path / "a.npz", params, state=bad)  # without the net nothing says it is wrong
    with pytest.raises(ValueError, match=r"a.npz.*state does not match"):
        load(tmp_path / "a.npz", net=net)
    save(tmp_path / "b.npz", params, net=net, state=state)
    other = every_layer_net(bias=False)
    with pytest.raises(ValueError, match="different net"):
        load(tmp_path / "b.npz", net=other)


def swish(z):
    return z * funcnn.activations.sigmoid(z)


def swish_grad(z, a):
    s = funcnn.activations.sigmoid(z)
    return s + z * s * (1 - s)


def tiny_init(key, shape, dtype):
    return funcnn.random.normal(key, shape, dtype) * 0.01


def test_custom_pieces_inside_layers_are_saved_by_name_and_need_the_net(tmp_path):
    act = funcnn.activations.Activation("swish", swish, swish_grad)
    net = funcnn.Net([L.Dense(5, activation=act, kernel_init=tiny_init), L.Activation(act),
                      L.Dense(3)], (4,))
    params = funcnn.init_params(net, 0)
    save(tmp_path / "c.npz", params, net=net)
    header = header_of(tmp_path / "c.npz")
    dense = header["net"]["fields"]["layers"][0]["fields"]
    assert dense["activation"] == {"custom": "activation", "name": "swish"}
    assert dense["kernel_init"] == {"custom": "initializer", "name": "tiny_init"}
    with pytest.raises(ValueError, match=r"layers\[0\]\.activation is the custom activation "
                                         r"'swish'.*funcnn.load\(path, net=funcnn.Net"):
        load(tmp_path / "c.npz")
    out = load(tmp_path / "c.npz", net=net)
    assert out.net == net and out.net.layers[1].activation is act
    assert out.net.layers[0].kernel_init is tiny_init
    assert_identical(out.params, params)


def test_save_refuses_a_layer_class_a_checkpoint_cannot_name(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Twice(L.Activation):
        pass

    net = funcnn.Net([L.Dense(3), Twice("relu"), L.Dense(2)], (4,))
    with pytest.raises(TypeError, match=r"net.layers\[1\] is a .*Twice, a layer a checkpoint "
                                        "cannot describe.*without net="):
        save(tmp_path / "c.npz", funcnn.init_params(net, 0), net=net)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- what save refuses


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ((Dense(np.zeros(2), {1, 2}),), r"params\[0\]\.b is a set"),
        ({"w": "text"}, r"params\['w'\] is a str"),
        ([np.array(["a", None], dtype=object)], r"params\[0\] has dtype object"),
        ([np.array(["abc"])], r"params\[0\] has dtype <U3"),
        ({1: np.zeros(2)}, r"params has the key 1 of type int"),
        ([2**70], r"params\[0\] has an int too large"),
        (np.zeros(2).view(np.recarray), None),
    ],
)
def test_save_rejects_unsupported_leaves(tmp_path, params, fragment):
    if fragment is None:  # an ndarray subclass is stored as a plain array
        save(tmp_path / "c.npz", params)
        assert type(load(tmp_path / "c.npz").params) is np.ndarray
        return
    with pytest.raises(TypeError, match=fragment):
        save(tmp_path / "c.npz", params)
    assert list(tmp_path.iterdir()) == []


class Plain(tuple):
    """A tuple subclass that is not a NamedTuple: its type could not be rebuilt."""


def test_save_rejects_container_subclasses(tmp_path):
    from collections import OrderedDict

    for tree in (Plain((np.zeros(1),)), OrderedDict(a=np.zeros(1))):
        with pytest.raises(TypeError, match="checkpoint leaves must be"):
            save(tmp_path / "c.npz", tree)


def test_saving_a_tracer_is_a_type_error(tmp_path):
    jax = pytest.importorskip("jax")

    def f(x):
        save(tmp_path / "c.npz", (x,))
        return x

    with pytest.raises(TypeError, match=r"params\[0\] is a jax value"):
        jax.jit(f)(jax.numpy.ones(2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ({"lr": np.float32(0.1)}, r"metadata\['lr'\] is a float32.*\.item\(\)"),
        ({"sizes": (1, 2)}, r"metadata\['sizes'\] is a tuple.*use a list"),
        ({"a": {"b": [1, object()]}}, r"metadata\['a'\]\['b'\]\[1\] is a object"),
        ({"w": np.zeros(2)}, r"metadata\['w'\] is a ndarray.*tolist"),
        ({1: "x"}, r"metadata has the key 1 of type int"),
        (["epoch", 1], r"metadata must be a dict or None; got list"),
    ],
)
def test_save_rejects_metadata_that_is_not_json(tmp_path, metadata, fragment):
    params, _ = trained("sgd")
    with pytest.raises(TypeError, match=fragment):
        save(tmp_path / "c.npz", params, metadata=metadata)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- NamedTuple registration


class EMAState(NamedTuple):
    count: Any
    ema: Any


@pytest.fixture
def empty_registry(monkeypatch):
    monkeypatch.setattr(serialization, "_registry", {})


def test_unregistered_namedtuple_is_refused_until_registered(tmp_path, empty_registry):
    state = EMAState(np.asarray(2, np.int32), (np.ones(3, np.float32),))
    path = tmp_path / "c.npz"
    save(path, trained("sgd")[0], state)
    with pytest.raises(CheckpointError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{EMAState.__module__}:EMAState" in message
    assert "funcnn.checkpoint.register(EMAState)" in message
    assert register(EMAState) is EMAState
    out = load(path)
    assert type(out.opt_state) is EMAState
    assert_identical(out.opt_state, state)


def test_register_works_as_decorator_and_rejects_non_namedtuples(empty_registry):
    @register
    class Local(NamedTuple):
        x: Any

    assert Local._fields == ("x",)
    for bad in (tuple, dict, Dense(1, 2), "funcnn.mlp:Dense", Plain):
        with pytest.raises(TypeError, match="NamedTuple class"):
            register(bad)


def test_a_registered_class_whose_fields_changed_is_refused(tmp_path, empty_registry):
    register(EMAState)
    save(tmp_path / "c.npz", EMAState(np.zeros(1), np.zeros(1)))

    class Renamed(NamedTuple):
        count: Any
        average: Any

    Renamed.__module__, Renamed.__qualname__ = EMAState.__module__, EMAState.__qualname__
    register(Renamed)
    with pytest.raises(CheckpointError, match=r"fields \['count', 'ema'\].*\['count', 'average'\]"):
        load(tmp_path / "c.npz")


def test_a_field_added_with_a_default_loads_older_files_and_no_other_change_does(
        tmp_path, empty_registry):
    register(EMAState)
    save(tmp_path / "c.npz", EMAState(np.zeros(1), np.ones(1)))

    def grown(**defaults):
        fields = [("count", Any), ("ema", Any), ("debias", Any)]
        cls = NamedTuple("EMAState", fields)
        cls.__new__.__defaults__ = tuple(defaults.values()) or None
        cls._field_defaults = defaults
        cls.__module__, cls.__qualname__ = EMAState.__module__, EMAState.__qualname__
        return register(cls)

    cls = grown(debias=True)  # a field added later, with a default: older files still load
    got = load(tmp_path / "c.npz").params
    assert type(got) is cls and got.debias is True
    assert_identical(tuple(got[:2]), (np.zeros(1), np.ones(1)))
    grown()  # without a default an older file cannot say what it holds
    with pytest.raises(CheckpointError, match=r"fields \['count', 'ema'\].*'debias'\]"):
        load(tmp_path / "c.npz")
    save(tmp_path / "d.npz", cls(np.zeros(1), np.ones(1), np.zeros(1)))
    register(EMAState)  # and a file never holds more fields than the class
    with pytest.raises(CheckpointError, match=r"fields \['count', 'ema', 'debias'\]"):
        load(tmp_path / "d.npz")


# ---------------------------------------------------------------- damaged and foreign files


def good_checkpoint(path: Path) -> Checkpoint:
    params, state = trained("adam")
    save(path, params, state, net=NET, metadata={"epoch": 1})
    return Checkpoint(params, state, NET, {"epoch": 1})


def rewrite(path: Path, edit) -> None:
    """Apply ``edit(header, members)`` to a checkpoint's raw contents and write it back."""
    with np.load(path, allow_pickle=False) as data:
        members = {name: data[name] for name in data.files}
    original = members["__funcnn__"]
    header = json.loads(original.tobytes())
    edit(header, members)
    if members["__funcnn__"] is original:
        members["__funcnn__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **members)


def _set(key, value):
    def edit(header, members):
        header[key] = value

    return edit


def _set_class(name):
    def edit(header, members):
        header["opt_state"]["class"] = name

    return edit


def _members(fn):
    def edit(header, members):
        fn(members)

    return edit


def _leaf(index, **changes):
    def edit(header, members):
        header["params"]["children"][0]["children"][index].update(changes)

    return edit


FORGERIES = {
    # forged class names (never imported): tests/test_file_safety.py
    "malformed class name": (_set_class(["funcnn.optim", "AdamState"]), "invalid class name"),
    "changed fields": (
        lambda h, m: h["opt_state"].update(fields=["count", "m", "v"]),
        r"now has fields \['count', 'mu', 'nu'\]",
    ),
    "missing array": (_members(lambda m: m.pop("params/0")), "not in the archive"),
    "extra array": (
        _members(lambda m: m.update(extra=np.zeros(1))), "does not describe: \\['extra'\\]"
    ),
    "dtype mismatch": (
        _members(lambda m: m.update({"params/0": m["params/0"].astype(np.float64)})),
        r"header says params\[0\]\.W is '<f4'",
    ),
    "shape mismatch": (
        _members(lambda m: m.update({"params/0": m["params/0"][:2]})), "of shape",
    ),
    "string member": (
        _members(lambda m: m.update({"params/0": np.array(["x"])})), "not a numeric array",
    ),
    "object member": (
        _members(lambda m: m.update({"params/0": np.array([None, 1], dtype=object)})),
        "holds Python objects",
    ),
    "key used twice": (_leaf(1, key="params/0", shape=[4, 6]), "another leaf uses"),
    "unknown node": (_leaf(0, node="set"), "unknown node type 'set'"),
    "newer version": (_set("version", 99), "format version 99 is newer"),
    "bad version": (_set("version", "1"), "invalid format version"),
    "other format": (_set("format", "something.else"), "not a funcnn checkpoint header"),
    "missing entry": (lambda h, m: h.pop("metadata"), r"lacks the entries \['metadata'\]"),
    "header not a dict": (
        _members(lambda m: m.update(__funcnn__=np.frombuffer(b"[1, 2]", np.uint8))),
        "not a funcnn checkpoint header",
    ),
    "header not json": (
        _members(lambda m: m.update(__funcnn__=np.frombuffer(b"{\"format\": ", np.uint8))),
        "not valid JSON",
    ),
    "header not utf-8": (
        _members(lambda m: m.update(__funcnn__=np.frombuffer(b"\xff\xfe", np.uint8))),
        "not valid JSON",
    ),
    "header wrong dtype": (
        _members(lambda m: m.update(__funcnn__=m["__funcnn__"].astype(np.int32))),
        "not a 1-d uint8 array",
    ),
    "invalid net": (_set("net", {"sizes": [4]}), "saved net spec"),
    "net not a dict": (_set("net", [4, 6, 3]), "net spec is not a dict"),
    "net does not fit": (
        _set("net", {"sizes": [4, 7, 3]}), "params do not fit the saved net",
    ),
    "metadata not a dict": (_set("metadata", [1]), "metadata is not a dict"),
    "malformed dict keys": (
        lambda h, m: h.update(params={"node": "dict", "keys": [1], "children": [
            {"node": "none"}]}),
        "malformed dict keys",
    ),
    "malformed node": (
        lambda h, m: h.update(params={"node": "tuple", "children": 3}), "malformed node",
    ),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_header_that_does_not_match_the_arrays_is_refused(tmp_path, empty_registry, name):
    edit, fragment = FORGERIES[name]
    path = tmp_path / "forged.npz"
    good_checkpoint(path)
    rewrite(path, edit)
    with pytest.raises(CheckpointError, match=fragment) as info:
        load(path)
    assert str(info.value).startswith(f"cannot load checkpoint {str(path)!r}: ")


def _replace_member(path: Path, name: str, raw: bytes) -> None:
    """Rewrite the archive at ``path`` with the member ``name`` replaced by the bytes ``raw``."""
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    members[name] = raw
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)


def _npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize("where", ["member only", "member and header"])
def test_a_crafted_huge_size_is_refused_before_anything_is_allocated(tmp_path, where):
    # params/0 (W of shape (4, 6)) claims 2**40 float32 (4 TiB) but holds its 96 bytes
    path = tmp_path / "huge.npz"
    good_checkpoint(path)
    with zipfile.ZipFile(path) as zf:
        data = zf.read("params/0.npy")[-96:]
    if where == "member and header":
        rewrite(path, _leaf(0, shape=[2**40]))
    _replace_member(path, "params/0.npy", _npy_header((2**40,)) + data)
    with pytest.raises(CheckpointError, match=r"promises shape \(1099511627776,\)") as info:
        load(path)
    assert str(info.value).startswith(f"cannot load checkpoint {str(path)!r}: ")
    assert "'params/0'" in str(info.value)


def test_a_directory_entry_bigger_than_the_file_is_refused(tmp_path):
    path = tmp_path / "dir.npz"
    good_checkpoint(path)
    raw = bytearray(path.read_bytes())
    entry = raw.index(b"PK\x01\x02")  # the first central directory entry
    raw[entry + 20:entry + 28] = (2**31 - 1).to_bytes(4, "little") * 2  # both of its sizes
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="a size .* that the file does not hold"):
        load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load(path)


@pytest.mark.parametrize(
    ("writer", "fragment"),
    [
        (lambda f: f.write(b"not a checkpoint at all\n"), "not an .npz archive"),
        (lambda f: None, "not an .npz archive"),
        (lambda f: np.save(f, np.arange(3)), "single .npy array"),
        (lambda f: np.savez(f, weights=np.arange(3)), "without the funcnn header"),
        (lambda f: f.write(b"PK\x05\x06" + bytes(18)), "without the funcnn header"),
        (lambda f: zipfile.ZipFile(f, "w").writestr("__funcnn__.npy", b"{}"),
         "'__funcnn__' is not a .npy array"),
    ],
)
def test_foreign_files_are_refused(tmp_path, writer, fragment):
    path = tmp_path / "foreign.npz"
    with open(path, "wb") as f:
        writer(f)
    with pytest.raises(CheckpointError, match=fragment) as info:
        load(path)
    assert str(path) in str(info.value)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Checkpoint, bytes]:
    """A good checkpoint and its bytes (module scoped, so hypothesis examples share it)."""
    path = tmp_path_factory.mktemp("good") / "good.npz"
    return good_checkpoint(path), path.read_bytes()


def test_truncation_inside_each_member_is_refused(tmp_path, good):
    data = good[1]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    cuts = {0, 1, len(data) - 1, len(data) - 22}
    for info in infos:  # inside the local header, the npy header and the data of each member
        cuts |= {info.header_offset + 5, info.header_offset + 40,
                 info.header_offset + info.compress_size // 2}
    assert any(info.filename == "__funcnn__.npy" for info in infos)
    path = tmp_path / "cut.npz"
    for cut in sorted(cuts):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            load(path)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_truncation_is_refused(tmp_path, good, data):
    whole = good[1]
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    path = tmp_path / "cut.npz"
    path.write_bytes(whole[:cut])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load(path)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_flipped_byte_is_refused_or_harmless(tmp_path, good, data):
    """Zip CRCs and the header's dtypes and shapes catch damage; never different data."""
    want, damaged = good[0], bytearray(good[1])
    at = data.draw(st.integers(0, len(damaged) - 1), label="at")
    damaged[at] ^= data.draw(st.integers(1, 255), label="xor")
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(damaged))
    try:
        got = load(path)
    except CheckpointError as err:
        assert str(path) in str(err)
    else:
        assert_identical(got.params, want.params)
        assert_identical(got.opt_state, want.opt_state)
        assert got.net == want.net and got.metadata == want.metadata


# ---------------------------------------------------------------- atomic writes


class Boom(Exception):
    pass


def _partial_then(exc):
    def writer(f, *args):
        f.write(b"PK\x03\x04 half of an archive")
        raise exc

    return writer


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize(
    ("target", "replacement", "exc_type"),
    [
        ("write_npz", _partial_then(OSError(errno.ENOSPC, "No space left")), OSError),
        ("write_npz", _partial_then(KeyboardInterrupt()), KeyboardInterrupt),
        ("fsync", _raise(OSError(errno.EIO, "I/O error")), OSError),
        ("replace", _raise(Boom("rename failed")), Boom),
    ],
)
def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, target, replacement,
                                                   exc_type):
    path = tmp_path / "ckpt.npz"
    old = good_checkpoint(path)
    before = path.read_bytes()
    owner = serialization if target == "write_npz" else _files.os
    monkeypatch.setattr(owner, target, replacement)
    new_params = funcnn.to_backend(old.params, "numpy", dtype="float64")
    with pytest.raises(exc_type):
        save(path, new_params, metadata={"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert load(path).metadata == {"epoch": 1}


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(serialization, "write_npz", _partial_then(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError, match="full"):
        save(tmp_path / "ckpt.npz", trained("sgd")[0])
    assert list(tmp_path.iterdir()) == []


def _unwritable_paths(tmp_path: Path) -> dict[str, Path]:
    """Checkpoint paths that cannot be written, even by root: a missing folder, a file
    standing where the folder should be, and a folder in the way of the file."""
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_folder").mkdir()
    return {"missing folder": tmp_path / "no" / "such" / "ckpt.npz",
            "under a file": tmp_path / "a_file" / "ckpt.npz",
            "a folder": tmp_path / "a_folder"}


WRITERS = {
    "save": lambda path: save(path, trained("sgd")[0]),
    "write_idx": lambda path: funcnn.data.idx.write_idx(path, np.zeros((2, 2), np.uint8)),
    "check_writable": _files.check_writable,
}


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("case", ["missing folder", "under a file", "a folder"])
def test_a_path_that_cannot_be_written_is_named_in_the_error(tmp_path, writer, case):
    path = _unwritable_paths(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(OSError) as info:
        WRITERS[writer](path)
    message = str(info.value)
    assert info.value.filename == str(path), message
    assert ".tmp" not in message  # the path the caller gave, never the temporary file
    if case != "a folder":
        assert f"the folder {str(path.parent)!r}" in message
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing left behind


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_read_only_folder_is_refused_unless_the_user_may_write_anyway(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        # root (as in CI) may write into a 0o500 folder; then writing must simply work
        try:
            (folder / "probe").write_bytes(b"")
        except PermissionError:
            writable = False
        else:
            writable = True
            (folder / "probe").unlink()
        path = folder / "ckpt.npz"
        for writer in WRITERS.values():
            if writable:
                writer(path)
                assert path.exists() or writer is _files.check_writable
            else:
                with pytest.raises(PermissionError) as info:
                    writer(path)
                assert info.value.filename == str(path)
                assert "cannot create files in the folder" in str(info.value)
        assert sorted(p.name for p in folder.iterdir()) == (["ckpt.npz"] if writable else [])
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_permission_error_names_the_path_not_the_temporary_file(tmp_path, monkeypatch,
                                                                  writer):
    # what a read-only folder gives a user who is not root, whoever runs the test
    def refuse(*, prefix, suffix, dir):
        raise PermissionError(errno.EACCES, "Permission denied",
                              os.path.join(dir, f"{prefix}x1y2z3{suffix}"))

    monkeypatch.setattr(_files.tempfile, "mkstemp", refuse)
    path = tmp_path / "ckpt.npz"
    with pytest.raises(PermissionError) as info:
        WRITERS[writer](path)
    assert info.value.filename == str(path)
    assert "x1y2z3" not in str(info.value)
    assert f"cannot create files in the folder {str(tmp_path)!r}" in str(info.value)


CHILD = """
import sys
import numpy as np
from funcnn.checkpoint import save

path, n = sys.argv[1], int(sys.argv[2])
i = 0
while True:
    save(path, (np.full(n, i, dtype=np.float64),), metadata={"version": i})
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow
@pytest.mark.parametrize("wait_for_first_save", [False, True])
def test_a_killed_writer_leaves_a_loadable_checkpoint(tmp_path, wait_for_first_save):
    n = 500_000
    path = tmp_path / "ckpt.npz"
    save(path, (np.full(n, -1.0),), metadata={"version": -1})
    root = str(Path(funcnn.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(n)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        if wait_for_first_save:
            assert proc.stdout.readline().strip() == "0", proc.stderr.read()
            time.sleep(0.05)
        else:
            time.sleep(0.4)
    finally:
        proc.kill()
        out, err = proc.communicate()
    done = [int(line) for line in out.split()]
    if wait_for_first_save:
        done.insert(0, 0)
    last = done[-1] if done else -1

    got = load(path)
    version = got.metadata["version"]
    # the last completed save, or the one in flight if its rename happened before the kill
    assert last <= version <= last + 1, (version, done, err)
    assert_identical(got.params, (np.full(n, float(version)),))
    strays = [p.name for p in tmp_path.iterdir() if p.name != "ckpt.npz"]
    assert all(s.startswith(".ckpt.npz.") and s.endswith(".tmp") for s in strays), strays
