"""One typed settings tree, read once from ``NOTIFIER_*`` environment variables.

Every field of every group is one variable, named ``NOTIFIER_<GROUP>_<FIELD>`` after the group's
``env_group`` and the field's encoded name (``SmtpSettings.sender`` is ``NOTIFIER_SMTP_FROM``).
Each field's ``Meta(description=...)`` is its documentation: ``notifier settings`` prints the
table that the README carries. A value that does not parse or validate stops the process with a
:class:`~notifier.errors.ConfigurationError` naming the variable.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, get_args, get_origin, get_type_hints
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

from notifier.errors import ConfigurationError

PREFIX = "NOTIFIER_"


def _doc(text: str) -> Any:
    return msgspec.Meta(description=text)


def _scheme(url: str, field: str) -> str:
    """The URL's scheme, or ``ValueError(field, reason)`` when it does not parse."""
    try:
        return urlsplit(url).scheme
    except ValueError as exc:
        raise ValueError(field, f"is not a valid URL ({exc})") from None


class Group(msgspec.Struct, frozen=True, kw_only=True):
    """A settings group; ``env_group`` is the middle part of its variables' names."""

    env_group: ClassVar[str]

    def validate(self) -> None:
        """Check values that their types alone cannot; raise ``ValueError(field, reason)``."""


class DatabaseSettings(Group, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "DATABASE"
    url: Annotated[str, _doc("PostgreSQL URL, `postgresql://user:pass@host:5432/db`.")]
    pool_size: Annotated[int, _doc("Connections per process in each pool."), msgspec.Meta(ge=1)] = 10

    def validate(self) -> None:
        if _scheme(self.url, "url") not in ("postgres", "postgresql"):
            raise ValueError("url", "must be a postgresql:// URL")


class RedisSettings(Group, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "REDIS"
    url: Annotated[str, _doc("Redis URL: `redis://host:6379/0`, `rediss://…` or `unix:///path`.")]
    namespace: Annotated[str, _doc("Prefix of every Redis key the queues use.")] = "notifier"

    def validate(self) -> None:
        if _scheme(self.url, "url") not in ("redis", "rediss", "unix"):
            raise ValueError("url", "must be a redis://, rediss:// or unix:// URL")
        if not self.namespace or ":" in self.namespace:
            raise ValueError("namespace", "must be non-empty and contain no ':'")


class ApiSettings(Group, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "API"
    keys: Annotated[
        list[str],
        _doc(
            "Comma-separated bearer keys; every route but /healthz, /readyz, /static/ and /metrics (unless"
            " NOTIFIER_METRICS_AUTH=true) needs one."
        ),
    ] = []
    host: Annotated[str, _doc("Address `notifier api` binds.")] = "127.0.0.1"
    port: Annotated[int, _doc("Port `notifier api` binds."), msgspec.Meta(ge=0, le=65535)] = 8000
    access_log: Annotated[
        bool, _doc("`true` logs every request (a JSON line each); off by default, it costs throughput.")
    ] = False
    max_body_size: Annotated[
        int, _doc("Largest request body accepted, in bytes (larger: 413)."), msgspec.Meta(ge=1024)
    ] = 1_048_576


class AuthSettings(Group, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "AUTH"
    disabled: Annotated[bool, _doc("`true` lets `notifier api` run without API keys. Never in production.")] = False


class RetrySettings(Group, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "RETRY"
    max_attempts: Annotated[int, _doc("Attempts per notification, the first included."), msgspec.Meta(ge=1, le=100)] = 5
    min_backoff: Annotated[
        float, _doc("Seconds before the first retry; doubles per retry, with jitter."), msgspec.Meta(gt=0)
    ] = 1.0
    max_backoff: Annotated[float, _doc("Longest wait between two attempts, in seconds."), msgspec.Meta(gt=0)] = 300.0

    def validate(self) -> None:
        if self.max_backoff < self.min_backoff:
            raise ValueError("max_backoff", "must not be below NOTIFIER_RETRY_MIN_BACKOFF")


class DeliverySettings(Group, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "DELIVERY"
    timeout: Annotated[
        float, _doc("Bound on one provider call (connect, send, answer), in seconds."), msgspec.Meta(gt=0)
    ] = 10.0
    outbox_interval: Annotated[
        float,
        _doc(
            "Seconds between the outbox relay's full passes, which enqueue what Redis missed or lost; scheduled"
            " notifications are enqueued as they fall due, whatever this is."
        ),
        msgspec.Meta(gt=0),
    ] = 1.0
    requeue_after: Annotated[
        float,
        _doc("A notification still waiting this many seconds after it was due and enqueued is enqueued again."),
        msgspec.Meta(gt=0),
    ] = 300.0
    lease: Annotated[
        float,
        _doc(
            "Seconds a worker holds a notification it is sending; after that, should the worker have died,"
            " the notification is delivered again. Must exceed 3 x the longest timeout + 5 (the hard time limit)."
        ),
        msgspec.Meta(gt=0),
    ] = 60.0
    schedule_horizon: Annotated[
        float,
        _doc(
            "Notifications due within this many seconds wait in Redis as Dramatiq delayed messages; later ones"
            " wait in PostgreSQL. 0: each waits in PostgreSQL until it is due, then the relay enqueues it."
        ),
        msgspec.Meta(ge=0),
    ] = 0.0


class SchedulerSettings(Group, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "SCHEDULER"
    lookahead: Annotated[
        float,
        _doc("Seconds ahead that rule firings become notifications; more than the one-minute tick."),
        msgspec.Meta(ge=61),
    ] = 120.0
    misfire_grace: Annotated[
        float,
        _doc("Under misfire `once`, a missed firing at most this many seconds old still fires (once)."),
        msgspec.Meta(ge=0),
    ] = 3600.0
    metrics_port: Annotated[
        int,
        _doc("Port `notifier scheduler` serves its Prometheus metrics on (on NOTIFIER_METRICS_HOST)."),
        msgspec.Meta(ge=0, le=65535),
    ] = 9192


class TemplateSettings(Group, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "TEMPLATE"
    render_budget: Annotated[
        float,
        _doc(
            "Seconds one rule template may take to render (subject, body or a recipient); slower ones fail"
            " with the reason, and are refused when a rule is saved."
        ),
        msgspec.Meta(gt=0, le=10),
    ] = 0.05


PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class ChannelOverrides(Group, frozen=True, kw_only=True):
    """Per-channel overrides of the retry and timeout settings; unset means the global value."""

    max_attempts: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=100)] | None, _doc("This channel's NOTIFIER_RETRY_MAX_ATTEMPTS.")
    ] = None
    min_backoff: Annotated[PositiveFloat | None, _doc("This channel's NOTIFIER_RETRY_MIN_BACKOFF.")] = None
    max_backoff: Annotated[PositiveFloat | None, _doc("This channel's NOTIFIER_RETRY_MAX_BACKOFF.")] = None
    timeout: Annotated[PositiveFloat | None, _doc("This channel's NOTIFIER_DELIVERY_TIMEOUT.")] = None


class SmtpSettings(ChannelOverrides, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "SMTP"
    url: Annotated[
        str,
        _doc("SMTP server: `smtp://user:pass@host:587?starttls=true` or `smtps://…:465`. Empty: email off."),
    ] = ""
    sender: Annotated[str, _doc("The `From` address of every email.")] = msgspec.field(
        default="notifier@localhost", name="from"
    )

    def validate(self) -> None:
        if self.url:
            SmtpServer.parse(self.url)


class SmsSettings(ChannelOverrides, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "SMS"
    base_url: Annotated[
        str, _doc("Base URL of a Twilio-compatible API, e.g. `https://api.twilio.com`. Empty: SMS off.")
    ] = ""
    account_sid: Annotated[str, _doc("Account SID: the path segment and the basic-auth user.")] = ""
    auth_token: Annotated[str, _doc("Auth token: the basic-auth password.")] = ""
    sender: Annotated[str, _doc("The `From` number (E.164) or sender id.")] = msgspec.field(default="", name="from")

    def validate(self) -> None:
        if self.base_url:
            if _scheme(self.base_url, "base_url") not in ("http", "https"):
                raise ValueError("base_url", "must be an http(s) URL")
            for name in ("account_sid", "auth_token", "sender"):
                if not getattr(self, name):
                    raise ValueError(name, "is required when NOTIFIER_SMS_BASE_URL is set")


class WebhookSettings(ChannelOverrides, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "WEBHOOK"
    secret: Annotated[str, _doc("Standard Webhooks signing secret, `whsec_<base64>`. Empty: webhooks go unsigned.")] = (
        ""
    )
    allowed_networks: Annotated[
        list[str],
        _doc(
            "Comma-separated networks (CIDR, e.g. `10.0.0.0/8,fd00::/8`) that webhooks may reach although they are"
            " internal; by default only public addresses are (see Security)."
        ),
    ] = []

    def validate(self) -> None:
        for cidr in self.allowed_networks:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError("allowed_networks", f"has {cidr!r}, which is not a network like 10.0.0.0/8") from None
        if self.secret:
            if not self.secret.startswith("whsec_"):
                raise ValueError("secret", "must start with whsec_")
            try:
                key = base64.b64decode(self.secret.removeprefix("whsec_"), validate=True)
            except ValueError:
                raise ValueError("secret", "is not valid base64 after whsec_") from None
            if len(key) < 24:
                raise ValueError("secret", "must decode to at least 24 bytes")


class MetricsSettings(Group, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "METRICS"
    enabled: Annotated[
        bool, _doc("`false` turns every Prometheus metric off: none served by the API, the worker or the scheduler.")
    ] = True
    auth: Annotated[bool, _doc("`true` puts the API's metrics behind the API keys; they are public otherwise.")] = False
    host: Annotated[str, _doc("Address the worker's and the scheduler's metrics servers bind.")] = "0.0.0.0"  # noqa: S104
    dir: Annotated[
        str,
        _doc(
            "Directory the worker's processes share their metrics through (Prometheus multiprocess mode), one per"
            " `notifier worker`; its `*.db` files are removed as it starts. Empty: a directory of its own under the"
            " system's temporary directory, removed as it stops."
        ),
    ] = ""


class LogSettings(Group, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "LOG"
    level: Annotated[str, _doc("Log level: DEBUG, INFO, WARNING or ERROR.")] = "INFO"

    def validate(self) -> None:
        if self.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("level", "must be DEBUG, INFO, WARNING or ERROR")


class WorkerSettings(Group, frozen=True, kw_only=True):
    env_group: ClassVar[str] = "WORKER"
    heartbeat_timeout: Annotated[
        float,
        _doc(
            "Seconds after which a silent worker counts as dead and Redis hands its unfinished messages to the others."
        ),
        msgspec.Meta(ge=5),
    ] = 15.0
    metrics_port: Annotated[
        int,
        _doc(
            "Port `notifier worker` serves the Prometheus metrics of all its processes on (Dramatiq's and"
            " notifier's delivery families, on NOTIFIER_METRICS_HOST)."
        ),
        msgspec.Meta(ge=0, le=65535),
    ] = 9191


@dataclass(frozen=True)
class DeliveryPolicy:
    """The retry and timeout settings in force for one channel."""

    max_attempts: int
    min_backoff: float
    max_backoff: float
    timeout: float


CHANNEL_GROUPS = {"email": "smtp", "sms": "sms", "webhook": "webhook"}


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """The whole tree; one attribute per group."""

    database: DatabaseSettings
    redis: RedisSettings
    api: ApiSettings = ApiSettings()
    auth: AuthSettings = AuthSettings()
    retry: RetrySettings = RetrySettings()
    delivery: DeliverySettings = DeliverySettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    template: TemplateSettings = TemplateSettings()
    smtp: SmtpSettings = SmtpSettings()
    sms: SmsSettings = SmsSettings()
    webhook: WebhookSettings = WebhookSettings()
    worker: WorkerSettings = WorkerSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()

    def policy(self, channel: str) -> DeliveryPolicy:
        """The global retry and timeout settings, with ``channel``'s overrides applied."""
        group = CHANNEL_GROUPS.get(channel)
        overrides: ChannelOverrides = getattr(self, group) if group else ChannelOverrides()

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return DeliveryPolicy(
            max_attempts=pick(overrides.max_attempts, self.retry.max_attempts),
            min_backoff=pick(overrides.min_backoff, self.retry.min_backoff),
            max_backoff=pick(overrides.max_backoff, self.retry.max_backoff),
            timeout=pick(overrides.timeout, self.delivery.timeout),
        )

    @property
    def time_limit(self) -> float:
        """Seconds after which Dramatiq interrupts a delivery: the backstop behind the timeouts."""
        return max(self.policy(channel).timeout for channel in (*CHANNEL_GROUPS, "log")) * 3 + 5


@dataclass(frozen=True)
class SmtpServer:
    """``NOTIFIER_SMTP_URL`` taken apart."""

    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool
    starttls: bool

    @classmethod
    def parse(cls, url: str) -> SmtpServer:
        if _scheme(url, "url") not in ("smtp", "smtps"):
            raise ValueError("url", "must be an smtp:// or smtps:// URL")
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("url", "must be an smtp:// or smtps:// URL")
        if not parts.hostname:
            raise ValueError("url", "has no host")
        query = parse_qs(parts.query)
        starttls = query.get("starttls", ["false"])[-1].lower() in ("1", "true", "yes")
        implicit_tls = parts.scheme == "smtps"
        try:
            port = parts.port or (465 if implicit_tls else 587 if starttls else 25)
        except ValueError:
            raise ValueError("url", "has an invalid port") from None
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit_tls,
            starttls=starttls and not implicit_tls,
        )


@dataclass(frozen=True)
class SettingDoc:
    """One row of the configuration table."""

    env: str
    type: str
    default: str
    description: str


def _groups() -> Iterator[tuple[str, type[Group]]]:
    for field in msgspec.structs.fields(Settings):
        yield field.name, field.type


def _env_name(group: type[Group], field: msgspec.structs.FieldInfo) -> str:
    return f"{PREFIX}{group.env_group}_{field.encode_name.upper()}"


def describe() -> list[SettingDoc]:
    """Every variable, in the order of the tree, for the README's configuration table."""
    rows: list[SettingDoc] = []
    for _, group in _groups():
        hints = get_type_hints(group, include_extras=True)
        for field in msgspec.structs.fields(group):
            metas = getattr(hints[field.name], "__metadata__", ())
            description = " ".join(m.description for m in metas if getattr(m, "description", None))
            rows.append(SettingDoc(_env_name(group, field), _type_name(field.type), _default(field), description))
    return rows


def _type_name(annotation: Any) -> str:
    base = get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
    if base == list[str]:
        return "list of strings"
    members = [a for a in get_args(base) if a is not type(None)]
    if members:
        return _type_name(members[0])
    return str(base.__name__)


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.default_factory is not msgspec.NODEFAULT:
        return "(empty)"
    if field.default is msgspec.NODEFAULT:
        return "required"
    if field.default is None:
        return "(global)"
    if field.default == "":
        return "(empty)"
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    return f"`{field.default}`"


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the tree from ``environ`` (default ``os.environ``), or raise ``ConfigurationError``."""
    env = os.environ if environ is None else environ
    tree: dict[str, dict[str, Any]] = {}
    names: dict[tuple[str, str], str] = {}
    for group_name, group in _groups():
        values: dict[str, Any] = {}
        for field in msgspec.structs.fields(group):
            var = _env_name(group, field)
            names[(group_name, field.encode_name)] = var
            if var in env:
                raw = env[var].strip()
                if _type_name(field.type) == "list of strings":
                    values[field.encode_name] = [item.strip() for item in raw.split(",") if item.strip()]
                else:
                    values[field.encode_name] = raw
        tree[group_name] = values
    try:
        settings = msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(_explain(str(exc), names)) from None
    for group_name, _ in _groups():
        group_value: Group = getattr(settings, group_name)
        try:
            group_value.validate()
        except ValueError as exc:
            field_name, reason = exc.args
            encoded = next(f.encode_name for f in msgspec.structs.fields(type(group_value)) if f.name == field_name)
            raise ConfigurationError(f"{names[(group_name, encoded)]} {reason}") from None
    if settings.delivery.lease <= settings.time_limit:
        raise ConfigurationError(
            "NOTIFIER_DELIVERY_LEASE must exceed 3 x the longest delivery timeout + 5"
            f" = {settings.time_limit:g} seconds"
        )
    return settings


def load_database(environ: Mapping[str, str] | None = None) -> DatabaseSettings:
    """Only the database group, for commands that need nothing else (``notifier migrate``)."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault(f"{PREFIX}REDIS_URL", "redis://unused")
    return load(env).database


def _explain(message: str, names: dict[tuple[str, str], str]) -> str:
    """Turn msgspec's ``... - at `$.smtp.from``` into a sentence naming the variable."""
    text, _, where = message.rpartition(" - at ")
    path = where.strip("`").removeprefix("$.").split(".")
    if "Object missing required field" in message:
        group, field = where.strip("`").removeprefix("$.") if where else "", message.split("`")[1]
        return f"{names.get((group, field), field)} is required but not set"
    if len(path) >= 2 and (path[0], path[1].split("[")[0]) in names:
        return f"{names[(path[0], path[1].split('[')[0])]} is invalid: {text[0].lower()}{text[1:]}"
    return message
