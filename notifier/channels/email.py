"""The ``email`` channel: SMTP with STARTTLS or implicit TLS and AUTH, plain text plus optional HTML."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from notifier.domain import Notification
from notifier.errors import DeliveryTimeout, PermanentDeliveryError, TransientDeliveryError
from notifier.observability import tracing
from notifier.settings import SmtpServer


class EmailChannel:
    def __init__(
        self, server: SmtpServer, sender: str, *, timeout: float, tls_context: ssl.SSLContext | None = None
    ) -> None:
        self.server = server
        self.sender = sender
        self.timeout = timeout
        # The system's trust store unless told otherwise (tests pass a context trusting their own CA).
        self._tls = tls_context if tls_context is not None else ssl.create_default_context()

    def message(self, notification: Notification) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = notification.recipient
        msg["Subject"] = notification.subject or ""
        msg["Date"] = formatdate(localtime=False)
        # The notification id makes the Message-ID stable, so receivers can spot a redelivery.
        msg["Message-ID"] = f"<{notification.id}@notifier>"
        msg.set_content(notification.body)
        html = notification.metadata.get("html")
        if isinstance(html, str):
            msg.add_alternative(html, subtype="html")
        return msg

    def send(self, notification: Notification) -> str | None:
        try:
            msg = self.message(notification)
        except (ValueError, TypeError) as exc:
            raise PermanentDeliveryError(f"cannot build the email: {exc}") from None
        try:
            with (
                tracing.client("smtp send", **{"server.address": self.server.host, "server.port": self.server.port}),
                self._connect() as smtp,
            ):
                if self.server.username is not None:
                    smtp.login(self.server.username, self.server.password or "")
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reason = next(iter(exc.recipients.values()))
            raise _classify(code, reason) from None
        except smtplib.SMTPResponseException as exc:
            raise _classify(exc.smtp_code, exc.smtp_error) from None
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            raise DeliveryTimeout(f"timeout: SMTP {self.server.host}:{self.server.port}: {exc}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError(f"SMTP {self.server.host}:{self.server.port}: {exc}") from None
        return str(msg["Message-ID"])

    def _connect(self) -> smtplib.SMTP:
        host, port = self.server.host, self.server.port
        if self.server.implicit_tls:
            return smtplib.SMTP_SSL(host, port, timeout=self.timeout, context=self._tls)
        smtp = smtplib.SMTP(host, port, timeout=self.timeout)
        try:
            if self.server.starttls:
                smtp.starttls(context=self._tls)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def close(self) -> None:
        pass


def _classify(code: int, reason: bytes | str) -> TransientDeliveryError | PermanentDeliveryError:
    text = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
    message = f"SMTP {code} {text}"
    return TransientDeliveryError(message) if 400 <= code < 500 else PermanentDeliveryError(message)
