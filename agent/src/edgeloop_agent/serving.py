"""The request path: MQTT messages in, predictions out, in micro-batches.

paho's network thread only appends incoming messages to a deque; the serving
thread drains up to ``max_micro_batch`` of them, validates each request, runs
one inference per variant for the whole batch, publishes the replies and only
then acknowledges the requests (manual QoS 1 acks), so a crash means
redelivery, never a lost request.

Each message stands alone: whatever goes wrong with one (a refused reply topic,
a payload that is not UTF-8 JSON, a bug) ends in an error reply for that one, or,
when not even an error can be published, in a counted drop; the other messages
of the micro-batch are served as usual. Every reply topic a request names passes
the reply policy (``replypolicy.py``) before paho sees it.

Requests that arrive another way (the Open Inference Protocol endpoint, ``oip.py``)
enter the same queue as :class:`LocalRequest` items: same micro-batches, router,
telemetry and error codes; their reply goes to a callback instead of the broker and
there is nothing to acknowledge.
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
    dumps,
    error_reply,
    parse_feedback,
    parse_predict,
)
from edgeloop_agent.replypolicy import ReplyPolicy
from edgeloop_agent.wire.jsontext import json_text
from edgeloop_agent.wire.topics import Topics

log = logging.getLogger("edgeloop.agent.serving")

# Codes only a request naming its model (HTTP) can earn.
UNKNOWN_MODEL = "unknown_model"
UNKNOWN_VERSION = "unknown_version"


@dataclass(slots=True, eq=False)
class LocalRequest:
    """A predict request parsed outside the MQTT intake (the HTTP endpoint).

    ``deliver`` receives the reply exactly as it would have been published (the
    JSON of docs/protocol.md, or its error form), on the serving thread; it must
    not block. ``error``: the request was refused while being decoded; it still
    goes through the loop so that it is counted like an MQTT refusal.
    """

    request: PredictRequest | None
    deliver: Callable[[bytes], None]
    model_name: str | None = None  # the model the request names; None: any
    version: str | None = None  # a version forced by the request; None: the router decides
    error: RequestError | None = None
    topic: str = ""  # set by Server.submit_local to the predict topic
    properties: None = None  # no MQTT 5 properties: replies never go to a topic


@dataclass(slots=True)
class _Pending:
    msg: mqtt.MQTTMessage | LocalRequest
    arrived: float
    request: PredictRequest
    rows: list[list[Any]]
    topic: str  # where the reply goes, already checked by the reply policy
    correlation: bytes | None
    start: int = 0  # offset of this request's rows in its variant's batch
    answered: bool = False


@dataclass
class _VariantBatch:
    model: OnnxModel
    items: list[_Pending] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)


class ServingHooks:
    """What the serving loop tells the rest of the agent. The base does nothing."""

    def on_request(self, variant: str | None, latency_s: float, n_rows: int) -> None: ...

    def on_error(self, variant: str | None, code: str) -> None: ...

    def on_routed(self, variant: str, keys: list[str | None], experiment_id: str) -> None:
        """The router assigned these requests (their keys, None if unkeyed) to ``variant``
        in router experiment ``experiment_id``; once per variant per micro-batch."""

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
        policy: ReplyPolicy | None = None,
        max_queue: int = 1024,
    ) -> None:
        self.topics = topics
        self.policy = policy or ReplyPolicy(prefix=topics.prefix, device=topics.device)
        self.link = link
        self.hooks = hooks
        self.max_payload = max_payload
        self.max_rows = max_rows
        self.max_micro_batch = max_micro_batch
        self.reply_qos = reply_qos
        self.get_deployment = get_deployment
        self._queue: deque[tuple[mqtt.MQTTMessage | LocalRequest, float]] = deque()
        self._wakeup = threading.Event()
        # Set by the serving thread while it waits: only then does an arrival need
        # Event.set() (a lock and a notify, per message, on paho's thread).
        self._idle = False
        self._accepting = True
        self._reply_failed: set[int] = set()
        # Replies whose PUBACK the request's ack must wait for (see MqttLink.ack).
        self._ack_after: dict[int, mqtt.MQTTMessageInfo] = {}
        self.last_beat = time.monotonic()
        # The intake bound: past it the link stops reading the socket (the burst
        # waits in the broker) until the queue is down to half (hysteresis: one
        # wake-up per half queue, not per request).
        self.max_queue = max(2, max_queue)
        self._resume_at = self.max_queue // 2
        self.high_water = 0  # the longest the queue has been
        link.set_intake_gate(self._intake_full)
        link.on_acks_ready = self._acks_ready

    # -- intake (paho network thread) ----------------------------------------

    def submit(self, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting:
            # Not acknowledged: the broker keeps it in our persistent session
            # and redelivers it after the restart.
            return
        queue = self._queue
        queue.append((msg, time.perf_counter()))
        if len(queue) > self.high_water:
            self.high_water = len(queue)
        if self._idle:
            self._wakeup.set()

    def _acks_ready(self) -> None:
        if self._idle:
            self._wakeup.set()

    def _intake_full(self) -> bool:
        """The link's gate (network thread, before each packet): closed at the bound,
        open again at half of it."""
        n = len(self._queue)
        if n >= self.max_queue:
            return True
        return self.link.intake_paused and n > self._resume_at

    def submit_local(self, item: LocalRequest) -> bool:
        """Queue a request from another front end; False once shutting down."""
        if not self._accepting:
            return False
        item.topic = self.topics.predict
        self._queue.append((item, time.perf_counter()))
        if self._idle:
            self._wakeup.set()
        return True

    @property
    def accepting(self) -> bool:
        return self._accepting

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
                if self.link.acks_ready:
                    with self.link.coalesced():
                        self.link.flush_acks()
                self._idle = True
                # Re-check after raising the flag: a message queued (or an ack made
                # ready) before the flag was seen must not wait for the timeout.
                if not self._queue and not self.link.acks_ready:
                    self._wakeup.wait(idle_timeout)
                self._wakeup.clear()
                self._idle = False
                continue
            self.process_available()
        self.stop_accepting()
        while self._queue:
            self.process_available()
        # The last replies' PUBACKs: their requests are acknowledged before the link
        # closes (else they are redelivered after the restart: duplicates, not loss).
        deadline = time.monotonic() + 2.0
        while self.link.unacked_replies and time.monotonic() < deadline:
            time.sleep(0.01)
        self.link.flush_acks()

    def process_available(self) -> int:
        batch: list[tuple[mqtt.MQTTMessage | LocalRequest, float]] = []
        queue = self._queue
        for _ in range(self.max_micro_batch):
            try:
                batch.append(queue.popleft())
            except IndexError:
                break
        if batch:
            if self.link.intake_paused and len(queue) <= self._resume_at:
                self.link.wake_intake()
            self.process(batch)
        return len(batch)

    def process(self, batch: list[tuple[mqtt.MQTTMessage | LocalRequest, float]]) -> None:
        deployment = self.get_deployment()
        groups: dict[str, _VariantBatch] = {}
        predict_topic = self.topics.predict
        feedback: list[mqtt.MQTTMessage] = []
        routed: dict[str, list[str | None]] = {}
        # Replies and acks of the whole batch wake paho's network thread once.
        # Earlier batches' requests whose replies the broker has.
        self.link.flush_acks(wake=False)
        with self.link.coalesced():
            for msg, arrived in batch:
                try:
                    if msg.topic == predict_topic:
                        self._admit(msg, arrived, deployment, groups, routed)
                    elif not isinstance(msg, LocalRequest):
                        feedback.append(msg)
                except Exception:  # a bug on one message must not stop the others
                    log.exception("unexpected error handling a message on %s", msg.topic)
                    self._internal_error(msg, None, self.topics.predictions, None)
            for variant, group in groups.items():
                self._run_group(variant, group, deployment)
            self._report_routed(routed, deployment)
            # Labels after predictions: a label that arrives in the same
            # micro-batch as its request must find the prediction recorded.
            for msg in feedback:
                try:
                    self._feedback(msg)
                except Exception:
                    log.exception("unexpected error handling feedback")
                    self._internal_error(msg, None, self.topics.errors, None)
            failed, self._reply_failed = self._reply_failed, set()
            # Every message of the batch has had its reply or error queued by now (or
            # was counted as undeliverable): only now is it acknowledged.
            for msg, _ in batch:
                # A request whose reply paho refused stays unacknowledged: the
                # broker redelivers it on the next session instead of losing it.
                if id(msg) not in failed and not isinstance(msg, LocalRequest):
                    self.link.ack(msg, self._ack_after.pop(id(msg), None))
            self._ack_after.clear()

    def _admit(
        self,
        msg: mqtt.MQTTMessage | LocalRequest,
        arrived: float,
        deployment: Deployment | None,
        groups: dict[str, _VariantBatch],
        routed: dict[str, list[str | None]],
    ) -> None:
        predictions = self.topics.predictions
        local = msg if isinstance(msg, LocalRequest) else None
        try:
            if isinstance(msg, LocalRequest):
                if msg.error is not None or msg.request is None:
                    raise msg.error or RequestError(Code.INTERNAL_ERROR, "empty local request")
                request = msg.request
            else:
                # bytes() of a bytes payload is the payload itself, not a copy.
                request = parse_predict(
                    bytes(msg.payload), max_bytes=self.max_payload, max_rows=self.max_rows
                )
        except RequestError as exc:
            self._reply_error(msg, exc.reply_to, exc.request_id, exc, None, predictions)
            return
        topic, correlation, refused = self._route(msg, request.reply_to, predictions)
        if refused is not None:
            refused.request_id = request.id
            self._refuse(msg, topic, correlation, refused, None)
            return
        if deployment is None:
            err = RequestError(Code.NO_MODEL, "no model is loaded on this device yet")
            self._refuse(msg, topic, correlation, err, None, request.id)
            return
        if local is not None and (local.model_name is not None or local.version is not None):
            # Decided on this batch's snapshot: a swap since the HTTP thread looked is seen.
            forced, unserved = _named_variant(deployment, local.model_name, local.version)
            if unserved is not None:
                self._refuse(msg, topic, correlation, unserved, None, request.id)
                return
            variant = forced or deployment.route(request.key)
            if forced is None:
                routed.setdefault(variant, []).append(request.key)
        else:
            variant = deployment.route(request.key)
            routed.setdefault(variant, []).append(request.key)
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
            self._refuse(msg, topic, correlation, exc, variant, request.id)
            return
        group = groups.get(variant)
        if group is None:
            group = groups[variant] = _VariantBatch(model)
        start = len(group.rows)
        group.items.append(_Pending(msg, arrived, request, rows, topic, correlation, start))
        group.rows.extend(rows)

    def _report_routed(
        self, routed: dict[str, list[str | None]], deployment: Deployment | None
    ) -> None:
        # Assignments, counted where the router decides (a forced version is not one):
        # the sample-ratio check's unit, keys or requests (docs/ab-statistics.md).
        if deployment is None:
            return
        experiment_id = deployment.router.experiment_id
        for variant, keys in routed.items():
            try:
                self.hooks.on_routed(variant, keys, experiment_id)
            except Exception:  # telemetry trouble never stops serving
                log.exception("counting routed keys failed for variant %s", variant)

    def _run_group(self, variant: str, group: _VariantBatch, deployment: Deployment | None) -> None:
        try:
            feeds, outputs = self._answer_group(variant, group)
        except Exception:  # a bug here must still leave every request answered
            log.exception("unexpected error serving variant %s", variant)
            for item in group.items:
                if not item.answered:
                    self._internal_error(
                        item.msg, item.request.id, self.topics.predictions, variant, item.topic
                    )
            return
        if feeds is None:
            return  # inference failed; every request got its error
        # The replies leave now; telemetry (drift, feedback join, capture) runs after them
        # (a drift report can take milliseconds).
        self.link.flush()
        try:
            self.hooks.on_predictions(
                variant,
                group.model,
                [item.request.id for item in group.items],
                group.rows,
                feeds,
                outputs,
                [item.start for item in group.items],
            )
            if deployment is not None and deployment.shadows:
                self._run_shadows(deployment, group, group.model)
        except Exception:  # the replies are out: telemetry trouble is only counted
            log.exception("telemetry failed after serving variant %s", variant)
            self.hooks.on_error(variant, Code.INTERNAL_ERROR)

    def _answer_group(self, variant: str, group: _VariantBatch) -> tuple[Any, Any]:
        """Run one variant's batch and queue every reply; ``(None, None)`` when the
        inference failed (each request then got an ``inference_failed`` error)."""
        model = group.model
        try:
            feeds = model.build(group.rows)
            outputs = model.run(feeds)
        except Exception as exc:  # onnxruntime errors must not stop the loop
            log.warning("inference failed on %s: %s", model.ref, exc)
            for item in group.items:
                err = RequestError(Code.INFERENCE_FAILED, f"model {model.ref} failed: {exc}")
                self._refuse(item.msg, item.topic, item.correlation, err, variant, item.request.id)
                item.answered = True
            return None, None
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
            # One request's trouble (a bug, a reply paho refuses by raising) stays its own.
            try:
                req = item.request
                ms = round((now - item.arrived) * 1000.0, 3)
                if frags is not None:
                    if req.batch:
                        end = item.start + len(item.rows)
                        body = '"predictions":[{' + "},{".join(frags[item.start : end]) + "}]"
                    else:
                        body = frags[item.start]
                    payload = f'{{"id":{encode_basestring_ascii(req.id)}{head}{body},"ms":{ms!r}}}'
                    self._deliver(item.msg, item.topic, item.correlation, payload.encode(), req.id)
                else:
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
                    self._deliver(item.msg, item.topic, item.correlation, _encode(reply), req.id)
                item.answered = True
                self.hooks.on_request(variant, now - item.arrived, len(item.rows))
            except Exception:
                log.exception("unexpected error answering request %r", item.request.id)
                if not item.answered:
                    item.answered = True
                    self._internal_error(
                        item.msg, item.request.id, self.topics.predictions, variant, item.topic
                    )
        return feeds, outputs

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
        errors = self.topics.errors
        try:
            feedback = parse_feedback(bytes(msg.payload), max_bytes=self.max_payload)
        except RequestError as exc:
            self._reply_error(msg, exc.reply_to, exc.request_id, exc, None, errors)
            return
        topic, correlation, refused = self._route(msg, feedback.reply_to, errors)
        if refused is not None:
            # Not joined either: the sender learns its label was refused and can resend it.
            refused.request_id = feedback.id
            self._refuse(msg, topic, correlation, refused, None)
            return
        try:
            code = self.hooks.on_feedback(feedback.id, feedback.label)
        except Exception:
            log.exception("unexpected error joining feedback %r", feedback.id)
            self._internal_error(msg, feedback.id, errors, None, topic)
            return
        # An unjoinable label is only worth a reply to a sender that gave an address
        # (the joiner has counted it already).
        if code is not None and topic != errors:
            err = RequestError(
                code, f"feedback for request {json_text(feedback.id)} was not joined: {code}"
            )
            self._deliver(msg, topic, correlation, _encode(_error_body(feedback.id, err)))

    # -- replies ---------------------------------------------------------------

    def _route(
        self, msg: mqtt.MQTTMessage | LocalRequest, reply_to: str | None, default_topic: str
    ) -> tuple[str, bytes | None, RequestError | None]:
        """Where this message's reply goes: ``(topic, correlation data, None)``, or
        ``(default_topic, correlation data, error)`` when the topic the request
        names (MQTT 5 Response Topic first, else ``reply_to``) may not be used."""
        props = getattr(msg, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        if response_topic:
            topic = response_topic
            correlation = getattr(props, "CorrelationData", None)
        elif reply_to is not None:
            topic, correlation = reply_to, None
        else:
            return default_topic, None, None
        verdict = self.policy.problem(topic)
        if verdict is None:
            return topic, correlation, None
        code, message = verdict
        return default_topic, correlation, RequestError(code, message)

    def _reply_error(
        self,
        msg: mqtt.MQTTMessage | LocalRequest,
        reply_to: str | None,
        request_id: str | None,
        exc: RequestError,
        variant: str | None,
        default_topic: str,
    ) -> None:
        """Answer a refused request on its own route, or on ``default_topic`` with the
        route's error when the route is refused too (both are counted)."""
        topic, correlation, refused = self._route(msg, reply_to, default_topic)
        if refused is not None:
            self.hooks.on_error(variant, exc.code)
            refused.request_id = request_id
            refused.message = f"{refused.message} (the request was refused too: {exc.code})"
            exc = refused
        self._refuse(msg, topic, correlation, exc, variant, request_id)

    def _refuse(
        self,
        msg: mqtt.MQTTMessage | LocalRequest,
        topic: str,
        correlation: bytes | None,
        exc: RequestError,
        variant: str | None,
        request_id: str | None = None,
    ) -> None:
        self.hooks.on_error(variant, exc.code)
        rid = request_id if request_id is not None else exc.request_id
        self._deliver(msg, topic, correlation, _encode(_error_body(rid, exc)), rid)

    def _internal_error(
        self,
        msg: mqtt.MQTTMessage | LocalRequest,
        request_id: str | None,
        default_topic: str,
        variant: str | None,
        topic: str | None = None,
    ) -> None:
        """Answer a message the agent failed on (a bug), or count it as undeliverable."""
        err = RequestError(Code.INTERNAL_ERROR, "the agent failed on this request")
        try:
            if topic is None:
                topic, correlation, _ = self._route(msg, None, default_topic)
            else:
                correlation = getattr(getattr(msg, "properties", None), "CorrelationData", None)
            self._refuse(msg, topic, correlation, err, variant, request_id)
        except Exception:
            log.exception("cannot answer a message on %s", default_topic)
            self.hooks.on_error(variant, UNDELIVERABLE)

    def _deliver(
        self,
        msg: mqtt.MQTTMessage | LocalRequest,
        topic: str,
        correlation: bytes | None,
        payload: bytes,
        request_id: str | None = None,
    ) -> None:
        """Queue one reply. The topic has passed the reply policy; should paho refuse
        it anyway by raising, an error goes to the default topic instead, and when
        even that fails the message is counted as undeliverable and acknowledged (a
        redelivery would fail the same way, for ever)."""
        if isinstance(msg, LocalRequest):
            msg.deliver(payload)
            return
        try:
            info, deferred = self.link.publish_reply(
                topic, payload, qos=self.reply_qos, correlation=correlation
            )
            if deferred:
                self._ack_after[id(msg)] = info
        except Exception as exc:
            log.warning("cannot publish a reply on %r: %s", topic, exc)
            fallback = self.topics.errors if msg.topic == self.topics.feedback else None
            fallback = fallback or self.topics.predictions
            body = _error_body(
                request_id, RequestError(Code.INVALID_REPLY_TO, f"reply topic refused: {exc}")
            )
            self.hooks.on_error(None, Code.INVALID_REPLY_TO)
            try:
                info = self.link.publish(fallback, _encode(body), qos=self.reply_qos)
            except Exception:
                log.exception("cannot publish an error reply on %s", fallback)
                self.hooks.on_error(None, UNDELIVERABLE)
                return
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self._reply_failed.add(id(msg))


def _named_variant(
    deployment: Deployment, name: str | None, version: str | None
) -> tuple[str | None, RequestError | None]:
    """The variant a request naming a model (and maybe a version) must get: ``(variant,
    None)`` for a forced version, ``(None, None)`` when the router decides, or an error."""
    models = deployment.models
    if name is not None and all(m.name != name for m in models.values()):
        served = ", ".join(sorted({m.name for m in models.values()}))
        return None, RequestError(
            UNKNOWN_MODEL, f"model {json_text(name)} is not served here (serving: {served})"
        )
    if version is None:
        return None, None
    for variant, model in models.items():
        if model.version == version and (name is None or model.name == name):
            return variant, None
    versions = ", ".join(sorted(m.version for m in models.values() if m.name == name))
    return None, RequestError(
        UNKNOWN_VERSION,
        f"model {json_text(name)} has no version {json_text(version)} here (serving: {versions})",
    )


# Counted when not even an error reply could be queued for a message.
UNDELIVERABLE = "reply_undeliverable"


def _error_body(request_id: str | None, exc: RequestError) -> dict[str, Any]:
    return error_reply(request_id, exc.code, exc.message)


def _encode(body: dict[str, Any]) -> bytes:
    try:
        return dumps(body)
    except ValueError:  # a NaN/inf model output cannot be encoded as JSON
        err = error_reply(body.get("id"), Code.INFERENCE_FAILED, "model output is not finite")
        return dumps(err)
