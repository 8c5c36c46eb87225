"""Where streamops keeps things in Redis, laid out so that Redis Cluster can shard them.

Redis Cluster places a key by a hash of its name, or of the part between the first `{` and
the next `}` when there is one (its hash tag). Commands that touch several keys at once (a
MULTI, an MGET) must stay on one slot. So every stream's companions carry the stream's name as
their hash tag and share its slot, while different streams spread over the shards:

- a stream keeps its plain name (`data-arrived`): redis-cli users XADD to it as before, and a
  name without a tag hashes whole, which is what the tag `{data-arrived}` hashes to;
- its dead letters: `{data-arrived}.dlq`, moved there in one MULTI with the XACK;
- a group's bookkeeping: `streamops:errors:{data-arrived}:<group>` and
  `streamops:done:{data-arrived}:<group>:<event id>`, written in the ack's MULTI;
- a scoring job, `streamops:score:{score-chunks}:<job id>` and its `:done` set: planned in one
  MULTI with its chunks' entries on `score-chunks`;
- heartbeats, `streamops:heartbeat:{<service>}:<consumer>`: one slot per service, so a
  gateway reads every predictor's heartbeat in one MGET.

The full table is in docs/scaling.md.
"""

from __future__ import annotations


def hash_tag(name: str) -> str:
    """The hash tag that puts a key on `name`'s slot: `{name}`, or the tag `name` has."""
    start = name.find("{")
    end = name.find("}", start + 1)
    if start >= 0 and end > start + 1:
        return name[start : end + 1]
    return "{" + name + "}"


def dead_letter_stream(stream: str) -> str:
    """Where `stream`'s poison messages go: on its slot, so the move is one MULTI."""
    own = hash_tag(stream)
    return f"{stream}.dlq" if own in stream else f"{own}.dlq"


def errors_key(stream: str, group: str) -> str:
    """`group`'s last error per pending message of `stream`."""
    return f"streamops:errors:{hash_tag(stream)}:{group}"


def done_key(stream: str, group: str, event_id: object) -> str:
    """Set once `group` has handled the event `event_id` read from `stream`."""
    return f"streamops:done:{hash_tag(stream)}:{group}:{event_id}"


def heartbeat_key(service: str, consumer: str) -> str:
    return f"streamops:heartbeat:{hash_tag(service)}:{consumer}"


def progress_key(flow: str) -> str:
    return f"streamops:progress:{flow}"
