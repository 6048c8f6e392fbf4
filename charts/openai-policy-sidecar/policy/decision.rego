# The decision document (docs/decision.md), queried at data.sidecar.decision.
#
# Every concern adds human-readable strings to the partial set `deny`; the
# call is allowed when it is empty. `reasons` is that set, sorted. `code` is
# "pii_violation" when every reason comes from a forbidden PII entity type
# (pii.rego) and "policy_violation" otherwise (also when allowed).
#
# Every field always has a value, whatever the input (even {} or a non-object),
# so the decision is never undefined or partial.
package sidecar

default allow := false

allow if count(deny) == 0

reasons := sort(deny)

code := "pii_violation" if {
	count(pii_deny) > 0
	count(deny - pii_deny) == 0
} else := "policy_violation"

# Fail closed should any part ever be undefined.
default decision := {
	"allow": false,
	"reasons": ["the policy could not produce a complete decision"],
	"code": "policy_violation",
	"require_approval": false,
	"approvers": [],
	"mask": {
		"request": {"entities": [], "operator": "placeholder"},
		"response": {"entities": [], "operator": "redact"},
		"restore": true,
	},
	"budget": {"limits": {}, "default_output_tokens": null},
	"max_output_tokens": null,
	"rate_limit": null,
}

decision := {
	"allow": allow,
	"reasons": reasons,
	"code": code,
	"require_approval": require_approval,
	"approvers": approvers,
	"mask": mask,
	"budget": {"limits": budget_limits, "default_output_tokens": default_output_tokens},
	"max_output_tokens": max_output_tokens,
	"rate_limit": rate_limit,
}
