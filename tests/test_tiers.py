"""The quick tier's rules (tests/_tiers.py): the samples cover every value, and the guard that
``tests/conftest.py`` applies to every run over the whole suite catches an emptied tier."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from _tiers import (
    QUICK_EVERY,
    QUICK_ON_NUMPY,
    WHOLLY_SLOW,
    covering_sample,
    quick_cases,
    sample_quick,
    sampled_tests,
    tier_gaps,
)


def product_cases(**values: list) -> list[tuple[dict, dict]]:
    """The ``(params, indices)`` of every combination, as pytest's callspecs hold them."""
    names = list(values)
    return [({n: values[n][i] for n, i in zip(names, combo, strict=True)},
             dict(zip(names, combo, strict=True)))
            for combo in itertools.product(*(range(len(values[n])) for n in names))]


@pytest.mark.parametrize("sizes", [(9, 2), (2, 9), (20, 3), (5, 4, 2), (1, 1), (7,)])
def test_a_covering_sample_holds_every_value_in_as_few_cases_as_the_largest_parameter(sizes):
    values = {f"p{k}": [f"v{k}.{j}" for j in range(n)] for k, n in enumerate(sizes)}
    cases = product_cases(**values)
    keep = covering_sample(cases)
    assert keep == sorted(set(keep))
    for name, vals in values.items():
        assert {cases[i][0][name] for i in keep} == set(vals), name
    assert len(keep) == max(sizes)
    # the values of a smaller parameter take turns: none is picked twice before another once
    for name, vals in values.items():
        counts = [sum(cases[i][0][name] == v for i in keep) for v in vals]
        assert max(counts) - min(counts) <= 1, (name, counts)


def test_unhashable_values_are_told_apart_by_their_index():
    cases = product_cases(tree=[[1, 2], [3]], backend=["numpy", "jax"])
    keep = covering_sample(cases)
    assert sorted(cases[i][1]["tree"] for i in keep) == [0, 1]
    assert {cases[i][0]["backend"] for i in keep} == {"numpy", "jax"}


def test_what_counts_as_one_value_can_be_a_function_of_the_parameter():
    cases = product_cases(case=[("conv", 1), ("conv", 2), ("pool", 1)], backend=["numpy", "jax"])
    keep = covering_sample(cases, {"case": lambda case: case[0]})
    assert sorted({cases[i][0]["case"][0] for i in keep}) == ["conv", "pool"]
    assert {cases[i][0]["backend"] for i in keep} == {"numpy", "jax"} and len(keep) == 2


def test_a_test_on_numpy_only_keeps_its_numpy_cases_in_the_quick_tier():
    name = sorted(QUICK_ON_NUMPY)[0]
    cases = product_cases(backend=["numpy", "jax"], rows=["all", "some"])
    keep = quick_cases(name, cases)
    assert keep and all(cases[i][0]["backend"] == "numpy" for i in keep)
    assert quick_cases("test_x.py::test_not_sampled", cases) == [0, 1, 2, 3]


def test_an_empty_matrix_gives_an_empty_sample():
    assert covering_sample([]) == []


def test_sample_quick_marks_all_but_every_nth_row_slow():
    rows = sample_quick([(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")], 2)
    slow = [any(m.name == "slow" for m in row.marks) for row in rows]
    assert slow == [False, True, False, True, False]
    assert [row.values for row in rows][1] == (2, "b")


def test_the_guard_names_a_module_without_quick_tests_and_a_tier_below_its_floor():
    every = {"test_a.py": 5, "test_b.py": 3, "test_c.py": 2}
    assert tier_gaps(every, {"test_a.py": 2, "test_b.py": 1, "test_c.py": 1}, floor=4,
                     wholly_slow={}) == []
    gaps = tier_gaps(every, {"test_a.py": 2, "test_c.py": 1}, floor=4, wholly_slow={})
    assert len(gaps) == 2
    assert gaps[0].startswith("test_b.py has no test in the quick tier")
    assert "3 tests, fewer than the floor of 4" in gaps[1]
    # a module that is slow by design is named with its reason, and only while it is
    assert tier_gaps(every, {"test_a.py": 4, "test_c.py": 1}, floor=4,
                     wholly_slow={"test_b.py": "subprocesses"}) == []
    gaps = tier_gaps(every, {"test_a.py": 4, "test_b.py": 1, "test_c.py": 1}, floor=4,
                     wholly_slow={"test_b.py": "subprocesses"})
    assert gaps == ["test_b.py is in WHOLLY_SLOW but has quick tests now: take it out"]


def test_the_tables_name_test_modules_that_exist():
    here = Path(__file__).resolve().parent
    for name in [*sampled_tests(), *WHOLLY_SLOW]:
        module = name.split("::")[0]
        assert (here / module).is_file(), name
        if "::" in name:
            assert f"def {name.split('::')[1]}(" in (here / module).read_text(), name
    assert all(isinstance(n, int) and n >= 2 for n in QUICK_EVERY.values())
