"""What operators watch: ``logging`` (JSON lines), ``metrics`` (every Prometheus metric, defined
once) and ``tracing`` (OpenTelemetry). Code calls their small helpers; importing does no work."""
