"""Demo backends and a one-command demo of the gateway (`gateway demo`)."""
