"""Which network addresses a webhook may reach: the server-side request forgery policy. Pure: no I/O.

A webhook URL is the client's choice, and the worker sends from inside the network, so by default
it may reach only public (globally routable unicast) addresses. Refused are loopback, private
(RFC 1918, ``fc00::/7``), link-local, shared (``100.64.0.0/10``), unspecified, multicast,
reserved and other special-purpose addresses, in any spelling a resolver accepts: ``127.1``,
``2130706433``, ``0x7f.1``, ``0177.0.0.1``, and IPv6 forms that carry an IPv4 address
(IPv4-mapped ``::ffff:127.0.0.1``, 6to4 ``2002:7f00:1::``, NAT64 ``64:ff9b::7f00:1``), which are
judged by the IPv4 address they carry. ``AddressPolicy.allowed`` lists networks let through anyway.

The API refuses what it can know from the URL alone (:meth:`AddressPolicy.host_refusal`: literal
addresses and ``localhost`` names); the webhook channel resolves every other name when it sends,
checks every address with :meth:`AddressPolicy.refusal`, and connects only to an address it checked.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from notifier.errors import InvalidNotification

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_SETTING = "NOTIFIER_WEBHOOK_ALLOWED_NETWORKS"
"""The setting that lists the networks let through; named in refusals so an operator knows the way out."""

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_PRIVATE: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
    ipaddress.IPv6Network("fc00::/7"),
)
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})
"""Unicode categories no URL may carry raw: controls, format characters, surrogates and separators."""
_LOCALHOST = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))
"""What ``localhost`` and ``*.localhost`` name (RFC 6761), whatever a resolver says."""


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``10.0.0.0/8``-style networks (a bare address is a network of one); ``ValueError`` names a bad one."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP network such as 10.0.0.0/8 or fd00::/8") from None
    return tuple(networks)


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """The address ``text`` spells as ``inet_aton`` reads it, or ``None`` when it is not one.

    One to four parts, each decimal, octal (a leading ``0``) or hex (``0x``); the last part fills
    the bytes left, so ``127.1`` is 127.0.0.1 and ``2130706433`` is too. This is how the C
    resolver reads a host name before it asks DNS, so it is how a URL's host must be judged.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        lowered = part.lower()
        if lowered.startswith("0x"):
            base, digits = 16, lowered[2:] or "0"
        elif len(part) > 1 and part.startswith("0"):
            base, digits = 8, part[1:]
        else:
            base, digits = 10, part
        if not digits or not all(c in "0123456789abcdef"[:base] for c in digits):
            return None
        values.append(int(digits, base))
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, value in enumerate(head):
        number |= value << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host spells literally (``[::1]``, ``127.1``, ``0x7f.1``), or ``None`` for a name."""
    host = host.removeprefix("[").removesuffix("]")
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.replace("%25", "%", 1))
        except ValueError:
            return None
    return parse_ipv4(host.removesuffix("."))


def is_localhost_name(host: str) -> bool:
    """``localhost`` or a name under it (RFC 6761 reserves them all for loopback), trailing dot or not."""
    name = host.lower().removesuffix(".")
    return name == "localhost" or name.endswith(".localhost")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and is routed to: IPv4-mapped, 6to4 or NAT64."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def classify(address: IPAddress) -> str | None:
    """What kind of non-public address ``address`` is (``"loopback"``, ``"private"``…), ``None`` if public."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in _SHARED:
        return "shared (carrier-grade NAT)"
    if any(address in network for network in _PRIVATE):
        return "private"
    if address.is_reserved:
        return "reserved"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    if not address.is_global:
        return "special-purpose"
    return None


def _an_address(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses only, except the ``allowed`` networks."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> AddressPolicy:
        return cls(parse_networks(cidrs))

    def _allows(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self.allowed)

    def refusal(self, address: IPAddress) -> str | None:
        """Why a webhook may not connect to ``address``, as a phrase, or ``None`` when it may.

        ``"10.0.0.5, a private address"``; ``"::ffff:a00:5, which carries 10.0.0.5, a private address"``.
        """
        inner = embedded_ipv4(address)
        if self._allows(address) or (inner is not None and self._allows(inner)):
            return None
        if inner is not None:
            kind = classify(inner)
            return None if kind is None else f"{address}, which carries {inner}, {_an_address(kind)}"
        kind = classify(address)
        return None if kind is None else f"{address}, {_an_address(kind)}"

    def explain(self, host: str, address: IPAddress, *, resolved: bool) -> str | None:
        """The refusal of ``address`` as a sentence about ``host`` (which is, or resolves to, it), or ``None``."""
        phrase = self.refusal(address)
        if phrase is None:
            return None
        spelled = host.removeprefix("[").removesuffix("]")
        if resolved and spelled != str(address):
            sentence = f"{host} resolves to {phrase}"
        elif spelled != str(address):
            sentence = f"{host} is {phrase}"
        else:
            rest = phrase.removeprefix(f"{address}, ")
            sentence = f"{host} {rest.removeprefix('which ')}" if rest.startswith("which ") else f"{host} is {rest}"
        return f"{sentence}; webhooks reach only public addresses unless {ALLOW_SETTING} allows the network"

    def host_refusal(self, host: str) -> str | None:
        """Why a URL with this host can never be sent, when the host alone tells (an address, ``localhost``).

        Any other name is judged when the webhook is sent, by the addresses it then resolves to.
        """
        if is_localhost_name(host):
            for loopback in _LOCALHOST:
                if reason := self.explain(host, loopback, resolved=True):
                    return reason
            return None
        address = literal_address(host)
        return None if address is None else self.explain(host, address, resolved=False)


PUBLIC_ONLY = AddressPolicy()
"""The default policy: webhooks reach public addresses only."""


def webhook_url(url: str, policy: AddressPolicy) -> str:
    """Check a webhook recipient as the channel will read it; raise ``InvalidNotification`` naming ``recipient``.

    The URL is parsed by the same parser (httpx's) that the channel sends with, so a URL accepted
    here is one the channel can send to, and the host judged here is the host it connects to.
    """
    for position, char in enumerate(url):
        if unicodedata.category(char) in _UNSAFE:
            raise InvalidNotification(
                "recipient", f"must not contain spaces or control characters (U+{ord(char):04X} at {position})"
            )
    try:
        parsed = httpx.URL(url)
        parsed.host  # noqa: B018 - decoding an A-label (``xn--…``) is where idna refuses a malformed one
    except httpx.InvalidURL as exc:
        raise InvalidNotification("recipient", f"not a valid URL: {exc}") from None
    except ValueError:  # idna's errors for hosts it cannot encode or decode
        raise InvalidNotification("recipient", "not a valid URL: its host is not a valid domain name") from None
    # The ASCII (IDNA) form is what the channel resolves and connects to, so it is what is judged.
    host = parsed.raw_host.decode("ascii")
    if parsed.scheme not in ("http", "https") or not host:
        raise InvalidNotification("recipient", "not an absolute http(s) URL")
    if ":" not in host and not _HOST_NAME.fullmatch(host):
        raise InvalidNotification("recipient", f"host {host!r} is not a valid host name")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise InvalidNotification("recipient", "port must be between 1 and 65535")
    if reason := policy.host_refusal(host):
        raise InvalidNotification("recipient", reason)
    return url
