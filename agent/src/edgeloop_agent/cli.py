"""``edgeloop-agent``: the device daemon's command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edgeloop_agent import __version__
from edgeloop_agent.config import AgentConfig, ConfigError
from edgeloop_agent.systemd import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="edgeloop-agent",
        description="edgeloop device agent: ONNX inference, A/B routing and drift over MQTT. "
        "`edgeloop-agent enroll BUNDLE` installs an enrolment bundle as its configuration.",
    )
    p.add_argument("--config", "-c", type=Path, help="TOML config file (flags override it)")
    p.add_argument("--broker", help="broker URL, e.g. mqtt://host:1883")
    p.add_argument(
        "--ca-file", help="with mqtts://: PEM file of the CA that signed the broker's certificate"
    )
    p.add_argument("--device-id", help="this device's id (topic segment)")
    p.add_argument("--state-dir", type=Path, help="directory for models and the outbox")
    p.add_argument("--topic-prefix", help="topic prefix (default edgeloop)")
    p.add_argument(
        "--trusted-key",
        action="append",
        type=Path,
        dest="trusted_keys",
        help="Ed25519 public key (PEM) allowed to sign desired state and models; repeatable "
        "(several during a key rotation)",
    )
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        default=None,
        help="development only: apply unsigned desired state and models when no "
        "--trusted-key is given (warned at every start, shown on status)",
    )
    p.add_argument("--max-artifact-bytes", type=int)
    p.add_argument("--max-desired-bytes", type=int)
    p.add_argument("--max-payload-bytes", type=int)
    p.add_argument("--capture-rate", type=float)
    p.add_argument(
        "--max-intake",
        type=int,
        help="requests read and not yet served; past it a burst waits in the broker",
    )
    p.add_argument("--telemetry-interval", type=float, dest="telemetry_interval_s")
    p.add_argument("--drift-window", type=int, help="rows per drift window (count windows)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--metrics",
        dest="metrics_listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (off by default)",
    )
    p.add_argument(
        "--metrics-textfile",
        dest="metrics_textfile_dir",
        type=Path,
        metavar="DIR",
        help="write Prometheus metrics to DIR/edgeloop_agent.prom for node_exporter",
    )
    p.add_argument(
        "--http",
        dest="http_listen",
        metavar="HOST:PORT",
        help="serve the Open Inference Protocol v2 on http://HOST:PORT/v2 (off by default; "
        "no authentication: keep it on loopback)",
    )
    p.add_argument("--version", action="version", version=f"edgeloop-agent {__version__}")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> AgentConfig:
    config = AgentConfig.from_file(args.config) if args.config else AgentConfig()
    config.override(
        broker=args.broker,
        ca_file=args.ca_file,
        device_id=args.device_id,
        state_dir=args.state_dir,
        topic_prefix=args.topic_prefix,
        trusted_keys=args.trusted_keys,
        allow_unsigned=args.allow_unsigned,
        max_artifact_bytes=args.max_artifact_bytes,
        max_desired_bytes=args.max_desired_bytes,
        max_payload_bytes=args.max_payload_bytes,
        capture_rate=args.capture_rate,
        max_intake=args.max_intake,
        telemetry_interval_s=args.telemetry_interval_s,
        drift_window=args.drift_window,
        log_level=args.log_level,
        metrics_listen=args.metrics_listen,
        metrics_textfile_dir=args.metrics_textfile_dir,
        http_listen=args.http_listen,
    )
    if not config.device_id:
        raise ConfigError("a device id is required (--device-id or device_id in the config)")
    return config.validate()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["enroll"]:
        # A subcommand of its own: it installs a config rather than running with one.
        from edgeloop_agent.enroll import main as enroll

        return enroll(argv[1:])
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"edgeloop-agent: error: {exc}", file=sys.stderr)
        return 2
    if config.trusted_keys:
        # A wrong path, a garbage file or a private key: one line, exit 2, no traceback.
        from edgeloop_agent.wire.signature import SignatureError, load_public_keys

        try:
            load_public_keys(config.trusted_keys)
        except SignatureError as exc:
            print(f"edgeloop-agent: error: --trusted-key: {exc}", file=sys.stderr)
            return 2
    setup_logging(config.log_level)
    log = logging.getLogger("edgeloop.agent")
    if config.allow_unsigned:
        log.warning(
            "--allow-unsigned: desired state and models are applied WITHOUT signature "
            "checks; anyone who can publish to this device's desired topic controls it"
        )
    elif not config.trusted_keys:
        log.warning(
            "no --trusted-key: every desired state will be refused until one is configured "
            "(or --allow-unsigned is given, for development only)"
        )
    # Before onnxruntime and the agent's threads exist: arenas are made per thread.
    from edgeloop_agent.procstats import limit_malloc_arenas

    limit_malloc_arenas(1)
    from edgeloop_agent.agent import Agent  # heavy imports only once arguments are valid
    from edgeloop_agent.outbox import OutboxError

    try:
        agent = Agent(config)
    except (ConfigError, OSError, ValueError, OutboxError) as exc:
        logging.getLogger("edgeloop.agent").error("cannot start: %s", exc)
        return 1
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
