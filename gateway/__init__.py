"""streamops gateway service (see the open issues)."""
