"""The key room held for a folder is summed under, and the spellings a lowered folder detail may
have been written in: pure functions, over any name."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quotagate.policy.service import folder_key
from quotagate.usage.folders import spellings
from quotagate.usage.names import ascii_lower, ascii_upper

NAMES = st.text(alphabet=st.sampled_from("aAbB&-.+,/ÄäßK\u212a0"), max_size=12) | st.text(max_size=12)


@given(NAMES)
def test_a_key_is_its_own_key(name: str) -> None:
    """A restart keys again every row it restores: keying a key changes nothing."""
    key = folder_key(name)
    assert folder_key(key) == key


@given(NAMES.filter(lambda name: "&" not in name))
def test_every_spelling_of_the_capitals_of_a_name_has_one_key(name: str) -> None:
    """Postfix's ``+Archive``, Exim's ``+archive`` and ``+ARCHIVE`` hold room in one place; only
    A-Z are folded (Exim lowers nothing else). Not a name in modified UTF-7 (``Gel&APY-scht``),
    whose letters after ``&`` are base64: lowered by Exim, it names nothing any more."""
    assert folder_key(name) == folder_key(ascii_lower(name)) == folder_key(ascii_upper(name))


def test_the_spellings_of_a_lowered_name_are_as_it_is_capitalised_and_in_capitals() -> None:
    assert spellings("archive.2024") == ("archive.2024", "Archive.2024", "ARCHIVE.2024")
    assert spellings("projects/work") == ("projects/work", "Projects/Work", "PROJECTS/WORK")
    assert spellings("ärger") == ("ärger", "ärger", "äRGER")  # only A-Z: Exim's ÄRGER reached us as Ärger
