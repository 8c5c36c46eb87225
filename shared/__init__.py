"""What every streamops service imports: event contracts, settings, broker wiring, telemetry."""
