"""The two test tiers: every test (``python -m pytest``, what CI runs) and the quick tier
(``python -m pytest -m "not slow" -n 2``, under two minutes on a quiet 2-core CPU).

A test leaves the quick tier in one of three ways, all of which CI still runs:

* ``@pytest.mark.slow`` on the test: it starts subprocesses, trains on MNIST, runs several
  processes or takes more than about two seconds.
* :func:`sample_quick` in a ``parametrize`` list: rows ``0, every, 2 * every, ...`` stay quick.
* :data:`QUICK_COVER`: of a parametrized matrix (``backend`` included), the quick tier keeps a
  covering sample, every value of every parameter at least once (every layer case, every
  optimizer, every activation and loss, both backends), chosen by :func:`covering_sample`.
  :data:`COVER_BY` says what counts as one value where it is not the parameter itself.
* :data:`QUICK_ON_NUMPY`: the quick tier keeps the NumPy cases (the jax ones compile).
* :data:`QUICK_EVERY`: of a list of like cases, the quick tier keeps every n-th.

The last two are tables here rather than marks in the test files, so that the tiers can be
read in one place; ``python -m pytest --collect-only -q -m "not slow"`` lists the quick tier.

:func:`tier_gaps` guards the quick tier from emptying silently: every test module keeps a test
in it and the tier keeps at least :data:`QUICK_FLOOR` tests. ``tests/conftest.py`` applies
both to each run over the whole suite.
"""

from __future__ import annotations

from collections import Counter

import pytest

__all__ = ["COVER_BY", "QUICK_COVER", "QUICK_EVERY", "QUICK_FLOOR", "QUICK_ON_NUMPY",
           "WHOLLY_SLOW", "covering_sample", "quick_cases", "sample_quick", "sampled_tests",
           "tier_gaps"]

# test (file::function): why one value of each parameter in the quick tier is enough
QUICK_COVER = {
    "test_layers.py::test_backward_equals_jax_grad":
        "every layer type, in training and in evaluation, and both backends once",
    "test_layers.py::test_float32_stays_float32": "every layer type once, backends alternate",
    "test_layers.py::test_conv_forward_is_lax_conv_general_dilated": "every conv once",
    "test_layers.py::test_pooling_forward_is_lax_reduce_window": "every window once",
    "test_per_example.py::test_per_example_grads_match_vmap_grad":
        "every activation, loss pair, depth, dropout setting and backend once",
    "test_optim.py::test_optimizer_contract": "every optimizer once, modes alternate",
    "test_grads.py::test_backprop_matches_jax_grad":
        "every loss pair, activation, depth and dropout rate once",
    "test_validation.py::test_numpy_params_with_jax_grads_or_state_are_refused":
        "each foreign tree and each update once",
    "test_optim.py::test_clip_by_global_norm_of_gradients_whose_squares_overflow":
        "overflow and underflow once, numpy, jax, jax under jit once",
    "test_optim.py::test_adam_matches_the_textbook_formula": "each backend and setting once",
    "test_mlp.py::test_dropout_is_inverted_and_preserves_the_mean": "each backend and rate once",
    "test_train.py::test_a_diverged_fit_hands_the_last_finite_state":
        "each backend and each place of the blow-up once",
}

# What a covering sample counts as one value, where it is not the parameter itself.
COVER_BY = {
    "test_layers.py::test_backward_equals_jax_grad": {
        "case": lambda case: (type(case[0]).__name__, case[2]),  # (layer type, train)
    },
}

# test (file::function): the quick tier runs its NumPy cases only; why the jax ones are slow
QUICK_ON_NUMPY = {
    "test_train.py::test_dp_on_a_padded_short_batch_equals_dp_on_the_short_batch":
        "eager DP-SGD on jax dispatches op by op for seconds",
    "test_train.py::test_fit_is_deterministic_in_the_key": "compiles two fits",
    "test_per_example.py::test_dp_grad_is_the_clipped_gradient_of_its_rows":
        "eager DP-SGD on jax",
    "test_per_example.py::test_norms_and_clipping_of_gradients_whose_squares_overflow_or_underflow":
        "compiles the norms at two depths, eagerly and under jit",
    "test_optim.py::test_clip_by_global_norm": "compiles each clipping step",
    "test_custom.py::test_custom_pieces_everywhere_on_both_backends":
        "compiles a fit, a step and the checks with custom pieces",
}

# test (file::function): of its quick cases, the quick tier keeps the 1st, (n+1)-th, ...
QUICK_EVERY = {
    "test_validation.py::test_under_jit_a_label_out_of_range_gives_a_nan_loss_and_nan_gradients":
        3,  # a label below and one above the range
    "test_docs.py::test_output_and_loss_formula": 2,
    "test_layers.py::test_layer_formula": 6,
    "test_layers.py::test_check_layer_catches_the_planted_bugs": 2,
    "test_per_example.py::test_per_example_grads_match_vmap_grad_under_jit": 2,
    "test_jax_boundary.py::test_fit_and_evaluate_on_jax_take_labels_of_any_integer_width": 3,
    "test_examples.py::test_mnist_example_prints_each_epoch_as_it_ends": 2,
}

# The quick tier holds at least this many tests (about 2,050 when the floor was set).
QUICK_FLOOR = 1500

# Test modules with no test in the quick tier, and why.
WHOLLY_SLOW = {
    "test_compilation_cache.py": "each test starts fresh Python processes",
    "test_site.py": "builds the whole documentation site with mkdocs",
}


def sample_quick(rows: list, every: int, ids: list | None = None) -> list:
    """``rows`` as ``pytest.param``s: rows ``0, every, 2 * every, ...`` quick, the others slow."""
    ids = ids or [None] * len(rows)
    return [
        pytest.param(*(row if isinstance(row, tuple) else (row,)), id=name,
                     marks=() if i % every == 0 else pytest.mark.slow)
        for i, (row, name) in enumerate(zip(rows, ids, strict=True))
    ]


def _values(params: dict, indices: dict, by: dict) -> set:
    """The ``(argname, value)`` pairs of one parametrized case (the index if unhashable)."""
    out = set()
    for name, value in params.items():
        value = by[name](value) if name in by else value
        try:
            hash(value)
        except TypeError:
            value = ("#", indices.get(name))
        out.add((name, value))
    return out


def covering_sample(cases: list[tuple[dict, dict]], by: dict | None = None) -> list[int]:
    """Positions of a small sample of ``cases`` in which every value of every parameter occurs.

    ``cases`` are ``(params, indices)`` pairs (a pytest callspec's); ``by`` maps a parameter's
    name to a function giving what counts as its value (the value itself otherwise). Greedy:
    each pick is the case with the most values not yet picked, ties going to the case whose
    values were picked least often, then to the earlier case; so two parameters of 9 and 2
    values give 9 cases, the 2 values taking turns.
    """
    values = [_values(params, indices, by or {}) for params, indices in cases]
    seen: Counter = Counter()
    picked: list[int] = []
    while True:
        unseen = set().union(*values) - set(seen) if values else set()
        if not unseen:
            return sorted(picked)
        best = min((i for i in range(len(cases)) if i not in picked),
                   key=lambda i: (-len(values[i] & unseen), sum(seen[v] for v in values[i]), i))
        picked.append(best)
        seen.update(values[best])


def quick_cases(name: str, cases: list[tuple[dict, dict]]) -> list[int]:
    """Positions of the cases of test ``name`` (``file::function``) that the quick tier keeps.

    ``cases`` are the ``(params, indices)`` of its cases not marked slow otherwise, in order.
    """
    keep = range(len(cases))
    if name in QUICK_ON_NUMPY:
        keep = [i for i in keep if cases[i][0].get("backend", "numpy") == "numpy"]
    if name in QUICK_COVER:
        keep = [keep[i] for i in covering_sample([cases[i] for i in keep], COVER_BY.get(name))]
    if name in QUICK_EVERY:
        keep = keep[::QUICK_EVERY[name]]
    return list(keep)


def sampled_tests() -> set[str]:
    """Every ``file::function`` that :func:`quick_cases` samples."""
    return {*QUICK_COVER, *QUICK_ON_NUMPY, *QUICK_EVERY}


def tier_gaps(all_tests: dict[str, int], quick_tests: dict[str, int], floor: int = QUICK_FLOOR,
              wholly_slow: dict | None = None) -> list[str]:
    """What is wrong with a quick tier: modules without a quick test, too few quick tests.

    ``all_tests`` and ``quick_tests`` count the tests of each module (file name) in the whole
    suite and in the quick tier; an empty list means the tier is sound.
    """
    wholly_slow = WHOLLY_SLOW if wholly_slow is None else wholly_slow
    gaps = [f"{module} has no test in the quick tier: leave one of its contract tests unmarked, "
            f"or name the module in tests/_tiers.py WHOLLY_SLOW with the reason"
            for module in sorted(all_tests)
            if not quick_tests.get(module) and module not in wholly_slow]
    gaps += [f"{module} is in WHOLLY_SLOW but has quick tests now: take it out"
             for module in sorted(wholly_slow) if quick_tests.get(module)]
    total = sum(quick_tests.values())
    if total < floor:
        gaps.append(f"the quick tier has {total} tests, fewer than the floor of {floor} "
                    f"(tests/_tiers.py QUICK_FLOOR): were tests marked slow by mistake?")
    return gaps
