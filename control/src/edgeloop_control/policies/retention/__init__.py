"""Retention of the control database: raw telemetry and drift windows for ``raw_days``,
then hourly aggregates; noisy events and de-duplication ids deleted (docs/operations.md).

``job.RetentionJob`` is the daemon's; ``aggregate`` is also read by report/history, so
this package imports nothing itself (the job pulls in the policies' stores).
"""
