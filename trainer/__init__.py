"""streamops trainer service (see the open issues)."""
