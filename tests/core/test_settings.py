"""Settings: defaults, the documented example, environment overrides, one line per problem."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from node.core.errors import ConfigError
from node.core.settings import Settings
from node.core.settings_load import load_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "node.example.toml"


def test_example_config_loads_to_exactly_the_defaults() -> None:
    assert dataclasses.replace(load_settings(EXAMPLE, environ={}), source="x") == dataclasses.replace(
        Settings(), source="x"
    )


def _keys(cls: type, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys |= _keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.add(prefix + f.name)
    return keys


def _example_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in data.items():
        if isinstance(v, dict):
            keys |= _example_keys(v, f"{prefix}{k}.")
        else:
            keys.add(prefix + k)
    return keys


def test_example_documents_every_key() -> None:
    documented = _example_keys(tomllib.loads(EXAMPLE.read_text()))
    assert documented == _keys(Settings)


def test_environment_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('[node]\nport = 4000\nae_title = "FROM_FILE"\n')
    s = load_settings(cfg, environ={"DICOM_NODE__NODE__PORT": "4242",
                                    "DICOM_NODE__SCP__TLS__ENABLED": "false",
                                    "DICOM_NODE__COMPLETION__MAX_WAIT_ACTION": "hold"})
    assert s.node.port == 4242
    assert s.node.ae_title == "FROM_FILE"
    assert s.completion.max_wait_action == "hold"


def test_every_problem_is_reported_on_its_own_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[node]\nport = 70000\nae_title = "THIS_TITLE_IS_FAR_TOO_LONG"\ncolour = "blue"\n'
        '[scp]\nreceivers = "two"\n[scp.tls]\nenabled = true\n'
        '[completion]\nmax_wait_action = "explode"\nquiet_period_s = -1.0\n'
        '[[completion.required_series]]\nname = "ct"\nseries_description = "(unclosed"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    text = "\n".join(err.value.problems)
    assert "node.colour: unknown key" in text
    assert "scp.receivers: expected an integer, got str 'two'" in text
    assert "completion.max_wait_action: expected one of 'proceed', 'hold', 'discard', got 'explode'" in text
    # semantic checks run once the types are right: fix the type errors and look again
    cfg.write_text(
        '[node]\nport = 70000\nae_title = "THIS_TITLE_IS_FAR_TOO_LONG"\n'
        '[scp.tls]\nenabled = true\n'
        '[completion]\nquiet_period_s = -1.0\n'
        '[[completion.required_series]]\nname = "ct"\nseries_description = "(unclosed"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    problems = err.value.problems
    assert "node.port: 70000 is not a TCP port (1 to 65535)" in problems
    assert any(p.startswith("node.ae_title:") for p in problems)
    assert "scp.tls.certificate: required when scp.tls.enabled is true" in problems
    assert "completion.quiet_period_s: must not be negative" in problems
    assert any(p.startswith("completion.required_series[0].series_description: not a valid") for p in problems)
    assert all("\n" not in p for p in problems)


def test_check_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nport = 0\n[scp]\nmax_associations = 0\n")
    out = subprocess.run([sys.executable, "-m", "node.commands", "--config", str(bad), "check-config"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "config error: node.port: 0 is not a TCP port (1 to 65535)",
        "config error: scp.max_associations: must be at least 1",
    ]
    good = subprocess.run([sys.executable, "-m", "node.commands", "--config", str(EXAMPLE), "check-config"],
                          capture_output=True, text=True, cwd=REPO)
    assert good.returncode == 0 and "config OK" in good.stdout


def test_unreadable_toml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text("[node\nport = 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(bad, environ={})
    assert len(err.value.problems) == 1 and "not valid TOML" in err.value.problems[0]


def test_delivery_problems_are_reported_one_per_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[delivery]\nretry_base_s = 0\nmax_attempts = 0\nalert_on = "SOMETIMES"\n'
        '[[delivery.dicom]]\nname = "pacs"\nae_title = "A_TITLE_THAT_IS_TOO_LONG"\nhost = "h"\n'
        'port = 0\n'
        '[[delivery.hl7]]\nname = "pacs"\nhost = "h"\nport = 2575\non_reject = "shrug"\n'
        '[[delivery.webhooks]]\nname = "hook"\nurl = "ftp://x"\n'
        '[[delivery.email]]\nname = "mail"\nsmtp_host = "h"\nsender = "a@b"\nrecipients = []\n'
        '[delivery.email.tls]\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    problems = err.value.problems
    assert "delivery.alert_on: expected one of 'URGENT', 'PRIORITY', got 'SOMETIMES'" in problems
    assert "delivery.hl7[0].on_reject: expected one of 'retry', 'fail', got 'shrug'" in problems
    assert "delivery.email[0].tls: unknown key" in problems


def test_delivery_semantic_checks(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[delivery]\nretry_base_s = 0.0\nmax_attempts = 0\n'
        '[[delivery.dicom]]\nname = "pacs"\nae_title = "A_TITLE_THAT_IS_TOO_LONG"\nhost = "h"\n'
        'port = 0\n'
        '[[delivery.hl7]]\nname = "pacs"\nhost = "h"\nport = 2575\n'
        '[delivery.hl7.tls]\nenabled = true\ncertificate = "/nonexistent.pem"\n'
        '[[delivery.webhooks]]\nname = "hook"\nurl = "ftp://x"\n'
        '[[delivery.email]]\nname = "mail"\nsmtp_host = "h"\nsender = "a@b"\nrecipients = []\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert err.value.problems == [
        "delivery.retry_base_s: must be greater than 0 seconds",
        "delivery.max_attempts: must be at least 1",
        "delivery.dicom[0].name: 'pacs' is used twice",
        "delivery.dicom[0].ae_title: 'A_TITLE_THAT_IS_TOO_LONG' is not a valid AE title",
        "delivery.dicom[0]: port 0 is not a TCP port (1 to 65535)",
        "delivery.hl7[0].name: 'pacs' is used twice",
        "delivery.hl7[0].tls.certificate: file not found: /nonexistent.pem",
        "delivery.hl7[0].tls: give certificate and private_key together",
        "delivery.webhooks[0].url: expected an http:// or https:// address",
        "delivery.email[0].recipients: give at least one address",
    ]


@pytest.mark.parametrize(("url", "problem"), [
    ("javascript:alert(1)//{study_uid}", "expected an http:// or https:// address"),
    ("https://pacs/viewer?uid={uid}", "expected {study_uid} and no other {name}"),
    ("https://pacs/viewer", "expected {study_uid} and no other {name}"),
])
def test_a_pacs_viewer_link_is_an_http_address_with_the_study_uid(
        tmp_path: Path, url: str, problem: str) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[web]\npacs_viewer_url = "{url}"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, environ={})
    assert err.value.problems == [f"web.pacs_viewer_url: {problem}"]
