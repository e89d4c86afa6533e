"""run/scope.py: the namespaces the controller serves, from its flags (pure, table tests)."""

from __future__ import annotations

import pytest

from reconciler.cli import build_parser
from reconciler.run.options import ControllerOptions, options_from
from reconciler.run.scope import NamespaceScope, ServedSet, check_selector, parse_namespaces


@pytest.mark.parametrize(("values", "expected"), [
    (["a,b"], ("a", "b")),
    (["a", "b,c"], ("a", "b", "c")),
    (["a, b", "a"], ("a", "b")),
    (["team-1"], ("team-1",)),
])
def test_parse_namespaces(values: list[str], expected: tuple[str, ...]) -> None:
    assert parse_namespaces(values) == expected


@pytest.mark.parametrize("values", [["a,,b"], ["Team"], ["-a"], ["a_b"], ["x" * 64], [""]])
def test_parse_namespaces_refuses_what_is_not_a_namespace_name(values: list[str]) -> None:
    with pytest.raises(ValueError, match="--namespaces: .* is not a namespace name"):
        parse_namespaces(values)


@pytest.mark.parametrize("selector", [
    "email.reconciler.io/served=true", "served", "!legacy", "tier==gold", "tier!=bronze",
    "env in (prod, staging)", "env notin (dev),served=true", " team=a , region=eu ",
    "example.com/owner=",
])
def test_check_selector_accepts_what_kubernetes_parses(selector: str) -> None:
    assert check_selector(selector) == selector.strip()


@pytest.mark.parametrize("selector", ["", "a=b=c", "=true", "a in b", "a=(b)", "a,", "a b",
                                      "env in (prod", "café=1"])
def test_check_selector_refuses_garbage(selector: str) -> None:
    with pytest.raises(ValueError, match="--namespace-selector: .* is not a label selector"):
        check_selector(selector)


@pytest.mark.parametrize(("namespace", "namespaces", "selector", "fixed", "chosen", "everywhere"), [
    (None, None, None, (), None, True),
    ("mail", None, None, ("mail",), None, False),
    (None, ["a,b", "c"], None, ("a", "b", "c"), None, False),
    (None, None, "served=true", (), "served=true", False),
])
def test_scope_from_flags(namespace: str | None, namespaces: list[str] | None,
                          selector: str | None, fixed: tuple[str, ...], chosen: str | None,
                          everywhere: bool) -> None:
    scope = NamespaceScope.from_flags(namespace, namespaces, selector)
    assert (scope.fixed, scope.selector, scope.everywhere) == (fixed, chosen, everywhere)


@pytest.mark.parametrize(("namespace", "namespaces", "selector"), [
    ("mail", ["a"], None), ("mail", None, "x=y"), (None, ["a"], "x=y")])
def test_the_three_flags_exclude_each_other(namespace: str | None, namespaces: list[str] | None,
                                            selector: str | None) -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        NamespaceScope.from_flags(namespace, namespaces, selector)


def test_the_flags_parse_into_controller_options() -> None:
    args = build_parser().parse_args(["controller", "--namespaces", "a,b", "--namespaces", "c"])
    options = options_from(ControllerOptions, args)
    assert options.namespaces == ["a,b", "c"] and options.namespace_selector is None
    args = build_parser().parse_args(["controller", "--namespace-selector", "served=true"])
    assert options_from(ControllerOptions, args).namespace_selector == "served=true"
    help_text = build_parser()._subparsers._group_actions[0].choices["controller"].format_help()  # type: ignore[union-attr]
    assert "--namespaces NS[,NS...]" in help_text and "--namespace-selector LABELS" in help_text


def test_served_set() -> None:
    served = ServedSet()
    assert "a" not in served
    assert served.add("a") and not served.add("a") and "a" in served
    assert served.discard("a") and not served.discard("a") and "a" not in served
