"""``exim-config --debian`` as text: the file names Debian reads, the hooks, the merge into
localmacros, the replies. What Debian's Exim makes of them: tests/mta/test_exim_debian.py."""

from __future__ import annotations

import re

import pytest

from quotagate.config import Config, parse_config
from quotagate.mta import debian, exim


def config(**policy: str) -> Config:
    return parse_config({"store": {"url": "mysql+pymysql://qg:secret@db.example:3306/mail"}, "policy": policy})


@pytest.mark.parametrize("method", ["router", "acl", "policy"])
def test_split_file_names_are_ones_update_exim4_conf_reads(method: exim.Method) -> None:
    files = debian.debian_files(exim.parts(config(), method), method, "split")
    for name in files.files:
        assert re.fullmatch(r"conf\.d/(main|acl|router)/[A-Za-z0-9_-]+", name), name  # a dot: skipped
    assert (debian.ROUTER in files.files) == (method == "router")


@pytest.mark.parametrize("layout", ["split", "non-split"])
def test_every_hook_debian_sets_goes_through_its_macro_never_the_option(layout: debian.Layout) -> None:
    files = debian.debian_files(exim.parts(config(), "policy"), "policy", layout, "/etc/exim4")
    text = "".join(files.files.values())
    for hook in debian.DEBIAN_HOOKS:
        assert not re.search(rf"^acl_smtp_{hook} =", text, re.M), hook
        assert f"MAIN_ACL_CHECK_{hook.upper()} " in text
    assert re.search(r"^acl_smtp_quit = ", text, re.M)  # Debian does not set it


def test_non_split_acls_are_files_naming_debians_acl_literally() -> None:
    files = debian.debian_files(exim.parts(config(), "acl"), "acl", "non-split", "/srv/exim")
    rcpt = files.files["quotagate/quotagate_check_rcpt.acl"]
    assert "acl = acl_check_rcpt" in rcpt and "QUOTAGATE_NEXT" not in rcpt
    assert "MAIN_ACL_CHECK_RCPT = /srv/exim/quotagate/quotagate_check_rcpt.acl" in files.files[debian.LOCALMACROS]


def test_the_file_that_holds_the_password_is_private_and_says_so() -> None:
    files = debian.debian_files(exim.parts(config(), "acl"), "acl", "split")
    assert files.private == {debian.MACROS}
    assert "secret" not in "".join(files.files.values())
    assert "CFILEMODE='640'" in files.files[debian.MACROS] and "CFILEMODE='640'" in files.steps


def test_merge_block_keeps_the_admins_macros_and_replaces_its_own() -> None:
    block = f"{debian.BEGIN}\nMAIN_ACL_CHECK_RCPT = x\n{debian.END}\n"
    once = debian.merge_block("MAIN_HOST_LOOKUP =\n", block)
    again = debian.merge_block(once, block.replace("= x", "= y"))
    assert again == "MAIN_HOST_LOOKUP =\n" + block.replace("= x", "= y")
    assert debian.merge_block(None, block) == block


def test_layout_follows_update_exim4_conf_conf() -> None:
    assert debian.layout_of("dc_use_split_config='true'\n") == "split"
    assert debian.layout_of("dc_use_split_config='false'\n") == "non-split"
    assert debian.layout_of("") == "non-split"


def test_confdir_must_be_a_plain_absolute_path() -> None:
    with pytest.raises(debian.DebianConfigError):
        debian.debian_files(exim.parts(config(), "acl"), "acl", "non-split", "etc/exim4 ${run{x}}")


def test_the_configured_reply_reaches_exim_as_written() -> None:
    parts = exim.parts(config(reject_reply="552 5.2.2 Full, see ${url} {x}"), "router", "mysql")
    assert r"data = :fail: 552 5.2.2 Full, see \$\{url\} \{x\}" in parts.routers
