"""The request's path through the sidecar, one module per stage (docs/README.md):

canonical → admit → authenticate → classify → inspect → decide → enforce → audit (start) → forward
→ stream → settle → audit (end).

`sidecar.proxy` runs the stages in that order; each stage has a small typed interface so later
capabilities (PII masking, budgets, approvals, identity providers) plug in without touching the others.
"""
