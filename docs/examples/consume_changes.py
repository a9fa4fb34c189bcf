"""Read a sluice change topic from Python, with nothing but the Avro specification.

    pip install fastavro==1.13.1 confluent-kafka==2.16.1
    python consume_changes.py --bootstrap 127.0.0.1:9092 --prefix sluice --model customers

prints one JSON line per record of `<prefix>.changes.<model>`: the partition, offset, the
`sluice.op` header, the decoded key and the decoded change event (`null` for a tombstone).
See docs/consumers.md for the wire format this relies on.

How it resolves a message: every key and value is Avro *single-object encoded* (`C3 01`, the
writer schema's 8-byte fingerprint, then the Avro datum). The writer schemas are published on
the compacted topic `<prefix>.schemas`; this consumer reads them and fingerprints each one
itself (CRC-64-AVRO of the Parsing Canonical Form, as the specification defines it), so it
needs no registry and trusts nothing but the schema text. An unknown fingerprint means a schema
newer than the last read: read the schema topic again.

`WriterSchemas` is the part to copy; sluice's integration tests run it (and this whole script,
against a live broker) on every release.
"""

import argparse
import base64
import datetime
import decimal
import io
import json
import sys
import uuid

from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form

SINGLE_OBJECT_MARKER = b"\xc3\x01"
HEADER_LEN = 10


def schema_fingerprint(schema):
    """The specification's fingerprint of a schema (parsed JSON): 8 bytes, little-endian."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


class UnknownSchema(KeyError):
    """A message names a writer schema this consumer has not read (yet)."""


class WriterSchemas:
    """Writer schemas by the fingerprint computed from their text."""

    def __init__(self):
        self._by_fingerprint = {}

    def add(self, schema_text):
        """Add a schema (the value of a `<prefix>.schemas` record); returns its fingerprint."""
        schema = json.loads(schema_text)
        key = schema_fingerprint(schema)
        self._by_fingerprint[key] = parse_schema(schema)
        return key

    def __len__(self):
        return len(self._by_fingerprint)

    def decode(self, message):
        """Decode a single-object encoded key or value. A tombstone (None) stays None."""
        if message is None:
            return None
        if len(message) < HEADER_LEN or message[:2] != SINGLE_OBJECT_MARKER:
            raise ValueError("not an Avro single-object encoded message")
        key = bytes(message[2:HEADER_LEN])
        schema = self._by_fingerprint.get(key)
        if schema is None:
            raise UnknownSchema(key.hex())
        return schemaless_reader(io.BytesIO(message[HEADER_LEN:]), schema, None)


def to_json(value):
    """Decoded Avro values as JSON: decimals and timestamps as exact text, bytes as base64."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _poll(consumer, timeout_s):
    """The next message, or None when none came within timeout_s; a Kafka error raises."""
    message = consumer.poll(timeout_s)
    if message is not None and message.error():
        raise RuntimeError(message.error())
    return message


def _read_to_end(consumer, topic, on_message, timeout_s):
    """Assign every partition of `topic` from the beginning and hand each message to
    `on_message` until the positions reach the end offsets taken at the start."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
    while True:
        positions = {tp.partition: tp.offset for tp in consumer.position([TopicPartition(topic, p) for p in partitions])}
        # With read_committed, transaction markers take offsets too: compare positions, not
        # the offset of the last message seen.
        if all(ends[p] == 0 or positions.get(p, -1) >= ends[p] for p in partitions):
            return
        if datetime.datetime.now() > deadline:
            raise TimeoutError(f"reading {topic} to its end took over {timeout_s} s")
        message = _poll(consumer, 0.2)
        if message is not None:
            on_message(message)


def main(argv=None):
    from confluent_kafka import Consumer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True, help="sluice's kafka.topic_prefix")
    parser.add_argument("--model", required=True)
    parser.add_argument("--to-end", action="store_true", help="stop at the current end of the change topic")
    args = parser.parse_args(argv)

    def consumer(group):
        # read_committed: the poller writes in transactions; never read an aborted one.
        return Consumer({
            "bootstrap.servers": args.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        })

    schemas = WriterSchemas()

    def load_schemas():
        reader = consumer(f"{args.prefix}.example-schema-reader")
        try:
            _read_to_end(reader, f"{args.prefix}.schemas", lambda m: m.value() and schemas.add(m.value()), 60)
        finally:
            reader.close()

    def decode(message_bytes):
        try:
            return schemas.decode(message_bytes)
        except UnknownSchema:
            load_schemas()  # a schema newer than our last read: it is on the topic by now
            return schemas.decode(message_bytes)

    def emit(message):
        headers = {k: v.decode() for k, v in (message.headers() or [])}
        print(json.dumps({
            "partition": message.partition(),
            "offset": message.offset(),
            "op": headers.get("sluice.op"),
            "key": to_json(decode(message.key())),
            "value": to_json(decode(message.value())),
        }, ensure_ascii=False), flush=True)

    load_schemas()
    topic = f"{args.prefix}.changes.{args.model}"
    changes = consumer(f"{args.prefix}.example-{args.model}")
    try:
        if args.to_end:
            _read_to_end(changes, topic, emit, 120)
        else:
            changes.subscribe([topic])
            while True:
                message = _poll(changes, 1.0)
                if message is None:
                    continue
                emit(message)
                changes.commit(message=message)  # after the work: at least once
    finally:
        changes.close()


if __name__ == "__main__":
    sys.exit(main())
