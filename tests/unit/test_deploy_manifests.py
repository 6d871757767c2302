"""deploy/ must stay valid: the manifests parse, name real settings and real commands, and fit together."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ttsync.cli import app
from ttsync.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"


def docs() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in K8S.glob("*.yaml")}


def setting_names() -> set[str]:
    return {f"TTSYNC_{name.upper()}" for name in Settings.model_fields}


def test_kustomization_lists_every_manifest() -> None:
    manifests = docs()
    listed = set(manifests["kustomization.yaml"]["resources"])
    assert listed == set(manifests) - {"kustomization.yaml"}


def test_config_and_secret_keys_are_real_settings() -> None:
    manifests = docs()
    keys = set(manifests["configmap.yaml"]["data"]) | set(manifests["secret.yaml"]["stringData"])
    assert keys <= setting_names(), keys - setting_names()
    assert manifests["configmap.yaml"]["data"]["TTSYNC_METRICS_HOST"] == "0.0.0.0"


@pytest.mark.parametrize(("name", "command"), [("relay.yaml", "relay"), ("consumer.yaml", "consume")])
def test_deployments_probe_readiness_and_liveness_on_the_metrics_port(name: str, command: str) -> None:
    manifests = docs()
    dep = manifests[name]
    assert dep["kind"] == "Deployment"
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    assert container["args"] == [command]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(manifests["configmap.yaml"]["data"]["TTSYNC_METRICS_PORT"])
    # Readiness asks the dependencies; liveness only whether the loop turns (a broker outage restarted every pod).
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    refs = {next(iter(e.values()))["name"] for e in container["envFrom"]}
    assert refs == {manifests["configmap.yaml"]["metadata"]["name"], manifests["secret.yaml"]["metadata"]["name"]}
    assert CliRunner().invoke(app, [command, "--help"]).exit_code == 0
    # the PodMonitor scrapes these pods on that port
    monitor = manifests["podmonitor.yaml"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert monitor["podMetricsEndpoints"][0]["port"] in ports


def test_compose_services_use_real_commands_and_settings() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "postgres", "sandbox", "relay", "consumer", "migrate", "capture"} <= set(services)
    for name in ("sandbox", "relay", "consumer", "migrate", "capture"):
        command = services[name]["command"]
        assert CliRunner().invoke(app, [*command[:2 if command[0] in ("db", "capture") else 1], "--help"]
                                  ).exit_code == 0
        env = services[name].get("environment", {})
        assert set(env) - {"TTSYNC_ENV_FILE"} <= setting_names(), set(env) - setting_names()
    for name in ("sandbox", "relay", "consumer"):  # a crash or a reboot brings the pipeline back
        assert services[name]["restart"] == "unless-stopped"
    for name in ("kafka", "postgres", "relay", "consumer", "sandbox"):
        for port in services[name].get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_dockerfile_installs_every_package_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for package in ("schemas", "producer", "consumer", "ttsync"):
        assert f"COPY {package} {package}" in dockerfile
    assert 'ENTRYPOINT ["ttsync"]' in dockerfile and "USER 10001" in dockerfile
    # State the commands keep (lag's window under ~/.cache, relative paths such as the demo's .local/) needs a
    # home and a working directory the image's user can write.
    assert "--create-home --home-dir /home/ttsync" in dockerfile and "ENV HOME=/home/ttsync" in dockerfile
    assert dockerfile.rstrip().splitlines().index("WORKDIR /home/ttsync") > dockerfile.splitlines().index(
        "USER 10001")


def test_the_image_base_is_pinned_by_digest_and_dependencies_by_hash() -> None:
    import re

    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert image and re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", image.group(1))
    assert [ln.split()[1] for ln in dockerfile.splitlines() if ln.startswith("FROM ")] == ["${PYTHON_IMAGE}"] * 2
    assert "--require-hashes --prefix=/install -r requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps --prefix=/install ." in dockerfile
    ci = (ROOT / ".ci" / "run").read_text()
    assert "--require-hashes -r requirements-test.lock" in ci


@pytest.mark.parametrize("lock, extras", [("requirements.lock", ()), ("requirements-test.lock", ("test",))])
def test_the_lock_files_pin_every_dependency_of_pyproject_with_hashes(lock: str, extras: tuple[str, ...]) -> None:
    """A dependency added to pyproject.toml and not to the locks would be missing from the image and from CI."""
    import re
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    text = (ROOT / lock).read_text()
    pins = {canonicalize_name(m.group(1)): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, re.M)}
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in {lock}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{lock} pins {req.name}=={pins[name]}"
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert all("--hash=sha256:" in b for b in blocks if b.strip())


def test_the_debezium_connector_writes_the_records_our_relay_writes() -> None:
    import json

    from producer.debezium_config import connector_config

    cfg = connector_config("postgresql+psycopg://tt:s3cret@db.example:6543/timetracker", "acme")
    assert (cfg["database.hostname"], cfg["database.port"], cfg["database.user"], cfg["database.dbname"]) == (
        "db.example", "6543", "tt", "timetracker")
    assert cfg["table.include.list"] == "ttsync.ttsync_outbox" and cfg["plugin.name"] == "pgoutput"
    assert cfg["transforms.outbox.route.topic.replacement"] == "acme.${routedByValue}"  # as topic_for()
    assert cfg["transforms.outbox.table.field.event.key"] == "aggregateid"
    assert cfg["transforms.outbox.table.field.event.id"] == "id"  # header "id", as the relay's
    assert "aggregate_version:header:aggregateVersion" in cfg["transforms.outbox.table.fields.additional.placement"]
    assert cfg["value.converter"].endswith("StringConverter")  # the envelope, byte for byte
    assert connector_config("postgresql://u:p@h/d", "x", password_file="/s/p.properties")["database.password"] \
        == "${file:/s/p.properties:password}"
    shipped = json.loads((ROOT / "deploy" / "debezium" / "ttsync-outbox-connector.json").read_text())["config"]
    assert shipped["database.password"].startswith("${file:")  # no secret in the repository's example
    assert {k: v for k, v in shipped.items() if not k.startswith("database.")} == \
        {k: v for k, v in connector_config("postgresql://u@h/timetracker", "timetracker").items()
         if not k.startswith("database.")}
    # Replication slots are per server: two TimeTracker databases on one server get two slots.
    assert connector_config("postgresql://u@h/tt-a", "x")["slot.name"] == "ttsync_outbox_tt_a" != \
        connector_config("postgresql://u@h/tt_b", "x")["slot.name"]


def test_the_strimzi_connector_carries_the_same_config() -> None:
    import yaml

    from producer.debezium_config import connector_config

    docs = list(yaml.safe_load_all((ROOT / "deploy" / "debezium" / "strimzi.yaml").read_text()))
    connector = next(d for d in docs if d["kind"] == "KafkaConnector")
    want = connector_config("postgresql://u@h/timetracker", "timetracker")
    assert connector["spec"]["class"] == want["connector.class"]
    assert {k: v for k, v in connector["spec"]["config"].items() if not k.startswith("database.")} == \
        {k: v for k, v in want.items() if not k.startswith("database.") and k not in ("connector.class", "tasks.max")}
    connect = next(d for d in docs if d["kind"] == "KafkaConnect")
    assert connect["spec"]["build"]["plugins"][0]["artifacts"][0]["version"] == "3.6.1.Final"


@pytest.mark.parametrize("name", ["relay.yaml", "consumer.yaml", "migrate-job.yaml"])
def test_every_pod_runs_hardened(name: str) -> None:
    pod = docs()[name]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
        # A read-only root: HOME (the lag window's state) and /tmp are a writable emptyDir.
        assert {"name": "HOME", "value": "/tmp"} in container["env"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/tmp"] in {v["name"] for v in pod["volumes"] if "emptyDir" in v}


def test_a_network_policy_lets_in_only_the_metrics_port() -> None:
    policy = docs()["networkpolicy.yaml"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    selected = policy["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert set(selected) == {"ttsync", "ttsync-migrate"}
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [9108]
    egress = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress == {53, 5432, 9092, 9093, 443}


def test_connect_sh_keeps_the_database_password_out_of_configs_and_command_lines() -> None:
    script = (ROOT / "deploy" / "local" / "connect.sh").read_text()
    assert "config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider" in script
    register = script[script.index("register() {"):script.index("unregister() {")]
    assert "--database-url " not in register and "--secrets-dir" in register
    source = (ROOT / "deploy" / "debezium" / "register.py").read_text()
    assert "password_file=str(secrets)" in source and "chmod(0o600)" in source


def test_the_alerts_name_only_metrics_ttsync_exports() -> None:
    """An alert on a metric nobody exports never fires: each name in each rule must be one of ours (or the
    Prometheus / kube-state-metrics series named on purpose)."""
    import re

    from consumer import metrics
    from ops.observability import LagCollector
    from producer.relay_metrics import RelayCollector

    names = {m.name for m in metrics.REGISTRY.collect()}
    names |= {f"{n}_total" for n in names}
    names |= set(LagCollector.FAMILIES) | set(RelayCollector.FAMILIES)
    rules = docs()["prometheusrule.yaml"]["spec"]["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {"TtsyncConsumerLagGrowing", "TtsyncConsumerStopped", "TtsyncDeadLetters",
                                           "TtsyncOutboxBacklogOld", "TtsyncQboReconnectNeeded"}
    external = {"up", "kube_pod_container_status_last_terminated_exitcode"}
    for rule in rules:
        expr = re.sub(r"\{[^}]*\}", "{}", rule["expr"])  # label matchers are not metric names
        used = set(re.findall(r"\b([a-z_]+)(?=\{|\)|\s*[<>=]|\[)", expr)) - {"by", "sum", "max", "absent",
                                                                                   "increase", "or", "group"}
        assert used, rule["alert"]
        assert used <= names | external, (rule["alert"], used - names - external)
