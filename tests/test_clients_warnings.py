# ruff: noqa: F811  (pytest fixtures imported from tests.world are used as arguments)
"""The format warnings of issue 15 end to end: the probe sees the password, the status says it."""

from __future__ import annotations

import json

import pytest

from reconciler import reasons
from reconciler.cli import main
from reconciler.model import status_condition as condition
from tests.world import World, servers, world  # noqa: F401

NON_ASCII = "p@ss:w/rd%?#&= é"


def test_probe_warns_when_django_cannot_send_the_password(world: World,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    world.account("billing", publish={"formats": ["env", "django"]})
    world.users["billing@example.com"] = NON_ASCII
    world.secret("billing-smtp", "password", NON_ASCII)
    assert main(["probe", str(world.accounts), "--secrets-dir", str(world.secrets),
                 "--output", "json"]) == 0
    out = capsys.readouterr().out
    status = json.loads(out)[0]["status"]
    assert condition(status, "Ready")["status"] == "True"  # the probe itself sends UTF-8
    warning = condition(status, "Warning")
    assert warning["status"] == "True" and warning["reason"] == reasons.PASSWORD_NOT_ASCII
    assert "django" in warning["message"] and "smtplib" in warning["message"]
    assert NON_ASCII not in out and "é" not in out


def test_no_warning_for_an_ascii_password_or_without_django(world: World,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    world.account("billing", publish={"formats": ["env", "django"]})
    world.account("alerts", publish={"formats": ["env", "nodemailer"]})
    world.users["alerts@example.com"] = NON_ASCII
    world.secret("alerts-smtp", "password", NON_ASCII)
    assert main(["probe", str(world.accounts), "--secrets-dir", str(world.secrets),
                 "--output", "json"]) == 0
    for entry in json.loads(capsys.readouterr().out):
        assert condition(entry["status"], "Warning") == {}, entry["name"]
