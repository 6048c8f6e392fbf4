# PII: masking instructions for the sidecar's PII stage, and denial of
# requests that carry forbidden entity types.
#
#   mask.request.entities / mask.request.operator    what to mask in requests
#   mask.response.entities / mask.response.operator  what to mask in responses
#   mask.restore   put original values back where the model echoes placeholders
#   deny_entities  entity types that must never be sent (denied when
#                  input.pii.request[<type>] > 0); code "pii_violation"
#
# Operators: placeholder, redact, replace, mask, hash. An unknown operator in
# a tenant's data falls back to the default's, then to "placeholder"
# (request) / "redact" (response).
package sidecar

mask_operators := {"placeholder", "redact", "replace", "mask", "hash"}

fallback_operator := {"request": "placeholder", "response": "redact"}

mask_entities(dir) := ents if {
	ents := tenant_cfg.mask[dir].entities
	is_array(ents)
} else := ents if {
	ents := cfg_defaults.mask[dir].entities
	is_array(ents)
} else := []

mask_operator(dir) := op if {
	op := tenant_cfg.mask[dir].operator
	is_string(op)
	mask_operators[op]
} else := op if {
	op := cfg_defaults.mask[dir].operator
	is_string(op)
	mask_operators[op]
} else := fallback_operator[dir]

mask_restore := r if {
	r := tenant_cfg.mask.restore
	is_boolean(r)
} else := r if {
	r := cfg_defaults.mask.restore
	is_boolean(r)
} else := true

mask := {
	"request": {"entities": mask_entities("request"), "operator": mask_operator("request")},
	"response": {"entities": mask_entities("response"), "operator": mask_operator("response")},
	"restore": mask_restore,
}

deny_entities := string_list(val) if {
	val := setting("deny_entities")
} else := []

pii_deny contains msg if {
	some entity in deny_entities
	is_string(entity)
	found := input.pii.request[entity]
	is_number(found)
	found > 0
	msg := sprintf("the request contains %s, which tenant '%s' does not allow to be sent", [entity, tenant_display])
}

deny contains msg if {
	some msg in pii_deny
}
