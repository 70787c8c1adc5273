"""Delivery channels, one module each, all behind :class:`notifier.channels.base.Channel`."""

from __future__ import annotations

from notifier.channels.base import Channel as ChannelImpl
from notifier.domain import Channel
from notifier.domain.addresses import AddressPolicy
from notifier.errors import ChannelNotConfigured
from notifier.settings import Settings, SmtpServer

SETTING = {Channel.EMAIL: "NOTIFIER_SMTP_URL", Channel.SMS: "NOTIFIER_SMS_BASE_URL"}
"""The variable that turns a channel on, for the channels that are off until configured."""


def check_configured(channel: Channel, enabled: frozenset[Channel]) -> None:
    if channel not in enabled:
        raise ChannelNotConfigured(channel, SETTING.get(channel, "its settings"))


def configured(settings: Settings) -> frozenset[Channel]:
    """The channels this deployment can deliver on: log and webhook always, email and SMS when set up."""
    enabled = {Channel.LOG, Channel.WEBHOOK}
    if settings.smtp.url:
        enabled.add(Channel.EMAIL)
    if settings.sms.base_url:
        enabled.add(Channel.SMS)
    return frozenset(enabled)


def build(settings: Settings) -> dict[Channel, ChannelImpl]:
    """One instance of each configured channel, shared by a worker process's threads."""
    from notifier.channels.email import EmailChannel
    from notifier.channels.log import LogChannel
    from notifier.channels.sms import SmsChannel
    from notifier.channels.webhook import WebhookChannel

    def timeout(channel: Channel) -> float:
        return settings.policy(channel.value).timeout

    built: dict[Channel, ChannelImpl] = {
        Channel.LOG: LogChannel(),
        Channel.WEBHOOK: WebhookChannel(
            settings.webhook.secret,
            timeout=timeout(Channel.WEBHOOK),
            policy=AddressPolicy.from_cidrs(settings.webhook.allowed_networks),
        ),
    }
    if settings.smtp.url:
        smtp = SmtpServer.parse(settings.smtp.url)
        built[Channel.EMAIL] = EmailChannel(smtp, settings.smtp.sender, timeout=timeout(Channel.EMAIL))
    if settings.sms.base_url:
        sms = settings.sms
        built[Channel.SMS] = SmsChannel(
            sms.base_url, sms.account_sid, sms.auth_token, sms.sender, timeout=timeout(Channel.SMS)
        )
    return built
