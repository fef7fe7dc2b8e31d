"""The dependency graph CloudFormation builds from a template, and its cycles.

Our own check, so deployability does not rest on one linter version noticing
(cfn-lint 1.58 does not report the cycle on the SAM template; 1.51 did).
"""

from __future__ import annotations

import re
from typing import Any

_SUB_NAME = re.compile(r"\$\{([^!}][^}]*)\}")


def _references(node: Any, local: frozenset[str] = frozenset()) -> set[str]:
    """Logical names a subtree refers to (Ref, Fn::GetAtt, Fn::Sub); may include
    parameters and pseudo parameters, which the caller drops."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= _references(item, local)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                if isinstance(value, list) and value and isinstance(value[0], str):
                    found.add(value[0])
                elif isinstance(value, str):
                    found.add(value.split(".", 1)[0])
                else:
                    found |= _references(value, local)
            elif key == "Fn::Sub":
                text, variables = (value, {}) if isinstance(value, str) else (value[0], value[1])
                names = set(variables) if isinstance(variables, dict) else set()
                for name in _SUB_NAME.findall(text if isinstance(text, str) else ""):
                    base = name.split(".", 1)[0]
                    if base not in names:
                        found.add(base)
                found |= _references(variables, local)
            else:
                found |= _references(value, local)
    return found


def dependencies(template: dict[str, Any]) -> dict[str, set[str]]:
    """For each resource, the resources it depends on (references and DependsOn)."""
    resources = template.get("Resources", {})
    graph: dict[str, set[str]] = {}
    for logical, resource in resources.items():
        refs = _references(
            {k: v for k, v in resource.items() if k not in ("Metadata", "DependsOn")}
        )
        depends_on = resource.get("DependsOn", [])
        if isinstance(depends_on, str):
            depends_on = [depends_on]
        refs |= set(depends_on)
        graph[logical] = {r for r in refs if r in resources}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets with more than one resource, or a resource that
    depends on itself (Tarjan, iterative so a deep template cannot overflow)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return sorted(found)
