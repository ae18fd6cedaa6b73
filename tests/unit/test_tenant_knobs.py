"""The tenant's knobs are declared once (config.TenantConfig) and reused: config checks, replay flags, README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from messplus.service import config as config_mod
from messplus.service.cli import build_parser
from messplus.service.config import TENANT_KNOBS, TenantConfig
from messplus.service.errors import ConfigError
from messplus.service.replay import POLICY_KEYS, TenantOverrides

README = Path(__file__).resolve().parents[2] / "README.md"
NAMES = [k.name for k in TENANT_KNOBS]


def test_the_knobs_are_the_policy_settings_of_a_tenant() -> None:
    assert NAMES == ["V", "c", "explore_models", "explore_budget", "optimism", "margin", "reserve", "confidence",
                     "debt_gain", "floor_window", "caution"]
    assert list(POLICY_KEYS) == NAMES
    assert TenantOverrides(margin=0.0).tenant(0.7, 3) == TenantConfig(name="replay", alpha=0.7, seed=3, margin=0.0)


def test_the_readme_lists_every_knob_with_its_default_and_help() -> None:
    block = README.read_text().split("[[tenants]]", 1)[1].split("```", 1)[0]
    lines = {m[1]: (float(m[2]), m[3].strip()) for m in re.finditer(r"^(\w+) = (\S+)\s+# (.*)$", block, re.M)}
    for k in TENANT_KNOBS:
        assert lines.get(k.name) == (float(k.default), k.metadata["help"]), f"README's [[tenants]] line for {k.name}"


def test_replay_takes_every_knob_as_a_flag() -> None:
    args = build_parser().parse_args(["replay", "--trace", "x.csv", "--alpha", "0.7", "--out", "o",
                                      "--explore-models", "3", "--debt-gain", "0.5", "--V", "2"])
    assert (args.explore_models, args.debt_gain, args.V, args.margin) == (3, 0.5, 2.0, None)
    for k in TENANT_KNOBS:
        assert hasattr(args, k.name)


@pytest.mark.parametrize("knob", TENANT_KNOBS, ids=NAMES)
def test_each_knob_is_checked_by_the_config_naming_its_key(knob) -> None:
    bad = {"V": 0.0, "c": -1.0, "explore_models": -1, "explore_budget": 2.0, "optimism": -1.0, "margin": 2.0,
           "reserve": -2.0, "confidence": 11.0, "debt_gain": 101.0, "floor_window": 5000,
           "caution": -1}[knob.name]
    with pytest.raises(ConfigError, match=rf"tenants\[0\]\.{knob.name}': {re.escape(knob.metadata['problem'])}"):
        config_mod.from_mapping({"tenants": [{"name": "t", "alpha": 0.7, knob.name: bad}]}, env={})


def test_the_readme_configuration_example_is_a_valid_configuration() -> None:
    import tomllib

    # the Configuration section's reference block (the Deployment section's docker example is checked in test_deploy)
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", README.read_text(), re.S) if b.startswith("[server]")]
    cfg = config_mod.from_mapping(tomllib.loads(block), env={})
    assert cfg.routing.policy == "messplus" and [t.name for t in cfg.tenants] == ["acme"]
