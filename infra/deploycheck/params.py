"""Template parameters: each has a constraint CloudFormation enforces at deploy
time, and the deploy defaults in samconfig.toml satisfy them.

moto's CloudFormation does not enforce AllowedPattern, so the rules are applied
here as CloudFormation applies them: the pattern must match the whole value, and
each element of a CommaDelimitedList.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from samcli.cli.types import CfnParameterOverridesType
from samcli.lib.config.samconfig import SamConfig

# Types whose values CloudFormation itself checks against the account.
_TYPED = ("AWS::", "List<AWS::")


def unconstrained(template: dict[str, Any]) -> list[str]:
    """Parameters a wrong value would pass at deploy time."""
    out = []
    for name, spec in template.get("Parameters", {}).items():
        kind = spec.get("Type", "String")
        if kind.startswith(_TYPED):
            continue
        if "AllowedPattern" not in spec and "AllowedValues" not in spec:
            out.append(name)
        elif "ConstraintDescription" not in spec and "AllowedPattern" in spec:
            out.append(f"{name} (no ConstraintDescription: the deploy error would show only the regex)")
    return out


def violations(template: dict[str, Any], values: dict[str, str]) -> list[str]:
    """Why CloudFormation would refuse these parameter values (empty if it would not)."""
    specs = template.get("Parameters", {})
    out = []
    for name in values:
        if name not in specs:
            out.append(f"{name}: the template has no such parameter")
    for name, spec in specs.items():
        if name not in values:
            if "Default" not in spec:
                out.append(f"{name}: required (no Default) but not given")
            continue
        value = values[name]
        kind = spec.get("Type", "String")
        items = [v.strip() for v in value.split(",")] if kind == "CommaDelimitedList" else [value]
        for item in items:
            if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], item):
                out.append(f"{name}: {item!r} does not match {spec['AllowedPattern']}")
            if "AllowedValues" in spec and item not in [str(v) for v in spec["AllowedValues"]]:
                out.append(f"{name}: {item!r} is not one of {spec['AllowedValues']}")
        if "MinLength" in spec and len(value) < int(spec["MinLength"]):
            out.append(f"{name}: shorter than {spec['MinLength']}")
        if "MaxLength" in spec and len(value) > int(spec["MaxLength"]):
            out.append(f"{name}: longer than {spec['MaxLength']}")
    return out + rule_violations(template, values)


def rule_violations(template: dict[str, Any], values: dict[str, str]) -> list[str]:
    """The template's `Rules` (assertions across parameters) as CloudFormation checks
    them before it creates anything; moto ignores the section. Only the functions the
    template uses are understood; any other is itself reported."""
    specs = template.get("Parameters", {})

    def value(name: str) -> Any:
        spec = specs.get(name, {})
        raw = values.get(name, spec.get("Default", ""))
        raw = str(raw)
        if spec.get("Type") == "CommaDelimitedList":
            return [v.strip() for v in raw.split(",")]
        return raw

    def evaluate(node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return value(arg)
            if fn == "Fn::Equals":
                a, b = (evaluate(x) for x in arg)
                return a == b
            if fn == "Fn::Not":
                return not evaluate(arg[0])
            if fn == "Fn::And":
                return all(evaluate(x) for x in arg)
            if fn == "Fn::Or":
                return any(evaluate(x) for x in arg)
            if fn == "Fn::Contains":
                haystack, needle = evaluate(arg[0]), evaluate(arg[1])
                return needle in haystack
            raise ValueError(f"rule function {fn} is not understood by deploycheck")
        if isinstance(node, list):
            return [evaluate(x) for x in node]
        return node

    out = []
    for name, rule in template.get("Rules", {}).items():
        try:
            if "RuleCondition" in rule and not evaluate(rule["RuleCondition"]):
                continue
            for assertion in rule.get("Assertions", []):
                if not evaluate(assertion["Assert"]):
                    out.append(f"rule {name}: {assertion.get('AssertDescription', 'assertion fails')}")
        except ValueError as e:
            out.append(f"rule {name}: {e}")
    return out


def samconfig_parameters(path: Path, env: str = "default") -> dict[str, str]:
    """The parameter overrides `sam deploy` reads from samconfig.toml, parsed by SAM
    CLI's own config reader and parameter type (so what is checked is what it sends)."""
    overrides = samconfig_deploy(path, env).get("parameter_overrides")
    if not overrides:
        return {}
    return dict(CfnParameterOverridesType().convert(overrides, None, None))


def samconfig_deploy(path: Path, env: str = "default") -> dict[str, Any]:
    """The `sam deploy` settings (global ones included), as SAM CLI reads them."""
    config = SamConfig(path.parent, filename=path.name)
    return dict(config.get_all(["deploy"], "parameters", env))
