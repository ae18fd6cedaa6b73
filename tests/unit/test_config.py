"""Configuration: TOML + environment, and every bad value fails at start-up naming its key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from messplus.service import config
from messplus.service.errors import ConfigError

GOOD = """
[server]
listen = "127.0.0.1:6000"
[triton]
url = "127.0.0.1:8001"
[zoo]
cost_unit = "USD"
[[zoo.models]]
name = "small"
triton_model = "small"
cost_per_request = 0.001
[[zoo.models]]
name = "large"
triton_model = "large"
cost_per_input_token = 1e-6
prior_accuracy = 0.8
[[tenants]]
name = "acme"
alpha = 0.75
V = 2.0
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "messplus.toml"
    p.write_text(text)
    return p


def test_good_file_loads(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD), env={})
    assert cfg.server.listen == "127.0.0.1:6000"
    assert [m.name for m in cfg.zoo.models] == ["small", "large"]
    assert cfg.tenants[0].alpha == 0.75 and cfg.tenants[0].V == 2.0
    assert not cfg.embedded_triton


def test_no_file_is_the_embedded_default() -> None:
    cfg = config.load(None, env={})
    assert cfg.embedded_triton and cfg.server.listen == "127.0.0.1:50051"
    filled = config.with_defaults(cfg, (config.ModelConfig(name="m", triton_model="m", cost_per_request=1.0),))
    assert filled.tenants[0].name == "default" and filled.zoo.models[0].name == "m"


def test_environment_overrides_a_key(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD), env={"MESSPLUS_SERVER_LISTEN": "0.0.0.0:7000",
                                                   "MESSPLUS_PREDICTOR_THREADS": "2"})
    assert cfg.server.listen == "0.0.0.0:7000" and cfg.predictor.threads == 2


# what Kubernetes puts in every pod's environment for a Service named "messplus" and one named "messplus-metrics"
# (enableServiceLinks, on by default): a router beside them must start
K8S_LINKS = {"MESSPLUS_SERVICE_HOST": "10.0.0.7", "MESSPLUS_SERVICE_PORT": "50051",
             "MESSPLUS_SERVICE_PORT_GRPC": "50051", "MESSPLUS_PORT": "tcp://10.0.0.7:50051",
             "MESSPLUS_PORT_50051_TCP": "tcp://10.0.0.7:50051", "MESSPLUS_PORT_50051_TCP_PROTO": "tcp",
             "MESSPLUS_PORT_50051_TCP_PORT": "50051", "MESSPLUS_PORT_50051_TCP_ADDR": "10.0.0.7",
             "MESSPLUS_METRICS_SERVICE_HOST": "10.0.0.8", "MESSPLUS_METRICS_PORT_9464_TCP_ADDR": "10.0.0.8"}


def test_kubernetes_service_links_and_the_status_token_are_not_overrides(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    env = {**K8S_LINKS, "MESSPLUS_TOKEN": "s3cret", "MESSPLUS_SERVER_LISTEN": "0.0.0.0:7000"}
    with caplog.at_level("WARNING", logger="messplus.config"):
        cfg = config.load(write(tmp_path, GOOD), env=env)
    assert cfg.server.listen == "0.0.0.0:7000"  # the real override still applies
    (line,) = [r.getMessage() for r in caplog.records if r.name == "messplus.config"]
    assert "MESSPLUS_SERVICE_HOST" in line and "enableServiceLinks: false" in line and "TOKEN" not in line


@pytest.mark.parametrize(("text", "env", "key"), [
    (GOOD.replace("alpha = 0.75", "alpha = 1.5"), {}, "tenants[0].alpha"),
    (GOOD.replace("V = 2.0", "V = -1"), {}, "tenants[0].V"),
    (GOOD.replace("V = 2.0", "V = 2.0\nmargin = 2"), {}, "tenants[0].margin"),
    (GOOD.replace("V = 2.0", "V = 2.0\nreserve = -3"), {}, "tenants[0].reserve"),
    (GOOD.replace("V = 2.0", "V = 2.0\noptimism = -1"), {}, "tenants[0].optimism"),
    (GOOD.replace("V = 2.0", "V = 2.0\nexplore_budget = 1.5"), {}, "tenants[0].explore_budget"),
    (GOOD.replace("V = 2.0", "V = 2.0\nconfidence = -1"), {}, "tenants[0].confidence"),
    (GOOD.replace("V = 2.0", "V = 2.0\ndebt_gain = -0.5"), {}, "tenants[0].debt_gain"),
    (GOOD.replace('listen = "127.0.0.1:6000"', 'listen = "nope"'), {}, "server.listen"),
    (GOOD.replace("cost_per_request = 0.001", "cost_per_request = -1"), {}, "zoo.models[0].cost_per_request"),
    (GOOD.replace('name = "large"', 'name = "small"'), {}, "zoo.models[1].name"),
    (GOOD + "\n[bogus]\nx = 1\n", {}, "bogus"),
    (GOOD.replace("[server]", "[server]\nlisten_port = 1"), {}, "server.listen_port"),
    (GOOD, {"MESSPLUS_SERVER_NOPE": "1"}, "MESSPLUS_SERVER_NOPE"),
    (GOOD, {**K8S_LINKS, "MESSPLUS_TRITON_URLL": "x"}, "MESSPLUS_TRITON_URLL"),  # a typo is still refused
    (GOOD, {"MESSPLUS_TOKENS": "x"}, "MESSPLUS_TOKENS"),
    (GOOD, {"MESSPLUS_PREDICTOR_THREADS": "two"}, "predictor.threads"),
    (GOOD.replace("alpha = 0.75", 'alpha = "high"'), {}, "tenants[0].alpha"),
    ("this is not toml = = =", {}, "config"),
    ('zoo = "x"\n' + GOOD.split("[zoo]")[0], {}, "zoo"),  # a value where a table belongs: no traceback
    ('[state]\nbackend = "postgres"\nurl = "postgresql://u@[bad/db"\n', {}, "state.url"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, text), env=env)
    assert err.value.key == key
    assert key in str(err.value)


def test_an_empty_password_file_is_a_config_error_not_an_index_error(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("")
    text = f'[state]\nbackend = "postgres"\nurl = "postgresql://u@h/db"\npassword_file = "{tmp_path / "pw"}"\n'
    with pytest.raises(ConfigError, match="state.password_file.*first line is empty"):
        config.load(write(tmp_path, text), env={})


def test_a_state_password_in_the_file_is_refused_and_the_environment_s_is_taken(tmp_path: Path) -> None:
    """It was read from the file and used, though the docs send the password to a file or the environment."""
    text = '[state]\nbackend = "postgres"\nurl = "postgresql://u@h/db"\npassword = "hunter2"\n'
    with pytest.raises(ConfigError, match="state.password.*password_file") as err:
        config.load(write(tmp_path, text), env={})
    assert "hunter2" not in str(err.value)
    cfg = config.load(write(tmp_path, text.replace('password = "hunter2"\n', "")),
                      env={"MESSPLUS_STATE_PASSWORD": "s3cret"})
    assert cfg.state.db_password() == "s3cret"


def test_check_config_reads_the_tokens_as_serve_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from messplus.service.cli import main

    path = write(tmp_path, GOOD + '[security]\ntokens = "short=*"\n')
    assert main(["check-config", "--config", str(path)]) == 2
    assert "security.tokens" in capsys.readouterr().err


def test_check_config_says_what_it_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from messplus.service.cli import main

    for key in [k for k in os.environ if k.startswith("MESSPLUS_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    assert main(["check-config", "--config", str(write(tmp_path, GOOD))]) == 0
    assert capsys.readouterr().out.strip() == ("ok: 2 models, 1 tenant: acme alpha 0.75, listen 127.0.0.1:6000, "
                                               f"state SQLite {tmp_path / 'var' / 'messplus.sqlite3'}")
    pg = '[state]\nbackend = "postgres"\nurl = "postgresql://router@db.example:6432/books?sslmode=require"\n'
    assert main(["check-config", "--config", str(write(tmp_path, pg))]) == 0
    assert capsys.readouterr().out.strip() == (
        "ok: 5 models (the demo zoo), 1 tenant (the default): default alpha 0.7, listen 127.0.0.1:50051, "
        "state PostgreSQL router@db.example:6432/books")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "absent.toml", env={})


def test_tenant_policy_defaults_and_the_mess_plus_settings_load(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD.replace(
        "V = 2.0", "V = 2.0\nmargin = 0\nreserve = 0\noptimism = 0\nconfidence = 0\ndebt_gain = 0")))
    t = cfg.tenants[0]
    assert (t.V, t.margin, t.reserve, t.optimism, t.explore_budget) == (2.0, 0.0, 0.0, 0.0, 0.1)
    assert (t.confidence, t.debt_gain) == (0.0, 0.0)
    d = config.TenantConfig(name="x", alpha=0.7)
    assert (d.V, d.c, d.explore_models, d.margin, d.reserve) == (0.15, 0.2, 2, 0.3, -1.0)
    assert (d.confidence, d.debt_gain) == (2.0, 3.0)
