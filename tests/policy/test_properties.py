"""The codec and the decision service together: any bytes give one well-formed answer per request.

The daemon's contract with Postfix and Exim is framing: one ``action=...`` line and an empty line
for every request, never more, never fewer, never a second line smuggled in, whatever arrives.
These properties feed arbitrary bytes, and requests that are well framed but hostile (control
characters in the recipient, absurd sizes, unknown protocol states, too many attributes), cut at
random places, through :class:`PolicyDecoder` and :meth:`PolicyService.answer` over a real store
snapshot (``full`` is over quota, so decisions really consult the mailboxes: about one hostile request
in six is refused). Malformed requests are answered DUNNO, as the server does. The examples are capped
so the whole file runs in about two seconds; 6000 examples each found nothing either.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from quotagate.config import parse_config
from quotagate.policy.codec import PolicyDecoder, PolicyItem, PolicyRequest, encode_action
from quotagate.policy.metrics import Metrics
from quotagate.policy.service import DELIVERY_HINT, PolicyService
from tests.policy.conftest import FULL, ROOMY, Site, make_site, request
from tests.policywire import count_requests, cut, noise

EXAMPLES = 300  # each test well under two seconds on a loaded CI machine


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return make_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def services(site: Site) -> dict[str, PolicyService]:
    """A service per way of refusing, with a folder rule so ``local+folder`` takes its own path."""
    built = {}
    for on_full in ("reject", "defer"):
        data = site.data(on_full=on_full)
        data["folders"] = [{"match": "Sent", "quota": 5000}, {"match": "Trash", "exclude": True}]
        config = parse_config(data)
        service = site.service(config, Metrics())
        service.delivery_hint = lambda address: True  # as live tracking would: exercise the hint's path
        built[on_full] = service
    return built


def answers(service: PolicyService, chunks: list[bytes]) -> tuple[list[PolicyItem], list[PolicyItem], list[bytes]]:
    """Decode ``chunks`` as the server does and answer each item: (items fed, items at end, answers)."""
    decoder = PolicyDecoder()
    fed: list[PolicyItem] = []
    for chunk in chunks:
        fed.extend(decoder.feed(chunk))
    at_end = decoder.end()
    replies = [
        encode_action(service.answer(item) if isinstance(item, PolicyRequest) else "DUNNO") for item in fed + at_end
    ]
    return fed, at_end, replies


def internal_errors(service: PolicyService) -> float:
    return service.metrics.registry.get_sample_value("quotagate_policy_errors_total") or 0.0


def check_stream(service: PolicyService, data: bytes, positions: list[int]) -> None:
    errors_before = internal_errors(service)
    ended, pending = count_requests(data)
    fed, at_end, replies = answers(service, cut(data, positions))
    assert len(fed) == ended
    assert len(at_end) == (1 if pending else 0)
    policy = service.config.policy
    allowed = {b"DUNNO", policy.reject_reply.encode(), policy.defer_reply.encode(), policy.busy_reply.encode()}
    numbered = [  # the replies that name a size or a limit, with a 5xx code or (on_full = defer) a 4xx
        re.compile(
            (r"[45]\d\d [45]\.\d\.\d " + re.escape(reply.split(" ", 2)[2]))
            .replace(r"\{size\}", r"\d+")
            .replace(r"\{limit\}", r"\d+")
            .encode()
        )
        for reply in (policy.fit_reply, policy.messages_reply)
    ]
    for item, reply in zip(fed + at_end, replies, strict=True):
        assert reply.startswith(b"action=") and reply.endswith(b"\n\n"), reply
        action = reply.removeprefix(b"action=").removesuffix(b"\n\n")
        assert action in allowed or any(p.fullmatch(action) for p in numbered), reply
        event(f"{type(item).__name__} {action.decode()[:3]}")  # --hypothesis-show-statistics shows the mix
        assert b"\n" not in action and b"\r" not in action and b"\0" not in action
        if action != b"DUNNO":  # only a recipient at RCPT (or Exim's stateless request) is ever refused
            assert isinstance(item, PolicyRequest)
            assert item.request != DELIVERY_HINT and item.protocol_state in ("RCPT", "")
    # DUNNO by way of the catch-all in PolicyService.answer would hide a bug: none may take it.
    assert internal_errors(service) == errors_before


def test_the_site_is_consulted(services: dict[str, PolicyService]) -> None:
    data = request(FULL) + request(ROOMY, 10) + request("stranger@example.org") + request(FULL, end=False)
    _, _, replies = answers(services["reject"], [data])
    assert replies == [
        b"action=552 5.2.2 Mailbox is full\n\n",
        b"action=DUNNO\n\n",
        b"action=DUNNO\n\n",
        b"action=552 5.2.2 Mailbox is full\n\n",
    ]
    _, _, replies = answers(services["defer"], [request(FULL)])
    assert replies == [b"action=452 4.2.2 Mailbox is full\n\n"]


positions = st.lists(st.integers(min_value=0, max_value=10**6), max_size=20)
on_full = st.sampled_from(["reject", "defer"])


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.one_of(st.binary(max_size=400), noise), positions, on_full)
def test_any_bytes_give_one_well_formed_answer_per_request(
    services: dict[str, PolicyService], data: bytes, cut_at: list[int], refusal: str
) -> None:
    check_stream(services[refusal], data, cut_at)


any_text = st.text(st.characters(codec="utf-8"), max_size=40)
known = st.sampled_from(
    [FULL, ROOMY, "FULL@Example.ORG", f" {FULL} ", "full+Sent@example.org", "full+Trash@example.org",
     "roomy+Sent@example.org", "full+@example.org", "full+a+b@example.org", "+@example.org", "@", ""]
)  # fmt: skip
mangled = st.tuples(known, any_text).map("".join) | st.tuples(any_text, known).map("".join)
sizes = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", "-1", "0", str(2**63 - 1), str(2**63), "9" * 5000, "1e9", "١٢"]),
    any_text,
)
names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
# (attribute, what a real MTA sends, what a hostile peer might): the first is drawn more often,
# so that most requests reach a decision on a mailbox.
FIELDS = (
    ("request", st.just("smtpd_access_policy"), st.sampled_from([DELIVERY_HINT, ""]) | any_text),
    ("protocol_state", st.sampled_from(["RCPT", "rcpt", ""]), st.sampled_from(["DATA", "VRFY"]) | any_text),
    ("recipient", known, mangled | any_text),
    ("size", st.integers(0, 20_000).map(str), sizes),
)


@st.composite
def hostile_request(draw: st.DrawFn) -> bytes:
    """One request, well framed or nearly so, with hostile values (which may hold line breaks)."""
    attributes: dict[str, str] = draw(st.dictionaries(names, any_text, max_size=draw(st.sampled_from([3, 70]))))
    for name, usual, hostile in FIELDS:
        choice = draw(st.integers(0, 9))
        if choice:  # absent one time in ten
            attributes[name] = draw(usual if choice > 3 else hostile)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    ending = draw(st.sampled_from([newline, newline, ""]))  # Exim may leave out the empty line
    return ("".join(f"{name}={value}{newline}" for name, value in attributes.items()) + ending).encode()


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(hostile_request() | noise, min_size=1, max_size=4).map(b"".join), positions, on_full)
def test_hostile_requests_give_one_well_formed_answer_each(
    services: dict[str, PolicyService], data: bytes, cut_at: list[int], refusal: str
) -> None:
    check_stream(services[refusal], data, cut_at)
