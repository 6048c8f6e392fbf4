# Operations: default deny. Only operations matching a pattern of
# operations.allowed (tenant, else defaults) pass; the classifier's "unknown"
# operation, the admin API (organization.*) and realtime (realtime.*: client
# secrets and sessions hand out credentials that talk to OpenAI directly and
# would bypass the sidecar) are denied for every tenant, whatever the data
# says. A tenant can switch off more operations with operations.denied.
package sidecar

# The operation named by the classifier ("unknown" when missing or not a string).
operation := op if {
	op := input.request.operation
	is_string(op)
	op != ""
} else := "unknown"

admin_operation if startswith(operation, "organization.")

admin_operation if operation == "organization"

realtime_operation if startswith(operation, "realtime.")

realtime_operation if operation == "realtime"

# Operations denied by the policy itself, never by data.
forbidden_operation if operation == "unknown"

forbidden_operation if admin_operation

forbidden_operation if realtime_operation

# operation_patterns(sub): the operation pattern list operations.<sub>.
operation_patterns(sub) := string_list(val) if {
	val := setting2("operations", sub)
} else := []

allowed_operations := operation_patterns("allowed")

tenant_denied_operations := operation_patterns("denied")

operation_allowed if any_match(allowed_operations, operation)

operation_disabled if any_match(tenant_denied_operations, operation)

deny contains "unrecognised operation: the method and path are not a known OpenAI API call" if {
	operation == "unknown"
}

deny contains msg if {
	admin_operation
	msg := sprintf("operation '%s' is an OpenAI admin API call; admin operations are never allowed through the sidecar", [operation])
}

deny contains msg if {
	realtime_operation
	msg := sprintf("operation '%s' is not allowed: realtime sessions and client secrets connect to OpenAI directly and would bypass the sidecar", [operation])
}

deny contains msg if {
	not forbidden_operation
	not operation_allowed
	msg := sprintf("operation '%s' is not allowed for tenant '%s'", [operation, tenant_display])
}

deny contains msg if {
	not forbidden_operation
	operation_allowed
	operation_disabled
	msg := sprintf("operation '%s' is disabled for tenant '%s'", [operation, tenant_display])
}
