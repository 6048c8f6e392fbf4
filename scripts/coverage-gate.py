"""Fail unless `opa test --coverage --format=json` (on stdin) reports at least the given percentage."""

import json
import sys

threshold = float(sys.argv[1])
report = json.load(sys.stdin)
coverage = float(report.get("coverage", 0.0))
print(f"rego coverage: {coverage:.2f}% (gate: {threshold:.0f}%)")
sys.exit(0 if coverage >= threshold else 1)
