"""The Grafana dashboard and the Prometheus alerts of notifier, and the metric contract both use."""
