"""The outside decoder of integration-tests/tests/it/outside_decoder.rs: fastavro, an Avro
implementation that is not sluice's, reads what sluice wrote. Run with the venv ops/deps.sh
makes (~/.cache/sluice/py/bin/python).

    outside_decoder.py decode DUMP_DIR
        DUMP_DIR/schemas.jsonl: the values of the schema topic, one JSON string per line (the
        topic's keys are deliberately not given: every fingerprint is computed here).
        DUMP_DIR/changes.jsonl: the change topic, one {"key", "value" (base64 or null),
        "headers"} per line.
        Prints {"schemas": [fingerprint...], "records": [...]}: for each record the fingerprints
        its key and value name, the `sluice.schema.fingerprint` header, and the decoded key and
        value (JSON, via the example consumer's to_json).

    outside_decoder.py parse-schemas DIR
        Parses every .avsc under DIR on its own and prints {relative path: fingerprint}.

Decoding goes through WriterSchemas of docs/examples/consume_changes.py, the example consumers
copy, so the example is what is tested.
"""

import base64
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "docs" / "examples"))

from consume_changes import WriterSchemas, schema_fingerprint, to_json  # noqa: E402
from fastavro import parse_schema  # noqa: E402


def decode(dump):
    dump = pathlib.Path(dump)
    schemas = WriterSchemas()
    fingerprints = []
    for line in dump.joinpath("schemas.jsonl").read_text().splitlines():
        fingerprints.append(schemas.add(json.loads(line)).hex())
    records = []
    for line in dump.joinpath("changes.jsonl").read_text().splitlines():
        record = json.loads(line)
        key = base64.b64decode(record["key"])
        value = None if record["value"] is None else base64.b64decode(record["value"])
        records.append({
            "key_fingerprint": key[2:10].hex(),
            "value_fingerprint": None if value is None else value[2:10].hex(),
            "header_fingerprint": record["headers"].get("sluice.schema.fingerprint"),
            "op_header": record["headers"].get("sluice.op"),
            "key": to_json(schemas.decode(key)),
            "value": to_json(schemas.decode(value)),
        })
    return {"schemas": sorted(fingerprints), "records": records}


def parse_schemas(root):
    root = pathlib.Path(root)
    out = {}
    for path in sorted(root.rglob("*.avsc")):
        schema = json.loads(path.read_text())
        parse_schema(schema)  # raises on anything that does not stand on its own
        out[str(path.relative_to(root))] = schema_fingerprint(schema).hex()
    return out


if __name__ == "__main__":
    command, argument = sys.argv[1], sys.argv[2]
    result = {"decode": decode, "parse-schemas": parse_schemas}[command](argument)
    json.dump(result, sys.stdout, indent=1, ensure_ascii=False)
    print()
