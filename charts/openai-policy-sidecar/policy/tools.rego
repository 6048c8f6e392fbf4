# Tools: a tenant can forbid tool types in request bodies (tools.denied, a
# list of patterns matched against input.request.tools, e.g. "mcp",
# "computer_use_preview", "code_interpreter").
package sidecar

denied_tools := string_list(val) if {
	val := setting2("tools", "denied")
} else := []

deny contains msg if {
	tools := input.request.tools
	is_array(tools)
	some tool in tools
	any_match(denied_tools, tool)
	msg := sprintf("tool type '%s' is not allowed for tenant '%s'", [tool, tenant_display])
}
