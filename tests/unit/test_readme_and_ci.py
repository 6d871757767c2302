"""The README's commands and .ci/run must not drift apart."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_opens_with_two_commands() -> None:
    first = _readme_blocks()[0].strip().splitlines()
    commands = [ln.split("#", 1)[0].strip() for ln in first if ln.strip()]
    assert len(commands) == 2
    assert "ttsync" in commands[0]
    assert commands[1] == "bash .ci/run"


def test_ci_runs_the_readme_test_command_exactly() -> None:
    test_command = _readme_blocks()[1].strip()
    assert test_command.startswith("python3 -m pytest")
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_top_level_layout() -> None:
    for name in ("producer", "consumer", "schemas", "deploy", "tests", "pyproject.toml"):
        assert (ROOT / name).exists(), name


def test_every_setting_is_documented_in_the_readme() -> None:
    from ttsync.settings import Settings

    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`TTSYNC_{name.upper()}`" not in readme]
    assert not missing


def test_the_readme_acl_table_is_what_principal_acls_grants() -> None:
    """Each (principal, operation, resource kind) the code grants is in the README's table, and no more."""
    from schemas.kafka_client import principal_acls

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Securing Kafka", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| relay") or ln.startswith("| consumer")]
    documented = set()
    for row in rows:
        who, ops, on = (cell.strip() for cell in row.strip("|").split("|"))
        kind = "CLUSTER" if "cluster" in on else "GROUP" if "group" in on else "TOPIC"
        for op in ops.split(","):
            name = {"IdempotentWrite": "IDEMPOTENT_WRITE", "DescribeConfigs": "DESCRIBE_CONFIGS"}.get(
                op.strip(), op.strip().upper())
            documented.add((who, name, kind))
    grants = principal_acls(relay="relay", consumer="consumer", prefix="timetracker", group="ttsync-qbo",
                            retry_delays_s=[10, 60, 300])
    granted = {(g.principal.removeprefix("User:"), g.operation, g.resource_type) for g in grants}
    assert granted == documented


def test_ci_gates_lint_and_types_before_the_tests() -> None:
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    tests_at = next(i for i, ln in enumerate(ci) if ln.startswith("python3 -m pytest"))
    assert ci.index("python3 -m ruff check .") < tests_at and ci.index("python3 -m mypy") < tests_at
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'module = ["schemas.*", "consumer.*", "producer.*", "importer.*"]\nstrict = true' in pyproject
    for package in ("schemas", "producer", "consumer", "importer", "ops", "ttsync"):
        assert (ROOT / package / "py.typed").exists(), package


def test_runtime_packages_depend_only_downward() -> None:
    """schemas <- producer, consumer <- importer, ops <- ttsync: nothing imports from a package above it."""
    above = {"schemas": ("producer", "consumer", "importer", "ops", "ttsync"),
             "producer": ("consumer", "importer", "ops", "ttsync"),
             "consumer": ("producer", "importer", "ops", "ttsync"),
             "importer": ("ops", "ttsync"), "ops": ("importer", "ttsync")}
    wrong = []
    for package, forbidden in above.items():
        for path in (ROOT / package).rglob("*.py"):
            for line in path.read_text().splitlines():
                m = re.match(r"\s*(?:from|import) (\w+)", line)
                if m and m.group(1) in forbidden:
                    wrong.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not wrong
