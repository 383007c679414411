"""What the proxy says about its requests: the access record and log line, metrics, log formats."""
