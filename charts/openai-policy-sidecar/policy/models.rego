# Models: allowlists per tenant and per kind of call, plus the output cap.
#
# A call is "user" (user-initiated) when input.subject.user is present and not
# null (an end-user token came with the call), and "agent" otherwise. The
# model of a call must match a pattern of models.<kind> or of models.any
# (patterns allowed for every kind of call, e.g. embedding models), and must
# not match models.deny. So {"agent": ["gpt-4o*"], "user": ["gpt-4-turbo"]}
# reads "agents may use gpt-4o*, user-initiated chats only gpt-4-turbo".
#
# The model check applies to every call that names a model, except the
# operations in operations.model_exempt (default: models.*, which only read
# the model catalogue). Operations in operations.model_required must name one.
package sidecar

call_kind := "user" if {
	input.subject.user != null
} else := "agent"

call_kind_label := "user-initiated" if {
	call_kind == "user"
} else := "agent"

# The requested model (undefined when the request names none).
model := m if {
	m := input.request.model
	is_string(m)
}

model_patterns(sub) := string_list(val) if {
	val := setting2("models", sub)
} else := []

allowed_models := array.concat(model_patterns(call_kind), model_patterns("any"))

denied_models := model_patterns("deny")

model_given if is_string(model)

model_exempt if any_match(operation_patterns("model_exempt"), operation)

model_checked if {
	model_given
	not model_exempt
}

model_denied if any_match(denied_models, model)

model_allowed if any_match(allowed_models, model)

deny contains msg if {
	model_checked
	model_denied
	msg := sprintf("model '%s' is blocked for tenant '%s'", [model, tenant_display])
}

deny contains msg if {
	model_checked
	not model_denied
	not model_allowed
	msg := sprintf("model '%s' is not allowed for %s calls of tenant '%s'", [model, call_kind_label, tenant_display])
}

deny contains msg if {
	not model_given
	any_match(operation_patterns("model_required"), operation)
	msg := sprintf("operation '%s' requires a model", [operation])
}

deny contains "the request's model must be a string" if {
	m := input.request.model
	m != null
	not is_string(m)
}

# max_output_tokens: the cap on the upstream request's output limit. Only for
# operations in operations.output_capped (responses.create and
# chat.completions.create by default); null elsewhere.
#   max_output_tokens_by_model  {"<model pattern>": n}  wins when a pattern
#                               matches the model (the smallest n of all
#                               matching patterns)
#   max_output_tokens           n or null (no cap) for all other models
output_capped if any_match(operation_patterns("output_capped"), operation)

model_caps := [n |
	caps := setting("max_output_tokens_by_model")
	is_object(caps)
	some pat, n in caps
	is_number(n)
	pattern_match(pat, model)
]

max_output_tokens := min(model_caps) if {
	output_capped
	count(model_caps) > 0
} else := n if {
	output_capped
	n := setting("max_output_tokens")
	is_number(n)
} else := null
