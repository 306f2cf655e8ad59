"""``quotagate postfix-config``: the item for the admin's own restrictions, never a list of ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.cli import main


def test_postfix_config_prints_the_item_and_never_a_whole_restriction_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "quotagate.toml"
    cfg.write_text('[policy]\nlisten = ["127.0.0.1:10099"]\n')
    assert main(["--config", str(cfg), "postfix-config"]) == 0
    out = capsys.readouterr().out
    settings = [line for line in out.splitlines() if line and not line.startswith("#")]
    item = (
        "check_policy_service { inet:127.0.0.1:10099, timeout=10s, default_action=DUNNO, try_limit=1,"
        " max_idle=300s, max_ttl=1000s }"
    )
    # The item, for the recipient and the end-of-data restrictions, and no setting: a pasted
    # smtpd_end_of_data_restrictions line replaced the admin's own (their sender blocks, rate
    # limits at end of data were gone without a word). One try: a daemon that hangs costs each
    # recipient one timeout, not two.
    assert settings == [item, item]
    # Its own settings in the item: none of Postfix's globals, which the admin's other policy
    # services (postgrey, SPF) would take too.
    assert not any(line.startswith("smtpd_policy_service_") for line in settings)
    # Where it goes: before any permit, after reject_unauth_destination.
    example = [line.strip("# ,") for line in out.splitlines() if line.startswith("#       ")]
    assert example.index(item) < example.index("permit_mynetworks")
    assert example.index("reject_unauth_destination") < example.index(item)


@pytest.mark.parametrize(
    ("socket", "queue", "named"),
    [
        ("/var/spool/postfix/private/quotagate", "/var/spool/postfix", "unix:private/quotagate"),
        ("/srv/pf/queue/private/q", "/srv/pf/queue", "unix:private/q"),
        ("/srv/quotagate/private/policy", "/var/spool/postfix", "unix:/srv/quotagate/private/policy"),
        ("/run/quotagate/policy.sock", "/var/spool/postfix", "unix:/run/quotagate/policy.sock"),
    ],
)
def test_a_socket_is_named_relative_to_the_queue_directory_only_inside_it(socket: str, queue: str, named: str) -> None:
    """A unix socket for Postfix. Expected: relative to queue_directory (as a chrooted smtpd
    finds it) only when it lies there; anywhere else by its absolute path."""
    from quotagate.config import parse_config
    from quotagate.mta.postfix import policy_service

    assert policy_service(parse_config({"policy": {"listen": [f"unix:{socket}"]}}), queue) == named
