"""The routing policies by name: the config key `routing.policy` picks one (default "messplus").

A new policy is one module beside this one (a `Policy` subclass overriding its hooks) plus one line here.
"""

from __future__ import annotations

from ..errors import ConfigError
from .policy import Policy
from .reference import PaperPolicy

DEFAULT_POLICY = "messplus"
POLICIES: dict[str, type[Policy]] = {
    Policy.name: Policy,            # messplus's MESS+ (docs/ROUTING.md)
    PaperPolicy.name: PaperPolicy,  # MESS+ as published: the replay's reference
}


def get_policy(name: str = DEFAULT_POLICY) -> Policy:
    """A new instance of the policy registered as `name`; a ConfigError naming `routing.policy` otherwise."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ConfigError("routing.policy", f"unknown policy {name!r} (registered: {', '.join(POLICIES)})")
    return cls()
