"""The webhook address policy: what the API refuses from the URL alone, in every spelling."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from notifier import settings as settings_module
from notifier.domain import Channel, normalise_recipient
from notifier.domain.addresses import AddressPolicy, parse_ipv4
from notifier.errors import ConfigurationError, InvalidNotification

INTERNAL = [
    ("http://127.0.0.1:8080/", "loopback"),
    ("http://[::1]:8080/", "loopback"),
    ("http://localhost:8080/", "loopback"),
    ("http://LOCALHOST./x", "loopback"),
    ("http://hooks.localhost/x", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://2130706433:8080/", "loopback"),
    ("http://127.1:8080/", "loopback"),
    ("http://0.0.0.0:8080/", "unspecified"),
    ("http://0:8080/", "unspecified"),
    ("http://0x7f.1/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://0177.1/", "loopback"),
    ("http://0177.0.0.1/", "not a valid URL"),  # httpx will not send to it, whatever it means
    ("http://127.0.0.1./", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[2002:7f00:1::]/", "loopback"),
    ("http://[64:ff9b::7f00:1]/", "loopback"),
    ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),
    ("http://10.1.2.3/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://100.64.0.1/", "shared"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://[::]/", "unspecified"),
    ("http://evil.example\\@127.0.0.1/", "loopback"),
]


@pytest.mark.parametrize(("url", "kind"), INTERNAL)
def test_an_internal_address_in_any_spelling_is_refused(url: str, kind: str) -> None:
    with pytest.raises(InvalidNotification) as caught:
        normalise_recipient(Channel.WEBHOOK, url)
    assert caught.value.field == "recipient"
    assert kind in caught.value.reason
    if kind != "not a valid URL":
        assert "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS" in caught.value.reason


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example/x?y=1",
        "http://93.184.215.14/hook",
        "http://[2606:4700:4700::1111]/hook",
        "http://[64:ff9b::808:808]/hook",  # NAT64 of a public address
        "https://user:pass@hooks.example:8443/x",
        "http://hooks.internal.example/",  # a name: judged by what it resolves to, when sent
        "https://例え.jp/hook",  # an internationalised name, sent as its A-label
        "https://xn--r8jz45g.jp/hook",
    ],
)
def test_a_public_address_or_a_name_is_accepted(url: str) -> None:
    assert normalise_recipient(Channel.WEBHOOK, url) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example/a b", "spaces or control characters"),
        ("http://hooks .example/", "spaces or control characters"),
        ("http://hooks.example/\x01", "spaces or control characters"),
        ("http://hooks.example/\x7f", "spaces or control characters"),
        ("http://hooks.example/x\u0085", "spaces or control characters"),
        ("http://hooks.example/x\u2028", "spaces or control characters"),
        ("http://hooks.example/x\u00a0", "spaces or control characters"),
        ("http://hooks.example/x\u200b", "spaces or control characters"),
        ("http://hoo\tks.example/", "spaces or control characters"),
        (" http://hooks.example/", "spaces or control characters"),
        ("http://hooks.example/\r\nX-Injected: 1", "spaces or control characters"),
        ("http://%31%32%37.0.0.1/", "not a valid host name"),
        ("http://hooks.example:99999/", "port"),
        ("http://\u2603.example/", "not a valid URL"),
        ("http://xn--/", "not a valid domain name"),
        ("http://xn--zz.example/", "not a valid domain name"),
        ("ftp://hooks.example/", "http(s)"),
        ("http:///path-only", "http(s)"),
    ],
)
def test_a_url_the_channel_cannot_send_to_is_refused(url: str, reason: str) -> None:
    with pytest.raises(InvalidNotification) as caught:
        normalise_recipient(Channel.WEBHOOK, url)
    assert caught.value.field == "recipient"
    assert reason in caught.value.reason


def test_allowed_networks_let_internal_targets_through() -> None:
    policy = AddressPolicy.from_cidrs(["127.0.0.0/8", "::1/128", "10.20.0.0/16"])
    for url in (
        "http://127.0.0.1:8080/",
        "http://127.1/",
        "http://[::1]/",
        "http://localhost:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.20.30.40/",
    ):
        assert normalise_recipient(Channel.WEBHOOK, url, policy) == url
    for url in ("http://10.21.0.1/", "http://169.254.169.254/", "http://192.168.0.1/"):
        with pytest.raises(InvalidNotification):
            normalise_recipient(Channel.WEBHOOK, url, policy)


def test_localhost_needs_both_loopback_addresses_allowed() -> None:
    # localhost may resolve to either; the channel refuses a name when any address is refused.
    only_v4 = AddressPolicy.from_cidrs(["127.0.0.0/8"])
    assert only_v4.host_refusal("127.0.0.1") is None
    assert "::1" in (only_v4.host_refusal("localhost") or "")


def test_every_address_the_resolver_checks_is_judged() -> None:
    policy = AddressPolicy()
    assert policy.explain("evil.example", ipaddress.ip_address("10.0.0.5"), resolved=True) == (
        "evil.example resolves to 10.0.0.5, a private address; webhooks reach only public addresses unless"
        " NOTIFIER_WEBHOOK_ALLOWED_NETWORKS allows the network"
    )
    assert policy.refusal(ipaddress.ip_address("93.184.215.14")) is None
    assert policy.refusal(ipaddress.ip_address("2002:5db8:d70e::1")) is None  # 6to4 of a public address


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f.1", "0X7F.0.0.1", "0177.0.0.1", "017700000001",
     "0x7f000001", "1.2.3.4", "255.255.255.255", "0", "256.0.0.1", "1.2.3.4.5", "08.0.0.1", "0x1g.0.0.1",
     "1..2", "example.com", "1.2.3.256", "4294967296", "1.16777216"],
)  # fmt: skip
def test_ipv4_spellings_are_read_as_inet_aton_reads_them(text: str) -> None:
    try:
        expected: ipaddress.IPv4Address | None = ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        expected = None
    assert parse_ipv4(text) == expected


def test_the_setting_takes_cidrs_and_refuses_anything_else() -> None:
    env = {"NOTIFIER_DATABASE_URL": "postgresql://db/x", "NOTIFIER_REDIS_URL": "redis://r"}
    loaded = settings_module.load({**env, "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/8, fd00::/8"})
    assert loaded.webhook.allowed_networks == ["10.0.0.0/8", "fd00::/8"]
    assert settings_module.load(env).webhook.allowed_networks == []
    with pytest.raises(ConfigurationError, match="NOTIFIER_WEBHOOK_ALLOWED_NETWORKS has 'intranet'"):
        settings_module.load({**env, "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"})
