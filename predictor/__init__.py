"""streamops predictor service (see the open issues)."""
