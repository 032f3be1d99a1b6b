"""YAML read with bounded work: aliases that expand without end are refused, shared ones load."""

from __future__ import annotations

import pytest
import yaml

from tileseg.yaml_bounds import YAMLBoundError, expanded_size, load_bounded


def bomb(levels: int, width: int = 9) -> str:
    """Each anchor a list of ``width`` aliases of the one before: width**levels values."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * width)}]" for n in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_shared_defaults_load_as_with_safe_load() -> None:
    text = ("defaults: &d {model: m, bands: [4, 3, 2]}\n"
            "scenes:\n" + "".join(f"  - {{<<: *d, src: s{i}.tif}}\n" for i in range(300)))
    assert load_bounded(text) == yaml.safe_load(text)


def test_an_alias_bomb_is_refused_without_expanding_it() -> None:
    # 9**12 (282 billion) values: only counting them without expansion can answer at all
    with pytest.raises(YAMLBoundError, match="add more than 1,000,000 values"):
        load_bounded(bomb(12))
    assert load_bounded(bomb(4))["l3"][0][0][0][0] == "lol"  # 6,561 values: fine


def test_the_expanded_size_is_exact() -> None:
    node = yaml.compose(bomb(3, width=2))  # l0 (3 nodes), l1 (7), l2 (15), 3 keys, 1 root
    assert expanded_size(node, max_expansion=100) == 1 + 3 + 3 + 7 + 15


@pytest.mark.parametrize(("text", "match"), [
    ("a: &a [*a]\n", "contains it"),
    ("a: &a {b: [1, *a]}\n", "contains it"),
    ("a: " + "[" * 200 + "]" * 200 + "\n", "nested more than 64 levels"),
])
def test_recursive_and_deep_documents_are_one_line_errors(text: str, match: str) -> None:
    with pytest.raises(YAMLBoundError, match=match) as info:
        load_bounded(text)
    assert "\n" not in str(info.value)


def test_syntax_errors_stay_yaml_errors() -> None:
    with pytest.raises(yaml.YAMLError):
        load_bounded("a: [unclosed\n")
    assert load_bounded("") is None
