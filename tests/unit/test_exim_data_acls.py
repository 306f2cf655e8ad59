"""The generated Exim ACLs for checks at DATA, as text: hooked in, balanced, and nothing a
recipient carries reaches the daemon's request unfiltered. Real Exim runs them in
tests/mta/test_exim_prdr.py."""

from __future__ import annotations

import re

from quotagate.config import parse_config
from quotagate.mta import exim
from tests.unit.test_exim_config import balanced

CONFIG = parse_config({"policy": {"listen": ["127.0.0.1:10032"]}})


def acl(parts: exim.Parts, name: str) -> str:
    """One named ACL's statements, up to the next ACL's name."""
    match = re.search(rf"^{name}:\n((?:  .*\n)+)", parts.acls, re.MULTILINE)
    assert match, parts.acls
    return match.group(1)


def test_the_main_section_hooks_in_the_per_recipient_acl_and_prdr() -> None:
    main = exim.policy_parts(CONFIG).main
    assert "acl_smtp_data_prdr = quotagate_data_prdr\n" in main
    assert "prdr_enable = true\n" in main and "Debian" in main
    assert "acl_smtp_data = quotagate_data\n" in main
    assert "prdr_enable" not in exim.data_main(prdr_enable=False)  # Debian sets it already
    assert "acl_smtp_data_prdr = quotagate_data_prdr\n" in exim.data_main(prdr_enable=False)


def test_the_data_acl_checks_before_it_marks_the_message_in_flight() -> None:
    data = acl(exim.policy_parts(CONFIG), "quotagate_data")
    assert data.index("require acl = quotagate_data_check") < data.index("END-OF-MESSAGE")


def test_every_line_balances_and_each_check_sends_the_sizes_and_the_transaction() -> None:
    parts = exim.policy_parts(CONFIG)
    for name in ("quotagate_data_prdr", "quotagate_data_check"):
        text = acl(parts, name)
        assert all(balanced(line) for line in text.splitlines()), text
        for field in ("request=quotagate_data", "size=$message_size", "size_added=", "message_linecount="):
            assert field in text, (name, field)
        assert "instance=$acl_c_quotagate_tx" in text
        assert exim.UNREACHABLE in text  # fail-open: readsocket's fifth argument


def test_recipients_reach_the_request_only_with_line_breaks_removed() -> None:
    parts = exim.policy_parts(CONFIG)
    prdr, check = acl(parts, "quotagate_data_prdr"), acl(parts, "quotagate_data_check")
    assert r"recipient=${sg{$local_part@$domain}{\N[\r\n]\N}{}}" in prdr
    unquoted = r'${sg{${sg{${local_part:$item}}{\N"((?:[^"\\]|\\.)*)"\N}{\$1}}}{\N\\(.)\N}{\$1}}@${domain:$item}'
    assert rf"recipient=${{sg{{{unquoted}}}{{\N[\r\n]\N}}{{}}}}" in check  # each as $local_part would be
    assert "${reduce{<| ${addresses:>| $recipients}}" in check  # split as addresses, not at every comma


def test_without_prdr_the_message_is_refused_only_when_every_answer_refuses() -> None:
    check = acl(exim.policy_parts(CONFIG), "quotagate_data_check")
    assert "condition = ${if eq{$acl_m_quotagate_prdr}{yes}}" in check  # PRDR checked each already
    deny = check[check.index("  deny") : check.index("  defer")]
    assert "forall{<| $acl_m_quotagate_data}" in deny and "!eq{$acl_m_quotagate_data}{}" in deny
