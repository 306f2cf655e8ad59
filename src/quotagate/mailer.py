"""Warning mails: templates rendered, headers built with the ``email`` package, sent over SMTP.

Nothing a user or a directory chose (an address, a folder name) can add a header or a
recipient: the subject is rendered as text, then escaped to one printable line
(:func:`quotagate.text.printable`) before the ``email`` package folds and encodes it; an address
that is not one plain ``local@domain`` is not mailed at all; the body is ``text/plain``.
Templates are Jinja2 (the ``warn`` extra), sandboxed, escaping only ``.html`` templates: a
text mail shows ``<script>`` as the characters it is.
"""

from __future__ import annotations

import re
import smtplib
from email.errors import HeaderParseError
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path
from types import TracebackType
from typing import Any

from quotagate.errors import QuotagateError
from quotagate.text import printable

BUILTIN = {
    "threshold.txt": """Subject: Your mailbox {{ address }} is {{ percent }}% full

Your mailbox {{ address }} holds {{ used }} of {{ quota }} ({{ percent }}%).
{% if share >= 1 %}It is full: new mail to it is refused until you delete some.
{% else %}Once it is full, new mail to it will be refused.
{% endif %}{% if forecast != "not filling" %}At its recent rate it will be {{ forecast }}.
{% endif %}{% if folders %}
Largest folders:
{% for name, size in folders %}  {{ name }}  {{ size }}
{% endfor %}{% endif %}
Please delete or archive mail you no longer need (Trash and Sent count too).
""",
    "filling.txt": """Subject: Your mailbox {{ address }} will be full in about {{ days }} days

Your mailbox {{ address }} holds {{ used }} of {{ quota }} ({{ percent }}%) and grows by about
{{ rate }} a day: at that rate it will be {{ forecast }}, around {{ full_date }}.
Once it is full, new mail to it will be refused.
{% if folders %}
Largest folders:
{% for name, size in folders %}  {{ name }}  {{ size }}
{% endfor %}{% endif %}
Please delete or archive mail you no longer need (Trash and Sent count too).
""",
}

# One plain addr-spec: no space, control character, quote, bracket, comma or second "@". An RFC
# 2047 encoded word ("=?...?="), which the email package decodes in a header, line breaks and
# all, is refused by reading the header back (see message): "a=?b@" is an address like any.
_PLAIN = re.compile(r"[^\s\x00-\x1f\x7f<>()\[\],;:\"\\@]+@[^\s\x00-\x1f\x7f<>()\[\],;:\"\\@]+")


class MailError(QuotagateError):
    """A warning that could not be rendered or handed to the SMTP server."""


def mailable(address: str) -> bool:
    return _PLAIN.fullmatch(address) is not None


def _environment(template_dir: Path | None) -> Any:
    try:
        from jinja2 import ChoiceLoader, DictLoader, FileSystemLoader, StrictUndefined, select_autoescape
        from jinja2.sandbox import SandboxedEnvironment
    except ImportError as exc:
        raise MailError("warnings need Jinja2: pip install 'quotagate[warn]'") from exc
    loaders: list[Any] = [DictLoader(BUILTIN)]
    if template_dir is not None:
        loaders.insert(0, FileSystemLoader(str(template_dir)))
    return SandboxedEnvironment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def render(template: str, context: dict[str, Any], template_dir: Path | None = None) -> tuple[str, str]:
    """(subject, body) from a template whose first line is ``Subject: ...``, then a blank line."""
    try:
        text = _environment(template_dir).get_template(template).render(**context)
    except MailError:
        raise
    except Exception as exc:  # a broken template of the admin's: say which, never crash a run
        raise MailError(f"template {template}: {type(exc).__name__}: {exc}") from exc
    head, _, body = text.partition("\n\n")
    if not head.startswith("Subject:"):
        raise MailError(f"template {template}: its first line must be 'Subject: ...'")
    subject = " ".join(printable(head.removeprefix("Subject:")).split())
    return subject, body


def message(sender: str, address: str, subject: str, body: str, notice: str) -> EmailMessage:
    """The mail, its headers set by the ``email`` package (which refuses a line break in any).

    The ``To`` header is parsed back: an address the package reads as anything but itself is
    not mailed (a :class:`MailError`, as for one that is not plain)."""
    if not mailable(address):
        raise MailError("not a plain address: not mailed")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = sender
    try:
        msg["To"] = address
        parsed = [a.addr_spec for a in msg["To"].addresses]
    except (ValueError, HeaderParseError) as exc:
        raise MailError(f"not a plain address ({exc}): not mailed") from None
    if parsed != [address]:
        raise MailError("not a plain address: not mailed")
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid("quotagate", domain=sender.rpartition("@")[2])
    # RFC 3834: no vacation replies or bounces loops to it; and what the MTA can let through.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Quotagate-Warning"] = notice
    msg.set_content(body)
    return msg


class Smtp:
    """One SMTP connection for a run, opened at the first mail."""

    def __init__(self, server: str, timeout: float) -> None:
        host, _, port = server.rpartition(":")
        self.host, self.port, self.timeout = host.strip("[]"), int(port), timeout
        self._conn: smtplib.SMTP | None = None

    def send(self, msg: EmailMessage, sender: str, recipient: str) -> None:
        try:
            if self._conn is None:
                self._conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            self._conn.send_message(msg, from_addr=sender, to_addrs=[recipient])
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise MailError(f"SMTP {self.host}:{self.port}: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                self._conn.close()
            self._conn = None

    def __enter__(self) -> Smtp:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
