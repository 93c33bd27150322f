"""The agent's public contract with the control node: everything both sides must agree on.

The control node imports the agent only through this package (an import-linter
contract in the root pyproject.toml enforces it), and nothing here imports another
agent module, so the contract can be read, and changed, on its own:

* :mod:`~edgeloop_agent.wire.topics`: every topic and subscription filter, the prefix rule;
* :mod:`~edgeloop_agent.wire.names`: what a device id, model name or topic may be;
* :mod:`~edgeloop_agent.wire.envelopes`: the outbox envelope devices send their reports in;
* :mod:`~edgeloop_agent.wire.desired`: the signed desired-state envelope and document;
* :mod:`~edgeloop_agent.wire.modelmeta`: the metadata inside every ONNX artifact;
* :mod:`~edgeloop_agent.wire.profile`: the drift reference profile training ships in it;
* :mod:`~edgeloop_agent.wire.calibration`: the calibration map training ships in it, and the
  label-free performance estimators (CBPE) both sides compute with it;
* :mod:`~edgeloop_agent.wire.allocation`: A/B bucket ranges and the maths that moves them;
* :mod:`~edgeloop_agent.wire.signature`: how signed desired state and artifacts are verified;
* :mod:`~edgeloop_agent.wire.network`: broker URLs, TLS options, connect errors, listen addresses;
* :mod:`~edgeloop_agent.wire.histogram` and :mod:`~edgeloop_agent.wire.exposition`: the
  telemetry latency histogram and its Prometheus rendering;
* :mod:`~edgeloop_agent.wire.numeric`: what counts as a number (bool, NaN and inf rules);
* :mod:`~edgeloop_agent.wire.jsontext`: how an error message quotes a value (as JSON, clipped).
* :mod:`~edgeloop_agent.wire.bundle`: the enrolment bundle ``edgeloop fleet add`` writes
  and ``edgeloop-agent enroll`` installs.

Nothing is re-exported here: importing one module does not load the others (the
profile needs numpy, signatures need cryptography).
"""
