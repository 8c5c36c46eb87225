"""The gateway's endpoints, one module per resource; `deps` holds what they share. Handlers
check and translate; the work is done by the services behind the streams, by
shared.promotion and by the coalescer."""
