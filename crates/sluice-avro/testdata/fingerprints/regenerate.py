"""Regenerate expected.json: what fastavro (an Avro implementation independent of sluice)
computes for every .avsc here: its Parsing Canonical Form and CRC-64-AVRO fingerprint.

    ~/.cache/sluice/py/bin/python crates/sluice-avro/testdata/fingerprints/regenerate.py

(the venv ops/deps.sh creates, with the fastavro version it pins). sluice-avro's unit test
`fingerprints_match_fastavro` checks its own values against this file. The model_*.avsc files
are the schemas ModelCodec publishes for the model `all_types` of src/tests.rs; that test
checks they still are. The example model's schemas of schemas/examples/ are vectors too (named
by their path from here).
"""
import json
import os
import pathlib

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

here = pathlib.Path(__file__).resolve().parent
expected = {"generator": f"fastavro {fastavro.__version__}", "schemas": {}}
examples = here.parents[3] / "schemas" / "examples"
for path in sorted(here.glob("*.avsc")) + sorted(examples.glob("*.avsc")):
    schema = json.loads(path.read_text())
    form = to_parsing_canonical_form(schema)
    name = path.name if path.parent == here else os.path.relpath(path, here)
    expected["schemas"][name] = {"canonical_form": form, "fingerprint": fingerprint(form, "CRC-64-AVRO")}
(here / "expected.json").write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n")
print(f"wrote {len(expected['schemas'])} vectors to {here / 'expected.json'}")
