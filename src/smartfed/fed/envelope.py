"""One message = one Flower object tree of a few nodes: the records travel as a single byte array.

Flower 1.41's Deployment Runtime moves a message as a tree of objects (message, record dict, one
node per record, per array and per 5 MB array chunk), and every object is its own HTTP request on
every hop: ServerApp -> SuperLink -> SuperNode -> ClientApp and back. SmartFed's router state is
one array per routed matrix (60 for SmolLM2-135M with one LoRA), so a train message is about 124
objects, i.e. 124 requests per hop, two at a time, plus a 1 s back-off whenever the receiver asks
for an object the sender has not pushed yet (measured in docs/deployment.md, section 5).

[D] In the Deployment Runtime the ServerApp's grid (:func:`smartfed.fed.grid_poll.fast_poll`)
therefore sends every message's records as an *envelope*: one ``ArrayRecord`` holding one raw
``Array`` whose bytes are the records' protobuf (``recorddict_to_proto``, exactly what Flower
would have sent, so nothing is lost or re-encoded); the ClientApp opens it before anything else
and seals its reply the same way when (and only when) the instruction came sealed. A sealed
message is 5 objects (one 5 MB chunk per 5 MB of records). Byte accounting is unchanged: the
strategy counts the messages before they are sealed and the replies after they are opened.
Simulation and direct grids never see an envelope.

Torch-free (flwr + protobuf only): the per-message ClientApp imports this.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from smartfed.errors import WireFormatError

KEY = "smartfed.envelope"
"""Name of the single ``ArrayRecord`` of a sealed message."""
STYPE = "smartfed.recorddict.proto"
"""``Array.stype`` of the sealed bytes (a serialized ``flwr.proto`` ``RecordDict``)."""


def to_bytes(content: RecordDict) -> bytes:
    """Serialize records as Flower does on the wire (protobuf)."""
    return bytes(recorddict_to_proto(content).SerializeToString())


def from_bytes(data: bytes) -> RecordDict:
    """Inverse of :func:`to_bytes`."""
    return recorddict_from_proto(ProtoRecordDict.FromString(data))


def seal(content: RecordDict) -> RecordDict:
    """``content`` as one ``ArrayRecord`` with one ``uint8`` array of its protobuf bytes."""
    data = to_bytes(content)
    array = Array(dtype="uint8", shape=(len(data),), stype=STYPE, data=data)
    return RecordDict({KEY: ArrayRecord({"records": array})})


def is_sealed(content: RecordDict) -> bool:
    """Whether ``content`` is an envelope made by :func:`seal`."""
    return list(content.keys()) == [KEY] and isinstance(content[KEY], ArrayRecord)


def open_content(content: RecordDict) -> RecordDict:
    """The records inside an envelope (``content`` itself when it is not sealed).

    Raises:
        WireFormatError: an envelope whose array is not sealed records.
    """
    if not is_sealed(content):
        return content
    record = content.array_records[KEY]
    array = record.get("records")
    if len(record) != 1 or array is None or array.stype != STYPE:
        raise WireFormatError(f"malformed {KEY} record: expected one {STYPE!r} array")
    try:
        return from_bytes(array.data)
    except Exception as err:  # protobuf DecodeError and friends
        raise WireFormatError(f"malformed {KEY} record: {err}") from err


def seal_message(msg: Message) -> Message:
    """A new instruction to the same node with ``msg``'s records sealed (``msg`` untouched)."""
    md = msg.metadata
    return Message(
        seal(msg.content),
        dst_node_id=md.dst_node_id,
        message_type=md.message_type,
        group_id=md.group_id,
        ttl=md.ttl,
    )


def open_message(msg: Message) -> Message:
    """``msg`` with its envelope opened in place (error replies are returned unchanged)."""
    if msg.has_content() and is_sealed(msg.content):
        msg.content = open_content(msg.content)
    return msg
