"""Property tests: no input, however broken, makes the loader crash instead of reporting."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afspawner.facility import Facility
from afspawner.loader import FacilityError, load_facility, parse_facility_text
from unit.test_loader import BASE

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["8Gi", "500m", "cms", "t4", "/cvmfs", "{username}", "nvidia.com/gpu"]),
)
junk = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(
                st.text(max_size=10),
                st.integers(),
                st.sampled_from(
                    [
                        "vos",
                        "flavors",
                        "gpu_classes",
                        "volumes",
                        "name",
                        "image",
                        "cpu",
                        "memory",
                        "type",
                        "mount",
                        "quota",
                        "gpus",
                        "class",
                    ]
                ),
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


def _outcome(data: object) -> None:
    try:
        result = load_facility(data)
    except FacilityError as exc:
        assert exc.issues, "an error must say what is wrong"
        for issue in exc.issues:
            assert issue.message
        return
    assert isinstance(result, Facility)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(junk)
def test_arbitrary_data_never_crashes(data: object) -> None:
    _outcome(data)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(BASE)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), junk)
def test_one_corrupted_key_never_crashes(path: tuple[Any, ...], value: object) -> None:
    data = copy.deepcopy(BASE)
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    _outcome(data)


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes(text: str) -> None:
    with contextlib.suppress(FacilityError):
        parse_facility_text(text)
