"""The key layout keeps what one MULTI touches on one Redis Cluster slot (shared/keys.py)."""

from __future__ import annotations

import uuid

from redis.crc import key_slot

from shared.events import STREAMS, ScoreChunkRequested
from shared.jobs import done_key as job_done_key
from shared.jobs import job_key
from shared.keys import dead_letter_stream, done_key, errors_key, hash_tag, heartbeat_key


def _slot(key: str) -> int:
    return int(key_slot(key.encode()))


def test_every_stream_shares_its_slot_with_its_dead_letters_and_bookkeeping() -> None:
    event_id = uuid.uuid4()
    for stream in STREAMS:
        companions = [
            dead_letter_stream(stream),
            errors_key(stream, "a-group"),
            done_key(stream, "a-group", event_id),
        ]
        assert {_slot(key) for key in companions} == {_slot(stream)}, stream


def test_the_streams_spread_over_the_three_shards_of_a_local_cluster() -> None:
    # redis-cli --cluster create gives 3 masters the slots 0-5460, 5461-10922, 10923-16383.
    shards = {min(_slot(stream) * 3 // 16384, 2) for stream in STREAMS}
    assert shards == {0, 1, 2}


def test_a_scoring_job_lives_on_the_slot_of_its_chunks_stream() -> None:
    stream = ScoreChunkRequested.stream
    assert _slot(job_key("job-1")) == _slot(job_done_key("job-1")) == _slot(stream)


def test_every_heartbeat_of_a_service_is_on_one_slot_for_one_mget() -> None:
    keys = [heartbeat_key("predictor", f"replica-{n}") for n in range(20)]
    assert len({_slot(key) for key in keys}) == 1
    assert heartbeat_key("predictor", "r1").startswith("streamops:heartbeat:{predictor}:")


def test_a_name_with_a_hash_tag_keeps_it() -> None:
    assert hash_tag("predict-requests:{iris}") == "{iris}"
    assert dead_letter_stream("predict-requests:{iris}") == "predict-requests:{iris}.dlq"
    assert _slot(dead_letter_stream("predict-requests:{iris}")) == _slot("{iris}")
