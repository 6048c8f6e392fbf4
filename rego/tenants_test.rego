package sidecar

test_known_tenant_uses_its_config if {
	tenant_key == "acme" with input as fx_agent_call
	tenant_cfg.rate_limit.requests_per_minute == 120 with input as fx_agent_call
	count(deny) == 0 with input as fx_agent_call
}

test_unknown_tenant_denied if {
	d := decision with input as fx_tenant_call("initech", {})
	d.allow == false
	"unknown tenant 'initech'" in d.reasons
}

test_missing_tenant_denied if {
	d := decision with input as object.remove(fx_agent_call, ["subject"])
	"caller has no tenant" in d.reasons
	not tenant_known with input as object.remove(fx_agent_call, ["subject"])
	tenant_display == "<none>" with input as {}
}

test_non_string_tenant_is_no_tenant if {
	tenant_name == "" with input as fx_call({"subject": {"tenant": 7}})
}

test_fallback_tenant_when_configured if {
	inp := fx_tenant_call("initech", {})
	d := decision with input as inp with data.sidecar.defaults as fx_defaults_set("/fallback_tenant", "acme")
	d.allow == true
	d.rate_limit == {"requests_per_minute": 120, "per": "tenant"}
	tenant_key == "acme" with input as inp with data.sidecar.defaults as fx_defaults_set("/fallback_tenant", "acme")
	tenant_display == "initech" with input as inp with data.sidecar.defaults as fx_defaults_set("/fallback_tenant", "acme")
}

test_fallback_to_missing_tenant_still_denies if {
	d := decision with input as fx_tenant_call("initech", {}) with data.sidecar.defaults as fx_defaults_set("/fallback_tenant", "nobody")
	"unknown tenant 'initech'" in d.reasons
}

test_no_fallback_without_tenant_name if {
	d := decision with input as object.remove(fx_agent_call, ["subject"]) with data.sidecar.defaults as fx_defaults_set("/fallback_tenant", "acme")
	"caller has no tenant" in d.reasons
}

test_unknown_tenant_gets_default_settings if {
	d := decision with input as fx_tenant_call("initech", {})
	d.rate_limit == {"requests_per_minute": 60, "per": "tenant"}
	d.budget.limits == {"minute": 100000, "day": 1000000}
}

test_setting_prefers_tenant_then_defaults if {
	setting("rate_limit") == {"requests_per_minute": 120} with input as fx_agent_call
	setting("deny_entities") == ["CREDIT_CARD"] with input as fx_agent_call
	not setting("no_such_setting") with input as fx_agent_call
}

test_explicit_null_in_tenant_overrides_default if {
	setting("rate_limit") == null with input as fx_agent_call with data.sidecar.tenants as fx_tenants_set("/acme/rate_limit", null)
}

test_setting2_merges_one_level if {
	setting2("models", "user") == ["gpt-4-turbo"] with input as fx_agent_call
	setting2("models", "deny") == ["o1-pro*", "o3-pro*"] with input as fx_agent_call
	not setting2("models", "nothing") with input as fx_agent_call
}

test_non_object_data_is_ignored if {
	cfg_defaults == {} with data.sidecar.defaults as "broken"
	cfg_tenants == {} with data.sidecar.tenants as ["acme"]
	d := decision with input as fx_agent_call with data.sidecar.tenants as ["acme"] with data.sidecar.defaults as "broken"
	fx_well_formed(d)
	d.allow == false
	d.reasons == [
		"model 'gpt-4o' is not allowed for agent calls of tenant 'acme'",
		"operation 'responses.create' is not allowed for tenant 'acme'",
		"unknown tenant 'acme'",
	]
}
