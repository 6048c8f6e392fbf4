"""`python -m sidecar.schemas`: print the input schema that `opa check --schema` uses (see `make lint`)."""

import sys

import orjson

from sidecar.schemas import opa_input_schema

sys.stdout.buffer.write(orjson.dumps(opa_input_schema(), option=orjson.OPT_INDENT_2) + b"\n")
