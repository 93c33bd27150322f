"""The device agent: wires the MQTT link, the serving loop and the updater.

Threads: paho's network thread (intake only), the updater (desired state and
artifacts), a housekeeping thread (status, watchdog, telemetry) and the main
thread, which serves requests.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from edgeloop_agent import __version__
from edgeloop_agent.config import AgentConfig, ConfigError
from edgeloop_agent.deployment import Deployment
from edgeloop_agent.drift import DriftConfig, WindowConfig
from edgeloop_agent.liveness import Liveness
from edgeloop_agent.mqttlink import MqttLink
from edgeloop_agent.oip_http import OipHttpServer
from edgeloop_agent.outbox import DISK_OK, Outbox
from edgeloop_agent.procstats import release_free_memory
from edgeloop_agent.prometheus import MetricsServer, PrometheusExporter, write_textfile
from edgeloop_agent.protocol import dumps
from edgeloop_agent.publisher import OutboxPublisher
from edgeloop_agent.selfupdate import SelfUpdate
from edgeloop_agent.serving import Server
from edgeloop_agent.statedir import StateDir
from edgeloop_agent.systemd import Notifier, watchdog_interval
from edgeloop_agent.telemetry import Telemetry
from edgeloop_agent.updater import UpdateError, Updater
from edgeloop_agent.wire.network import parse_listen
from edgeloop_agent.wire.topics import Topics

log = logging.getLogger("edgeloop.agent")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config.validate()
        self.topics = Topics(config.device_id, config.topic_prefix)
        self.state = StateDir(config.state_dir)
        self.notifier = Notifier()
        self.outbox = Outbox(
            self.state.root / "outbox.sqlite",
            max_bytes=config.outbox_max_bytes,
            device_id=config.device_id,
        )
        self.telemetry = Telemetry(
            topics=self.topics,
            outbox=self.outbox,
            drift_config=DriftConfig(
                window=WindowConfig(
                    kind=config.drift_window_kind,  # type: ignore[arg-type]
                    size=config.drift_window,
                    slide=config.drift_slide,
                )
            ),
            capture_rate=config.capture_rate,
            feedback_window=config.feedback_window,
            feedback_max_age_s=config.feedback_max_age_s,
        )
        self.hooks = self.telemetry
        self.exporter: PrometheusExporter | None = None
        self.metrics_server: MetricsServer | None = None
        if config.metrics_listen or config.metrics_textfile_dir:
            self.exporter = PrometheusExporter(config.device_id, __version__)
            self.telemetry.exporter = self.exporter
        if config.metrics_listen:
            host, port = parse_listen(config.metrics_listen)
            exporter, metrics = self.exporter, self.telemetry.metrics
            assert exporter is not None
            self.metrics_server = MetricsServer(
                host, port, lambda: exporter.render(metrics.snapshot())
            )
        self.deployment: Deployment | None = None
        self.last_error: dict[str, Any] | None = None
        self.started_at = time.time()
        self.stop_event = threading.Event()
        self._status_lock = threading.Lock()
        self._ready_sent = False
        self.liveness = Liveness()
        self._liveness_reported: list[str] = []
        self._expired_reported = False
        self._service_text = "loading last good model"
        self._storage_seen = (DISK_OK, "disk")
        self._link_seen: tuple[bool, tuple[str | None, float] | None] = (False, None)

        self.updater = Updater(
            prefix=config.topic_prefix,
            state=self.state,
            trusted_keys=config.trusted_keys,
            require_signature=config.require_signature,
            artifact_timeout_s=config.artifact_timeout_s,
            max_artifact_bytes=config.max_artifact_bytes,
            inference_threads=config.inference_threads,
            on_deployed=self._deployed,
            on_failed=self._update_failed,
            device_id=config.device_id,
            allow_unsigned=config.allow_unsigned,
            max_desired_bytes=config.max_desired_bytes,
        )
        self.self_update = SelfUpdate(
            prefix=config.topic_prefix,
            spool=self.state.root / "update",
            chunk_timeout_s=config.artifact_timeout_s,
            on_change=self._publish_status_safely,
        )
        self.updater.self_update = self.self_update
        t = self.topics
        self.link = MqttLink(
            client_id=f"edgeloop-agent-{config.device_id}",
            broker=config.broker_address,
            session_expiry_s=config.session_expiry_s,
            keepalive_s=config.keepalive_s,
            will_topic=t.status,
            will_payload=dumps({"device": config.device_id, "online": False, "reason": "lost"}),
            subscriptions=[(t.predict, 1), (t.feedback, 1), (t.desired, 1)],
            on_message=self._on_message,
            on_connected=self.publish_status,
            # The largest thing the agent accepts (an artifact at its size limit)
            # plus room for the topic and properties.
            max_packet_bytes=max(
                config.max_artifact_bytes, config.max_desired_bytes, config.max_payload_bytes
            )
            + 64 * 1024,
        )
        self.updater.link = self.link
        self.publisher = OutboxPublisher(self.outbox, self.link)
        self.server = Server(
            topics=t,
            link=self.link,
            hooks=self.hooks,
            max_payload=config.max_payload_bytes,
            max_rows=config.max_batch_rows,
            max_micro_batch=config.max_micro_batch,
            max_queue=config.max_intake,
            reply_qos=config.reply_qos,
            get_deployment=lambda: self.deployment,
            policy=config.reply_policy(),
        )
        self.telemetry.intake_stats = self.intake_stats
        self.http: OipHttpServer | None = None
        if config.http_listen:
            host, port = parse_listen(config.http_listen)
            try:
                self.http = OipHttpServer(
                    host,
                    port,
                    server=self.server,
                    get_deployment=lambda: self.deployment,
                    max_payload=config.max_payload_bytes,
                    max_rows=config.max_batch_rows,
                )
            except OSError as exc:  # port taken, address not local: one line, exit 1
                raise ConfigError(
                    f"http_listen {config.http_listen}: cannot listen: {exc.strerror or exc}"
                ) from None

    # -- message dispatch (paho network thread) ------------------------------

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic == self.topics.predict or topic == self.topics.feedback:
            self.server.submit(msg)  # acknowledged by the server after the reply
            return
        if topic == self.topics.desired:
            self.updater.submit_desired(bytes(msg.payload))  # no copy when already bytes
        elif self.updater.is_artifact_topic(topic):
            self.updater.submit_artifact(msg)
        self.link.ack(msg)

    # -- deployment events (updater thread) ----------------------------------

    def _deployed(self, deployment: Deployment) -> None:
        self.telemetry.on_deployed(deployment)  # monitors first, so no batch misses them
        self.deployment = deployment  # the atomic swap the serving loop sees
        self.last_error = None
        refs = ", ".join(f"{v}={m.ref}" for v, m in deployment.models.items())
        log.info("serving revision %d: %s", deployment.revision, refs)
        self._notify_status(f"serving revision {deployment.revision}: {refs}")
        self.publish_status()

    def _update_failed(self, revision: int | None, exc: UpdateError) -> None:
        self.last_error = {
            "code": exc.code,
            "message": exc.message,
            "revision": revision,
            "ts": time.time(),
        }
        self._notify_status(f"update failed: {exc.code}")
        self.publish_status()

    # -- status ----------------------------------------------------------------

    def status_document(self) -> dict[str, Any]:
        dep = self.deployment
        return {
            "device": self.config.device_id,
            "online": True,
            "state": "serving" if dep is not None else "no_model",
            "revision": dep.revision if dep is not None else None,
            "desired_revision": self.updater.last_seen_revision,
            "models": dep.describe() if dep is not None else [],
            "error": self.last_error,
            # The same, under the name the update path documents (docs/protocol.md).
            "last_update_error": self.last_error,
            "applied_revision": self.updater.applied_revision,
            # The document being served is past its expiry: the control node has
            # not refreshed it (or is being kept from us). Serving continues.
            "desired_expired": self.updater.expired(),
            "allow_unsigned": self.updater.allow_unsigned,
            "threads": self.liveness.problems(),
            "storage": self.storage_status(),
            "agent_version": __version__,
            # The Debian package version and the self-update's progress (selfupdate.py).
            "agent_package_version": self.self_update.version,
            "agent_update": self.self_update.status(),
            "started_at": self.started_at,
            "ts": time.time(),
        }

    def _publish_status_safely(self) -> None:
        try:
            self.publish_status()
        except Exception:  # offline or shutting down: the next change reports again
            log.debug("status not published", exc_info=True)

    def storage_status(self) -> dict[str, Any]:
        """The state filesystem as the status document reports it: ``state`` (ok, disk_full,
        read_only), where the outbox lives (disk, or memory when the disk cannot take it),
        free bytes, and the items dropped since start by kind."""
        return {**self.outbox.disk_info(), "dropped": self.telemetry.dropped()}

    def _storage_note(self) -> str:
        state, storage = self.outbox.disk_state, self.outbox.storage
        if state == DISK_OK and storage == "disk":
            return ""
        what = {"disk_full": "state filesystem full", "read_only": "state filesystem read-only"}
        note = what.get(state, f"state filesystem {state}")
        if storage == "memory":
            note += ", outbox in memory"
        dropped = ", ".join(f"{k}={v}" for k, v in self.telemetry.dropped().items() if v)
        return f"{note}; dropped {dropped or 'nothing yet'}"

    def _notify_status(self, text: str | None = None) -> None:
        """systemd's STATUS=: what the agent serves, plus the state filesystem's trouble."""
        if text is not None:
            self._service_text = text
        self.notifier.status(self._with_storage_note(self._service_text))

    def _with_storage_note(self, text: str) -> str:
        notes = [n for n in (self._storage_note(), self._link_note()) if n]
        return f"{text} ({'; '.join(notes)})" if notes else text

    def intake_stats(self) -> dict[str, int]:
        """The intake bound at work: a high-water mark at the bound and a count of
        pauses mean bursts waited in the broker, not in this process."""
        return {
            "bound": self.server.max_queue,
            "queued": self.server.backlog,
            "high_water": self.server.high_water,
            "pauses": self.link.intake_pauses,
            "unacked_replies": self.link.unacked_replies,
        }

    def _link_note(self) -> str:
        # After READY, STATUS= must follow the broker link both ways: a line that
        # still says "broker unreachable" an hour after the link came back misleads.
        if self._ready_sent and not self.link.connected.is_set():
            return self._unreachable()
        return ""

    def _link_step(self) -> tuple[str | None, float]:
        failures = self.link.connect_failures
        return failures.reason, failures.retry_delay()

    def _unreachable(self) -> str:
        """ "broker unreachable", with why and for how many attempts when known."""
        failures = self.link.connect_failures
        reason, attempts = failures.reason, failures.attempts
        if reason is None or not attempts:
            return "broker unreachable"
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        return f"broker unreachable: {reason}; {tries}, next in {failures.retry_delay():g} s"

    def _check_storage(self, *, report: bool) -> None:
        """Housekeeping: let the outbox notice space coming back or running out; say so on
        status and STATUS= when that changes, and refresh the drop counts with each report."""
        try:
            self.outbox.maintain()
        except Exception:  # the disk must never take serving down
            log.exception("outbox maintenance failed")
        seen = (self.outbox.disk_state, self.outbox.storage)
        changed = seen != self._storage_seen
        self._storage_seen = seen
        if changed:
            log.warning("state storage: %s, outbox on %s", *seen)
        if changed or (report and seen != (DISK_OK, "disk")):
            self._notify_status()
            if self.link.connected.is_set():
                self.publish_status()

    def publish_status(self) -> mqtt.MQTTMessageInfo:
        with self._status_lock:
            return self.link.publish(
                self.topics.status, dumps(self.status_document()), qos=1, retain=True
            )

    # -- life cycle --------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()

    def run(self, *, install_signals: bool = True, ready_grace_s: float | None = None) -> int:
        if ready_grace_s is None:
            ready_grace_s = self.config.ready_grace_s
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        self._notify_status("loading last good model")
        restored = self.updater.restore()
        if restored is not None:
            self.telemetry.on_deployed(restored)
        self.deployment = restored
        self.link.start()
        threads = [
            threading.Thread(target=self.updater.run, args=(self.stop_event,), name="updater"),
            threading.Thread(target=self._housekeeping, args=(ready_grace_s,), name="housekeeping"),
            threading.Thread(target=self.publisher.run, args=(self.stop_event,), name="outbox"),
        ]
        for thread in threads:
            thread.daemon = True
            thread.start()
        self._publisher_thread = threads[2]
        interval = watchdog_interval() or 15.0
        self.liveness.watch(
            threading.current_thread(),
            last_beat=lambda: self.server.last_beat,
            max_silence_s=interval * 2,
        )
        # The updater beats every 0.5 s when idle and every second while it waits
        # for an artifact; loading a big model may take longer than that.
        self.liveness.watch(
            threads[0],
            last_beat=lambda: self.updater.last_beat,
            max_silence_s=max(interval * 2, 120.0),
        )
        self.liveness.watch(threads[2])
        if self.metrics_server is not None:
            self.metrics_server.start()
            log.info("Prometheus metrics on http://%s:%d/metrics", *self.metrics_server.address[:2])
        if self.http is not None:
            self.http.start()
            self.liveness.watch(self.http.thread)  # a dead HTTP server stops the watchdog
            log.info("Open Inference Protocol v2 on http://%s:%d/v2", *self.http.address[:2])
        log.info(
            "agent %s for device %s, broker %s, state %s",
            __version__,
            self.config.device_id,
            self.config.broker_address,
            self.state.root,
        )
        self.server.run(self.stop_event)
        self._shutdown()
        return 0

    def _housekeeping(self, ready_grace_s: float) -> None:
        started = time.monotonic()
        interval = watchdog_interval()
        next_report = started + self.config.telemetry_interval_s
        next_storage_check = started
        while not self.stop_event.wait(0.2):
            now = time.monotonic()
            report = now >= next_report
            if report:
                next_report = now + self.config.telemetry_interval_s
                self._report()
            if report or now >= next_storage_check:
                next_storage_check = now + 1.0
                self._check_storage(report=report)
                if self.self_update.result_changed():
                    self._publish_status_safely()
            connected = self.link.connected.is_set()
            # The link's state, and while it is down each back-off step of the retries
            # (not every attempt): STATUS= says why and since when, without flooding PID 1.
            link_seen = (connected, None if connected else self._link_step())
            if self._ready_sent and link_seen != self._link_seen:
                self._notify_status()
            self._link_seen = link_seen
            # Without a broker, READY still comes after the grace period: with the
            # last good model it is serving; without one it waits for a model,
            # and systemd's start timeout must not kill a device that is offline.
            if not self._ready_sent and (connected or now - started > ready_grace_s):
                what = "serving" if self.deployment is not None else "waiting for a model"
                link = "connected" if connected else self._unreachable()
                self.notifier.ready(self._with_storage_note(f"{what}, {link}"))
                self._ready_sent = True
                # Later STATUS= lines carry the link state as a note of their own.
                if self._service_text == "loading last good model":
                    self._service_text = what
            # Ping the watchdog only while every thread is alive and making
            # progress: a dead updater or a wedged serving loop then gets the
            # service restarted (this loop itself dying stops the pings too).
            problems = self.liveness.problems()
            expired = self.updater.expired()
            if problems != self._liveness_reported or expired != self._expired_reported:
                self._liveness_reported, self._expired_reported = problems, expired
                if problems:
                    log.error("not pinging the watchdog: %s", "; ".join(problems))
                    self.notifier.status("unhealthy: " + "; ".join(problems))
                if expired:
                    log.warning(
                        "desired state revision %s has expired; serving it until a fresh "
                        "signed document arrives",
                        self.updater.applied_revision,
                    )
                self._publish_status_safely()
            if interval is not None and not problems:
                self.notifier.watchdog()

    def _report(self) -> None:
        try:
            self.telemetry.report()
        except Exception:  # telemetry must never take serving down
            log.exception("telemetry report failed")
        if self.exporter is not None and self.config.metrics_textfile_dir is not None:
            try:
                write_textfile(self.config.metrics_textfile_dir, self.exporter.render())
            except OSError as exc:
                log.warning("cannot write the Prometheus textfile: %s", exc)
        release_free_memory()

    def _shutdown(self) -> None:
        self.notifier.stopping()
        if self.http is not None:
            # The loop has drained and answers nothing more: waiting handlers got
            # their replies, new ones got 503 shutting_down.
            self.http.close()
        log.info("stopping: in-flight requests answered; flushing the outbox")
        self._report()  # the last partial interval is not lost
        self._publisher_thread.join(timeout=15)
        if not self.publisher.flush(timeout=10.0):
            log.warning("%d outbox messages stay on disk for the next start", self.outbox.depth())
        if self.link.connected.is_set():
            info = self.link.publish(
                self.topics.status,
                dumps({"device": self.config.device_id, "online": False, "reason": "stopped"}),
                qos=1,
                retain=True,
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=5)
        self.link.stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.outbox.sync()
        self.outbox.close()
