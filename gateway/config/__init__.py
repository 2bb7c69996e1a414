"""Text in, immutable model out: sources -> validation -> `model.GatewayConfig`."""
