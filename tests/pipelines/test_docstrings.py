"""The pipelines' docstrings, as diffusers writes them: every ``__call__`` argument documented with its
type and its real default, an Examples block that runs where it can (the bundled demo model) and names
only real arguments where it cannot (the released weights are not available offline)."""

from __future__ import annotations

import ast
import doctest
import inspect
import re

import pytest

from vpg_pipelines.guidance.temperature import ENTROPY_TEMPERATURE_DEFAULTS
from vpg_pipelines.pipelines.pipeline_vpg_infinity import VPGInfinityPipeline
from vpg_pipelines.pipelines.pipeline_vpg_infinity_star import VPGInfinityStarPipeline
from vpg_pipelines.pipelines.pipeline_vpg_var import VPGVARPipeline

PIPELINES = [VPGVARPipeline, VPGInfinityPipeline, VPGInfinityStarPipeline]
ENTRY = re.compile(r"^ {12}(\w+) \((.+)\):$")
"""An ``Args:`` entry of a method docstring: ``name (`type`, *optional*, defaults to X):``."""


def _args_section(doc: str) -> list[tuple[str, str]]:
    section = doc.split("\n        Args:\n", 1)[1].split("\n        Examples:", 1)[0].split("\n        Returns:")[0]
    return [(m.group(1), m.group(2)) for line in section.splitlines() if (m := ENTRY.match(line))]


def _documented_default(spec: str) -> str | None:
    found = re.search(r"defaults to (.+)$", spec)
    return found.group(1).strip("`") if found else None


def _same(documented: str, default: object) -> bool:
    if isinstance(default, bool) or default is None:
        return documented == repr(default)
    if isinstance(default, str):
        return documented == f'"{default}"'
    if isinstance(default, (int, float)):
        return float(documented) == default
    return documented == repr(default)


@pytest.mark.parametrize("cls", PIPELINES, ids=lambda c: c.__name__)
def test_call_args_carry_types_and_their_real_defaults(cls):
    signature = inspect.signature(cls.__call__)
    params = [p for p in signature.parameters.values() if p.name != "self"]
    entries = _args_section(cls.__call__.__doc__)
    assert [name for name, _ in entries] == [p.name for p in params], "document every argument, in order"
    for (name, spec), param in zip(entries, params):
        assert spec.startswith("`"), f"{name}: the entry starts with its type"
        assert ("*optional*" in spec) == (param.default is not inspect.Parameter.empty), name
        documented = _documented_default(spec)
        if documented is None:  # only None defaults may leave "defaults to" out (the text says what None does)
            assert param.default is None, f"{name}: write `defaults to {param.default!r}`"
        else:
            assert _same(documented, param.default), f"{name}: documented {documented}, signature {param.default!r}"


@pytest.mark.parametrize("cls", PIPELINES, ids=lambda c: c.__name__)
def test_entropy_temperature_defaults_are_the_papers(cls):
    params = inspect.signature(cls.__call__).parameters
    for key, value in ENTROPY_TEMPERATURE_DEFAULTS._asdict().items():
        assert params[f"entropy_temperature_{key}"].default == value


def test_var_examples_run_on_the_bundled_demo_model():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    (test,) = finder.find(VPGVARPipeline.__call__, "VPGVARPipeline.__call__", globs={})
    result = runner.run(test)
    ran = [e for e in test.examples if not e.options.get(doctest.SKIP)]
    assert result.failed == 0 and len(ran) >= 5, result  # the demo part ran; the released part is SKIP
    assert any("load_demo_pipeline()" in e.source for e in ran)


def _examples(method) -> list[doctest.Example]:
    return doctest.DocTestParser().get_examples(inspect.getdoc(method) or "")


def _calls(examples: list[doctest.Example]) -> list[ast.Call]:
    tree = ast.parse("".join(e.source for e in examples))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


@pytest.mark.parametrize("cls", PIPELINES, ids=lambda c: c.__name__)
def test_examples_that_need_released_weights_are_skipped_and_name_real_arguments(cls):
    call_params = set(inspect.signature(cls.__call__).parameters) - {"self"}
    load_params = set(inspect.signature(cls.from_official).parameters) - {"cls"}
    for method in (cls.__call__, cls.from_official):
        examples = _examples(method)
        assert examples, f"{method.__qualname__} has no Examples block"
        released = False  # from the first example that loads the released files on, every example is SKIP
        for example in examples:
            released = released or "from_official(" in example.source
            assert not released or example.options.get(doctest.SKIP), example.source
        for call in _calls(examples):
            func = call.func
            if isinstance(func, ast.Name) and func.id == "pipe":
                assert {k.arg for k in call.keywords} <= call_params, ast.unparse(call)
            if isinstance(func, ast.Attribute) and func.attr == "from_official":
                assert {k.arg for k in call.keywords} <= load_params, ast.unparse(call)
                assert len(call.args) <= 2, ast.unparse(call)
