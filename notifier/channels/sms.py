"""The ``sms`` channel: the Twilio-compatible Messages API, so any compatible gateway works.

``POST {base}/2010-04-01/Accounts/{sid}/Messages.json`` with form fields ``To``, ``From`` and
``Body`` and HTTP basic auth; the answer's ``sid`` is the provider message id.
"""

from __future__ import annotations

from notifier.channels import http
from notifier.domain import Notification


class SmsChannel:
    def __init__(self, base_url: str, account_sid: str, auth_token: str, sender: str, *, timeout: float) -> None:
        self.url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self.sender = sender
        self._auth = (account_sid, auth_token)
        self._http = http.client(timeout)

    def send(self, notification: Notification) -> str | None:
        response = http.post(
            self._http,
            self.url,
            data={"To": notification.recipient, "From": self.sender, "Body": notification.body},
            auth=self._auth,
        )
        # The gateway has accepted the message: whatever its answer looks like, this is a success.
        try:
            answer = response.json()
        except ValueError:
            return None
        sid = answer.get("sid") if isinstance(answer, dict) else None
        return str(sid) if sid else None

    def close(self) -> None:
        self._http.close()
