"""Alert events as plain data, and their delivery to the policy's log and webhook channels."""

# Delivery never blocks or breaks evaluation. LogNotifier writes one log record per event.
# WebhookNotifier hands each (event, URL) to one worker thread through a bounded queue: a full
# queue drops the delivery (counted and logged), a failed POST is logged and counted, and
# nothing is retried (an alert that keeps firing gives no event storm either: events are sent
# only when a rule starts or stops firing). Only the URLs of the channels passed in, which the
# evaluator takes from the policy, are ever called; redirects are not followed.

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from common.policy.policy_model import NotifyChannel, NotifyKind

log = logging.getLogger(__name__)

AlertState = Literal["firing", "cleared"]

WEBHOOK_TIMEOUT_S = 5.0  # the whole POST: connect, send, answer
WEBHOOK_QUEUE_SIZE = 256  # deliveries waiting; more are dropped


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertEvent:
    """A rule started ("firing") or stopped ("cleared") firing for one scope key."""

    rule: str
    metric: str  # an AlertMetric value
    scope: str  # an AlertScope value
    key: str  # the target, team or user measured; "*" for scope "all"
    value: float  # the metric when the state changed (cost metrics: currency units)
    threshold: float  # the threshold it was compared with (a "budget" read as its amount)
    op: str  # an AlertOp value
    action: str  # an AlertAction value
    at: float  # UTC epoch seconds, from the evaluator's clock
    state: AlertState
    reason: str = ""  # why it cleared when not by measurement: "rule removed", "rule changed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "metric": self.metric,
            "scope": self.scope,
            "key": self.key,
            "value": self.value,
            "threshold": self.threshold,
            "op": self.op,
            "action": self.action,
            "at": self.at,
            "state": self.state,
            "reason": self.reason,
        }


class Notifier(Protocol):
    def notify(self, event: AlertEvent, channels: tuple[NotifyChannel, ...]) -> None:
        """Deliver `event` to those of `channels` this notifier serves; never raises."""


class LogNotifier:
    """Logs each event whose channels include `log` (warning when firing, info when cleared)."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._logger = logger

    def notify(self, event: AlertEvent, channels: tuple[NotifyChannel, ...]) -> None:
        if not any(channel.kind is NotifyKind.LOG for channel in channels):
            return
        self._logger.log(
            logging.WARNING if event.state == "firing" else logging.INFO,
            "alert %s %s: %s %s=%s %s %s%s",
            event.rule,
            event.state,
            event.scope,
            event.key,
            event.value,
            event.op,
            event.threshold,
            f" ({event.reason})" if event.reason else "",
        )


class WebhookNotifier:
    """POSTs each event as JSON to the webhook channels' URLs from one worker thread."""

    def __init__(
        self,
        *,
        timeout_s: float = WEBHOOK_TIMEOUT_S,
        queue_size: int = WEBHOOK_QUEUE_SIZE,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._transport = transport
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(queue_size)
        self._idle = threading.Condition()
        self._pending = 0  # queued or being posted
        self._thread: threading.Thread | None = None
        self._closed = False
        self.delivered = 0
        self.failed = 0  # an error, a timeout or an answer that is not 2xx
        self.dropped = 0  # the queue was full, or the notifier closed

    def notify(self, event: AlertEvent, channels: tuple[NotifyChannel, ...]) -> None:
        body = event.to_dict()
        for channel in channels:
            if channel.kind is NotifyKind.WEBHOOK and channel.url:
                self._enqueue(channel.url, body)

    def wait_idle(self, timeout_s: float) -> bool:
        """True once every queued delivery is done (delivered or failed) within `timeout_s`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self, timeout_s: float = WEBHOOK_TIMEOUT_S) -> None:
        """Stops the worker after the deliveries already queued; later ones are dropped."""
        with self._idle:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    def _enqueue(self, url: str, body: dict[str, Any]) -> None:
        with self._idle:
            if self._closed:
                self.dropped += 1
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._deliver_all, name="alert-webhooks", daemon=True
                )
                self._thread.start()
            try:
                self._queue.put_nowait((url, body))
            except queue.Full:
                self.dropped += 1
                log.warning("alert webhook queue full: %s event for %s dropped", body["rule"], url)
                return
            self._pending += 1

    def _deliver_all(self) -> None:
        with httpx.Client(
            timeout=self._timeout_s, follow_redirects=False, transport=self._transport
        ) as client:
            while (item := self._queue.get()) is not None:
                url, body = item
                delivered = self._post(client, url, body)
                with self._idle:
                    if delivered:
                        self.delivered += 1
                    else:
                        self.failed += 1
                    self._pending -= 1
                    self._idle.notify_all()

    def _post(self, client: httpx.Client, url: str, body: dict[str, Any]) -> bool:
        try:
            answer = client.post(url, json=body)
        except httpx.HTTPError as exc:
            log.warning("alert webhook %s failed: %s", url, exc.__class__.__name__)
            return False
        except Exception:  # a delivery must never end the worker
            log.exception("alert webhook %s failed", url)
            return False
        if not answer.is_success:
            log.warning("alert webhook %s answered %d", url, answer.status_code)
            return False
        return True


class Notifiers:
    """Passes each event to several notifiers; one that raises is logged, the rest still run."""

    def __init__(self, *notifiers: Notifier) -> None:
        self._notifiers = notifiers

    def notify(self, event: AlertEvent, channels: tuple[NotifyChannel, ...]) -> None:
        for notifier in self._notifiers:
            try:
                notifier.notify(event, channels)
            except Exception:
                log.exception("alert notifier %s failed", type(notifier).__name__)
