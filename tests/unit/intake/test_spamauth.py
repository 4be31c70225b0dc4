"""Our Authentication-Results as rspamd's Settings (intake/spamauth.py): the checks we did off,
their symbols inserted with the scores rspamd's configuration gives them."""

from __future__ import annotations

import json

from hato.authcheck.results import MethodResult, build_header
from hato.intake.spamauth import rspamd_settings


def _settings(*results: MethodResult, extra: bytes = b"") -> dict[str, object]:
    text = rspamd_settings(extra + build_header("mx.dest.example", results))
    assert text is not None
    settings = json.loads(text)
    assert isinstance(settings, dict)
    return settings


def test_failing_message_keeps_the_failing_symbols() -> None:
    settings = _settings(
        MethodResult("spf", "fail", properties=(("smtp.mailfrom", "a@sender.test"),)),
        MethodResult(
            "dkim", "fail", reason="bad", properties=(("header.d", "s.test"), ("header.s", "k"))
        ),
        MethodResult(
            "dmarc", "fail", properties=(("header.from", "sender.test"), ("policy.dmarc", "reject"))
        ),
        MethodResult("arc", "none"),
        extra=b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=x; s=y; b=zz\r\n",
    )
    assert settings["symbols_disabled"] == ["SPF_CHECK", "DKIM_CHECK", "DMARC_CHECK", "ARC_CHECK"]
    assert settings["symbols"] == {
        "R_SPF_FAIL": {"score": 1.0, "options": ["a@sender.test"]},
        "R_DKIM_REJECT": {"score": 1.0, "options": ["s.test:s=k"]},
        "DKIM_TRACE": {"score": 1.0, "options": ["s.test:-"]},
        "DMARC_POLICY_REJECT": {"score": 1.0, "options": ["sender.test", "reject"]},
        "ARC_NA": {"score": 1.0, "options": []},
    }


def test_dmarc_fail_follows_the_policy_found() -> None:
    for policy, symbol in (
        ("quarantine", "DMARC_POLICY_QUARANTINE"),
        ("none", "DMARC_POLICY_SOFTFAIL"),
    ):
        props = (("header.from", "sender.test"), ("policy.dmarc", policy))
        settings = _settings(MethodResult("dmarc", "fail", properties=props))
        assert settings["symbols_disabled"] == ["DMARC_CHECK"]
        assert list(settings["symbols"]) == [symbol]  # type: ignore[call-overload]


def test_passing_and_missing_results() -> None:
    settings = _settings(
        MethodResult("spf", "pass", properties=(("smtp.mailfrom", "a@sender.test"),)),
        MethodResult("dkim", "none"),
        MethodResult("dmarc", "pass", properties=(("header.from", "sender.test"),)),
    )
    # No arc entry: rspamd checks ARC itself.
    assert settings["symbols_disabled"] == ["SPF_CHECK", "DKIM_CHECK", "DMARC_CHECK"]
    assert set(settings["symbols"]) == {  # type: ignore[call-overload]
        "R_SPF_ALLOW", "R_DKIM_NA", "DMARC_POLICY_ALLOW",
    }  # fmt: skip


def test_unknown_result_leaves_the_check_on() -> None:
    settings = _settings(
        MethodResult("spf", "pass", properties=(("smtp.mailfrom", "a@sender.test"),)),
        MethodResult("dmarc", "policy"),
    )
    assert settings["symbols_disabled"] == ["SPF_CHECK"]


def test_no_authentication_results_no_settings() -> None:
    assert rspamd_settings(b"DKIM-Signature: v=1; d=x\r\n") is None
    assert rspamd_settings(b"") is None
