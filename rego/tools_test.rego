package sidecar

test_tools_allowed_by_default if {
	decision.allow with input as fx_call({"request": {"tools": ["function", "file_search", "mcp", "web_search"]}})
	denied_tools == [] with input as fx_agent_call
}

test_globex_denies_tool_types if {
	d := decision with input as fx_tenant_call("globex", {"request": {"model": "gpt-4o-mini", "tools": ["function", "mcp", "code_interpreter"]}})
	d.allow == false
	d.reasons == [
		"tool type 'code_interpreter' is not allowed for tenant 'globex'",
		"tool type 'mcp' is not allowed for tenant 'globex'",
	]
	decision.allow with input as fx_tenant_call("globex", {"request": {"model": "gpt-4o-mini", "tools": ["function"]}})
}

test_tool_patterns if {
	not decision.allow with input as fx_call({"request": {"tools": ["computer_use_preview"]}}) with data.sidecar.tenants as fx_tenants_set("/acme/tools", {"denied": ["computer_use*"]})
}

test_tools_not_a_list_is_ignored if {
	decision.allow with input as fx_tenant_call("globex", {"request": {"model": "gpt-4o-mini", "tools": "mcp"}})
	decision.allow with input as fx_tenant_call("globex", {"request": {"model": "gpt-4o-mini", "tools": [{"type": "mcp"}, 3]}})
}

test_no_tool_config_means_no_tool_denied if {
	denied_tools == [] with data.sidecar.defaults as fx_defaults_set("/tools", {}) with input as fx_agent_call
}
