"""`orchestrator vars`: the extra vars every run gets, for a playbook run by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator import cli


class UnsafeLoader(yaml.SafeLoader):
    """Reads `!unsafe` scalars as plain strings (Ansible reads them as never-templated strings)."""


UnsafeLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))  # type: ignore[arg-type]

SECRET = "s3cret-{{ lookup('pipe', 'id') }}"


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("ORCHESTRATOR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GITHUB_TOKEN", SECRET)
    monkeypatch.setenv("GITHUB_API_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AZURE_CLIENT_SECRET", raising=False)
    return tmp_path


def test_vars_file_is_private_and_never_templated(settings_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = settings_env / "vars.yml"
    assert cli.main(["vars", "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    printed = capsys.readouterr().out
    assert SECRET not in printed and "s3cret" not in printed
    text = out.read_text()
    values = yaml.load(text, Loader=UnsafeLoader)
    assert values["orchestrator_github_token"] == SECRET
    assert values["orchestrator_data_dir"] == str(settings_env / "data")
    assert values["orchestrator_github_api_url"] == "http://127.0.0.1:9"
    assert "orchestrator_azure_client_secret" not in values  # unset settings are left out
    # Every string is tagged !unsafe: a value with Jinja in it stays data.
    assert "orchestrator_github_token: !unsafe '" in text


def test_vars_file_replaces_an_open_file_mode(settings_env: Path) -> None:
    out = settings_env / "vars.yml"
    out.write_text("old")
    out.chmod(0o644)
    assert cli.main(["vars", "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    assert "old" not in out.read_text()
