"""Envelope: a sealed message is a handful of Flower objects instead of one per array, survives
Flower's own deflate/inflate unchanged, and the ClientApp answers sealed with sealed, plain with
plain."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from smartfed.errors import WireFormatError
from smartfed.fed import envelope as env
from smartfed.fed.client_app import _reply

pytestmark = pytest.mark.usefixtures("task_identity")


def _records(n: int = 60) -> RecordDict:
    rng = np.random.default_rng(0)
    arrays = {f"m{i}": Array(rng.standard_normal((8, 64)).astype(np.float32)) for i in range(n)}
    return RecordDict({"routers": ArrayRecord(arrays), "cfg": ConfigRecord({"round": 3})})


def _over_the_wire(msg: Message) -> Message:
    """What the receiver inflates: Flower's objects deflated one by one, then rebuilt."""
    objects = get_all_nested_objects(msg)
    contents = {oid: obj.deflate() for oid, obj in objects.items()}
    return inflate_object_from_contents(msg.object_id, contents)  # type: ignore[return-value]


def test_sealed_message_is_few_objects_and_opens_to_the_same_records() -> None:
    rd = _records()
    msg = Message(rd, dst_node_id=7, message_type="train", group_id="3", ttl=60.0)
    sealed = env.seal_message(msg)
    assert len(get_all_nested_objects(msg)) > 120  # one object per array (and its chunk)
    assert len(get_all_nested_objects(sealed)) == 5  # message, records, record, array, chunk
    md = sealed.metadata
    assert (md.dst_node_id, md.message_type, md.group_id, md.ttl) == (7, "train", "3", 60.0)
    assert msg.content is rd and not env.is_sealed(msg.content)  # the original is untouched
    got = env.open_content(_over_the_wire(sealed).content)
    assert env.to_bytes(got) == env.to_bytes(rd)
    np.testing.assert_array_equal(got["routers"]["m5"].numpy(), rd["routers"]["m5"].numpy())


def test_plain_content_passes_and_a_forged_envelope_is_refused() -> None:
    rd = _records(2)
    assert env.open_content(rd) is rd
    bad = RecordDict({env.KEY: ArrayRecord({"records": Array(np.zeros(4, np.uint8))})})
    with pytest.raises(WireFormatError, match="expected one"):
        env.open_content(bad)
    junk = Array(dtype="uint8", shape=(3,), stype=env.STYPE, data=b"\xff\xff\xff")
    with pytest.raises(WireFormatError, match="malformed"):
        env.open_content(RecordDict({env.KEY: ArrayRecord({"records": junk})}))


def test_reply_is_sealed_only_when_the_instruction_was() -> None:
    ins = Message(_records(2), dst_node_id=7, message_type="train", group_id="1", ttl=60.0)
    out = RecordDict({"metrics": ConfigRecord({"loss": 0.5})})
    assert not env.is_sealed(_reply(ins, out).content)
    sealed_reply = _reply(env.seal_message(ins), out)
    assert env.is_sealed(sealed_reply.content)
    opened = env.open_message(sealed_reply)
    assert opened is sealed_reply and env.to_bytes(opened.content) == env.to_bytes(out)
