package sidecar

# Shared fixtures (used by every *_test.rego file of the bundle).

# An agent's Responses call for tenant acme, as the sidecar builds it.
fx_agent_call := {
	"version": 1,
	"request": {
		"id": "req_test",
		"method": "POST",
		"path": "/v1/responses",
		"operation": "responses.create",
		"model": "gpt-4o",
		"stream": true,
		"max_output_tokens": 1024,
		"tools": ["function"],
		"body_bytes": 2345,
		"estimated_input_tokens": 310,
		"headers": {"x-tenant-id": "acme"},
	},
	"subject": {
		"authenticated": true,
		"sub": "system:serviceaccount:agents:support-bot",
		"tenant": "acme",
		"groups": ["agents"],
		"issuer": "https://issuer.example",
		"user": null,
	},
	"pii": {"request": {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1}},
	"budget": {"tenant": "acme", "windows": {"day": {
		"limit": 2000000,
		"used": 120345,
		"remaining": 1879655,
		"resets_at": "2026-11-25T00:00:00Z",
	}}},
	"approval": {"id": "apr_test", "status": "none"},
	"time": {"now": "2026-11-24T10:00:00Z"},
}

# fx_call(patch): the agent call with patch merged in (recursively).
fx_call(patch) := object.union(fx_agent_call, patch)

# fx_tenant_call(tenant, patch): the same call made by another tenant.
fx_tenant_call(tenant, patch) := object.union(
	fx_agent_call,
	object.union(
		{"subject": {"tenant": tenant}, "request": {"headers": {"x-tenant-id": tenant}}},
		patch,
	),
)

# An end user's call (input.subject.user present).
fx_user := {"sub": "user-123", "email": "jane@example.com", "groups": ["support"]}

fx_decision_keys := {
	"allow", "reasons", "code", "require_approval", "approvers",
	"mask", "budget", "max_output_tokens", "rate_limit",
}

# The shape docs/decision.md requires, checked on any decision.
fx_well_formed(d) if {
	{k | some k, _ in d} == fx_decision_keys
	is_boolean(d.allow)
	is_array(d.reasons)
	is_string(d.code)
	is_boolean(d.require_approval)
	is_array(d.approvers)
	is_array(d.mask.request.entities)
	is_string(d.mask.request.operator)
	is_array(d.mask.response.entities)
	is_string(d.mask.response.operator)
	is_boolean(d.mask.restore)
	is_object(d.budget.limits)
	fx_number_or_null(d.max_output_tokens)
	fx_rpm_or_null(d.rate_limit)
}

fx_number_or_null(x) if is_number(x)

fx_number_or_null(x) if x == null

fx_rpm_or_null(x) if is_number(x.requests_per_minute)

fx_rpm_or_null(x) if x == null

test_allowed_agent_call_full_decision if {
	decision == {
		"allow": true,
		"reasons": [],
		"code": "policy_violation",
		"require_approval": false,
		"approvers": [],
		"mask": {
			"request": {"entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON"], "operator": "placeholder"},
			"response": {"entities": ["CREDIT_CARD", "US_SSN", "IBAN_CODE"], "operator": "redact"},
			"restore": true,
		},
		"budget": {"limits": {"minute": 200000, "day": 2000000}, "default_output_tokens": 16384},
		"max_output_tokens": 4096,
		"rate_limit": {"requests_per_minute": 120, "per": "tenant"},
	} with input as fx_agent_call
}

test_empty_input_is_a_complete_deny if {
	d := decision with input as {}
	fx_well_formed(d)
	d.allow == false
	d.code == "policy_violation"
	d.reasons == [
		"caller has no tenant",
		"caller is not authenticated",
		"unrecognised operation: the method and path are not a known OpenAI API call",
	]
}

test_non_object_inputs_are_complete_denies if {
	every inp in ["text", 42, null, [1, 2], true] {
		d := decision with input as inp
		fx_well_formed(d)
		d.allow == false
	}
}

test_garbage_field_types_are_complete_decisions if {
	garbage := {
		"request": {
			"operation": 7, "model": ["gpt-4o"], "tools": "function",
			"headers": [], "max_output_tokens": "many",
		},
		"subject": {"authenticated": "yes", "tenant": 3, "user": 0},
		"pii": {"request": [1]},
		"budget": {"windows": "day"},
		"approval": "approved",
	}
	d := decision with input as garbage
	fx_well_formed(d)
	d.allow == false
	d.require_approval == false
}

test_reasons_are_sorted_and_allow_false_when_any if {
	d := decision with input as fx_call({"subject": {"authenticated": false}, "request": {"model": "gpt-4-32k"}})
	d.allow == false
	d.reasons == [
		"caller is not authenticated",
		"model 'gpt-4-32k' is not allowed for agent calls of tenant 'acme'",
	]
	d.code == "policy_violation"
}

test_code_pii_violation_only_when_all_reasons_are_pii if {
	d := decision with input as fx_call({"pii": {"request": {"CREDIT_CARD": 1}}})
	d.code == "pii_violation"
	d.allow == false
	mixed := decision with input as fx_call({"pii": {"request": {"CREDIT_CARD": 1}}, "request": {"model": "o1-pro"}})
	mixed.code == "policy_violation"
	count(mixed.reasons) == 2
}

# Data overrides for tests. Tests replace data.sidecar.tenants or
# data.sidecar.defaults as a whole: OPA 1.4 merges an object given to
# `with data.a.b.c as {...}` into the existing data when a rule reads a parent
# path (data.a.b), while regorus replaces it, so sub-path overrides would make
# the two engines disagree.
fx_tenants_set(path, value) := json.patch(data.sidecar.tenants, [{"op": "add", "path": path, "value": value}])

fx_defaults_set(path, value) := json.patch(data.sidecar.defaults, [{"op": "add", "path": path, "value": value}])
