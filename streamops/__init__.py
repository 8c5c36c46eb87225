"""The streamops command line and local stack."""
