"""The request path: MQTT messages in, predictions out, in micro-batches.

paho's network thread only appends incoming messages to a deque; the serving
thread drains up to ``max_micro_batch`` of them, validates each request, runs
one inference per variant for the whole batch, publishes the replies and only
then acknowledges the requests (manual QoS 1 acks), so a crash means
redelivery, never a lost request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any

import paho.mqtt.client as mqtt

from edgeloop_agent.deployment import Deployment
from edgeloop_agent.model import OnnxModel
from edgeloop_agent.mqttlink import MqttLink
from edgeloop_agent.protocol import (
    Code,
    PredictRequest,
    RequestError,
    Topics,
    dumps,
    error_reply,
    parse_feedback,
    parse_predict,
)

log = logging.getLogger("edgeloop.agent.serving")


@dataclass(slots=True)
class _Pending:
    msg: mqtt.MQTTMessage
    arrived: float
    request: PredictRequest
    rows: list[list[Any]]
    start: int = 0  # offset of this request's rows in its variant's batch


@dataclass
class _VariantBatch:
    model: OnnxModel
    items: list[_Pending] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)


class ServingHooks:
    """What the serving loop tells the rest of the agent. The base does nothing."""

    def on_request(self, variant: str | None, latency_s: float, n_rows: int) -> None: ...

    def on_error(self, variant: str | None, code: str) -> None: ...

    def on_predictions(
        self,
        variant: str,
        model: OnnxModel,
        request_ids: list[str],
        rows: list[list[Any]],
        feeds: dict[str, Any],
        outputs: Any,
        starts: list[int],
        *,
        shadow: bool = False,
    ) -> None:
        """A variant's batch was predicted (``shadow``: by a shadow, never answered)."""

    def on_feedback(self, request_id: str, label: Any) -> str | None:
        """Join a label to its prediction; return an error code or None."""
        return None


class Server:
    def __init__(
        self,
        *,
        topics: Topics,
        link: MqttLink,
        hooks: ServingHooks,
        max_payload: int,
        max_rows: int,
        max_micro_batch: int,
        reply_qos: int,
        get_deployment: Callable[[], Deployment | None],
    ) -> None:
        self.topics = topics
        self.link = link
        self.hooks = hooks
        self.max_payload = max_payload
        self.max_rows = max_rows
        self.max_micro_batch = max_micro_batch
        self.reply_qos = reply_qos
        self.get_deployment = get_deployment
        self._queue: deque[tuple[mqtt.MQTTMessage, float]] = deque()
        self._wakeup = threading.Event()
        # Set by the serving thread while it waits: only then does an arrival need
        # Event.set() (a lock and a notify, per message, on paho's thread).
        self._idle = False
        self._accepting = True
        self._reply_failed: set[int] = set()
        self.last_beat = time.monotonic()

    # -- intake (paho network thread) ----------------------------------------

    def submit(self, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting:
            # Not acknowledged: the broker keeps it in our persistent session
            # and redelivers it after the restart.
            return
        self._queue.append((msg, time.perf_counter()))
        if self._idle:
            self._wakeup.set()

    def stop_accepting(self) -> None:
        self._accepting = False

    @property
    def backlog(self) -> int:
        return len(self._queue)

    # -- serving thread --------------------------------------------------------

    def run(self, stop: threading.Event, *, idle_timeout: float = 0.5) -> None:
        """Serve until ``stop`` is set, then drain what was already accepted."""
        while not stop.is_set():
            self.last_beat = time.monotonic()
            if not self._queue:
                self._idle = True
                # Re-check after raising the flag: a message queued before submit()
                # could see it must not wait for the timeout.
                if not self._queue:
                    self._wakeup.wait(idle_timeout)
                self._wakeup.clear()
                self._idle = False
                continue
            self.process_available()
        self.stop_accepting()
        while self._queue:
            self.process_available()

    def process_available(self) -> int:
        batch: list[tuple[mqtt.MQTTMessage, float]] = []
        queue = self._queue
        for _ in range(self.max_micro_batch):
            try:
                batch.append(queue.popleft())
            except IndexError:
                break
        if batch:
            self.process(batch)
        return len(batch)

    def process(self, batch: list[tuple[mqtt.MQTTMessage, float]]) -> None:
        deployment = self.get_deployment()
        groups: dict[str, _VariantBatch] = {}
        predict_topic = self.topics.predict
        feedback: list[mqtt.MQTTMessage] = []
        for msg, arrived in batch:
            try:
                if msg.topic == predict_topic:
                    self._admit(msg, arrived, deployment, groups)
                else:
                    feedback.append(msg)
            except Exception:  # a bug on one message must not stop the others
                log.exception("unexpected error handling a message on %s", msg.topic)
                self.hooks.on_error(None, "internal_error")
        # Replies and acks of the whole batch wake paho's network thread once.
        with self.link.coalesced():
            for variant, group in groups.items():
                try:
                    self._run_group(variant, group, deployment)
                except Exception:
                    log.exception("unexpected error serving variant %s", variant)
                    self.hooks.on_error(variant, "internal_error")
            # Labels after predictions: a label that arrives in the same
            # micro-batch as its request must find the prediction recorded.
            for msg in feedback:
                try:
                    self._feedback(msg)
                except Exception:
                    log.exception("unexpected error handling feedback")
                    self.hooks.on_error(None, "internal_error")
            failed, self._reply_failed = self._reply_failed, set()
            for msg, _ in batch:
                # A request whose reply paho refused stays unacknowledged: the
                # broker redelivers it on the next session instead of losing it.
                if id(msg) not in failed:
                    self.link.ack(msg)

    def _admit(
        self,
        msg: mqtt.MQTTMessage,
        arrived: float,
        deployment: Deployment | None,
        groups: dict[str, _VariantBatch],
    ) -> None:
        try:
            request = parse_predict(msg.payload, max_bytes=self.max_payload, max_rows=self.max_rows)
        except RequestError as exc:
            self._reply_error(msg, exc.reply_to, exc.request_id, exc, None)
            return
        if deployment is None:
            err = RequestError(Code.NO_MODEL, "no model is loaded on this device yet")
            self._reply_error(msg, request.reply_to, request.id, err, None)
            return
        variant = deployment.route(request.key)
        model = deployment.models[variant]
        try:
            if request.batch:
                rows = []
                for i, row in enumerate(request.rows):
                    try:
                        rows.append(model.validate_row(row))
                    except RequestError as exc:
                        exc.message = f"rows[{i}]: {exc.message}"
                        raise
            else:
                rows = [model.validate_row(request.rows[0])]
        except RequestError as exc:
            self._reply_error(msg, request.reply_to, request.id, exc, variant)
            return
        group = groups.get(variant)
        if group is None:
            group = groups[variant] = _VariantBatch(model)
        group.items.append(_Pending(msg, arrived, request, rows, len(group.rows)))
        group.rows.extend(rows)

    def _run_group(self, variant: str, group: _VariantBatch, deployment: Deployment | None) -> None:
        model = group.model
        try:
            feeds = model.build(group.rows)
            outputs = model.run(feeds)
        except Exception as exc:  # onnxruntime errors must not stop the loop
            log.warning("inference failed on %s: %s", model.ref, exc)
            err = RequestError(Code.INFERENCE_FAILED, f"model {model.ref} failed: {exc}")
            for item in group.items:
                self._reply_error(item.msg, item.request.reply_to, item.request.id, err, variant)
            return
        now = time.perf_counter()
        version = model.version
        name = model.name
        frags = model.reply_fragments(outputs)
        # The reply as json.dumps would write it (same keys, order and bytes), from
        # per-row fragments: one dict and one encoder pass per reply cost more.
        head = (
            f',"model":{encode_basestring_ascii(name)},"version":'
            f'{encode_basestring_ascii(version)},"variant":{encode_basestring_ascii(variant)},'
        )
        for item in group.items:
            req = item.request
            ms = round((now - item.arrived) * 1000.0, 3)
            if frags is not None:
                if req.batch:
                    end = item.start + len(item.rows)
                    body = '"predictions":[{' + "},{".join(frags[item.start : end]) + "}]"
                else:
                    body = frags[item.start]
                payload = f'{{"id":{encode_basestring_ascii(req.id)}{head}{body},"ms":{ms!r}}}'
                self._publish(item.msg, req.reply_to, payload.encode())
                self.hooks.on_request(variant, now - item.arrived, len(item.rows))
                continue
            reply: dict[str, Any] = {
                "id": req.id,
                "model": name,
                "version": version,
                "variant": variant,
            }
            if req.batch:
                reply["predictions"] = [
                    model.row_result(outputs, item.start + j) for j in range(len(item.rows))
                ]
            else:
                reply.update(model.row_result(outputs, item.start))
            reply["ms"] = ms
            self._send(item.msg, req.reply_to, reply)
            self.hooks.on_request(variant, now - item.arrived, len(item.rows))
        # The replies leave now; telemetry (drift, feedback join, capture) runs after them
        # (a drift report can take milliseconds).
        self.link.flush()
        self.hooks.on_predictions(
            variant,
            model,
            [item.request.id for item in group.items],
            group.rows,
            feeds,
            outputs,
            [item.start for item in group.items],
        )
        if deployment is not None and deployment.shadows:
            self._run_shadows(deployment, group, model)

    def _run_shadows(self, deployment: Deployment, group: _VariantBatch, served: OnnxModel) -> None:
        rows = group.rows
        names = served.feature_names
        for variant, shadow in deployment.shadows.items():
            try:
                if shadow.feature_names == names:
                    shadow_rows = rows
                else:
                    as_dicts = [dict(zip(names, r, strict=True)) for r in rows]
                    shadow_rows = [shadow.validate_row(r) for r in as_dicts]
                feeds = shadow.build(shadow_rows)
                outputs = shadow.run(feeds)
            except Exception as exc:  # a failing shadow never affects the reply
                code = exc.code if isinstance(exc, RequestError) else Code.INFERENCE_FAILED
                self.hooks.on_error(variant, code)
                continue
            self.hooks.on_predictions(
                variant,
                shadow,
                [item.request.id for item in group.items],
                shadow_rows,
                feeds,
                outputs,
                [item.start for item in group.items],
                shadow=True,
            )

    def _feedback(self, msg: mqtt.MQTTMessage) -> None:
        try:
            feedback = parse_feedback(msg.payload, max_bytes=self.max_payload)
        except RequestError as exc:
            self.hooks.on_error(None, exc.code)
            self._publish_error(msg, exc.reply_to, exc.request_id, exc, self.topics.errors)
            return
        code = self.hooks.on_feedback(feedback.id, feedback.label)
        # An unjoinable label is only worth a reply to a sender that gave an address.
        response_topic = getattr(getattr(msg, "properties", None), "ResponseTopic", None)
        if code is not None and (feedback.reply_to or response_topic):
            err = RequestError(code, f"feedback for request {feedback.id!r} was not joined: {code}")
            self._publish_error(msg, feedback.reply_to, feedback.id, err, self.topics.errors)

    # -- replies ---------------------------------------------------------------

    def _reply_error(
        self,
        msg: mqtt.MQTTMessage,
        reply_to: str | None,
        request_id: str | None,
        exc: RequestError,
        variant: str | None,
    ) -> None:
        self.hooks.on_error(variant, exc.code)
        self._publish_error(msg, reply_to, request_id, exc, self.topics.predictions)

    def _publish_error(
        self,
        msg: mqtt.MQTTMessage,
        reply_to: str | None,
        request_id: str | None,
        exc: RequestError,
        default_topic: str,
    ) -> None:
        body = error_reply(request_id, exc.code, exc.message)
        self._send(msg, reply_to, body, default_topic)

    def _send(
        self,
        msg: mqtt.MQTTMessage,
        reply_to: str | None,
        body: dict[str, Any],
        default_topic: str | None = None,
    ) -> None:
        try:
            payload = dumps(body)
        except ValueError:  # a NaN/inf model output cannot be encoded as JSON
            err = error_reply(body.get("id"), Code.INFERENCE_FAILED, "model output is not finite")
            payload = dumps(err)
        self._publish(msg, reply_to, payload, default_topic)

    def _publish(
        self,
        msg: mqtt.MQTTMessage,
        reply_to: str | None,
        payload: bytes,
        default_topic: str | None = None,
    ) -> None:
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if response_topic:
            correlation = getattr(props, "CorrelationData", None)
            topic = response_topic
        else:
            correlation = None
            topic = reply_to or default_topic or self.topics.predictions
        info = self.link.publish(topic, payload, qos=self.reply_qos, correlation=correlation)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self._reply_failed.add(id(msg))
