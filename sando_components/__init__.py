"""sando: deploy makenotwork with Pulumi. Components: Node, Release, CurrentPointer.

Names are imported on first use, so a provider process (which needs only
`sando_components.providers`) does not load the program's side (pydantic, sqlglot).
"""

from importlib import import_module

_WHERE = {
    "ConfigError": "errors", "OperatorError": "errors", "StackConfig": "config", "CurrentPointer": "current_pointer",
    "CurrentPointerArgs": "current_pointer", "verdict": "current_pointer", "Node": "node", "NodeArgs": "node",
    "bootstrap_sources": "node", "Release": "release", "ReleaseArgs": "release", "NodeTarget": "target",
    "stack": None,
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'sando_components' has no attribute {name!r}")
    module = import_module(f".{_WHERE[name] or name}", __name__)
    return module if _WHERE[name] is None else getattr(module, name)


__all__ = sorted(_WHERE)
