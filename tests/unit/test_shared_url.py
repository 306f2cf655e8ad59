import pytest

from quotagate.config import ConfigError, parse_config
from quotagate.sharedurl import SharedUrl, parse_shared_url


def test_redis_urls_go_to_redis_py_as_they_are() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://:secret@redis.example.org:6380/2", "redis://localhost"):
        assert parse_shared_url(url) == SharedUrl(url)


def test_sentinel_urls_are_taken_apart() -> None:
    parsed = parse_shared_url("redis+sentinel://:s%40cret@10.0.0.1:26379,[fd00::2]:26380,sentinel3/mymaster/2")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("fd00::2", 26380), ("sentinel3", 26379))
    assert (parsed.service, parsed.db, parsed.password) == ("mymaster", 2, "s@cret")
    assert parsed.sentinel


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:6379", "scheme"),
        ("127.0.0.1:6379", "scheme"),
        ("redis+sentinel://10.0.0.1:26379", "service"),
        ("redis+sentinel:///mymaster", "no Sentinel host"),
        ("redis+sentinel://10.0.0.1:http/mymaster", "HOST:PORT"),
        ("redis+sentinel://10.0.0.1/mymaster/x", "number"),
    ],
)
def test_a_bad_url_is_a_config_error_naming_the_key(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=rf"shared\.url: .*{says}"):
        parse_config({"shared": {"url": url}})


def test_without_shared_nothing_is_shared() -> None:
    assert parse_config({}).shared.parsed is None
