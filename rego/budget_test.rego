package sidecar

fx_day_left(remaining) := {"budget": {"windows": {"day": {"limit": 2000000, "used": 2000000 - remaining, "remaining": remaining}}}}

test_acme_budget_and_rate_limit if {
	d := decision with input as fx_agent_call
	d.budget == {"limits": {"minute": 200000, "day": 2000000}, "default_output_tokens": 16384}
	d.rate_limit == {"requests_per_minute": 120, "per": "tenant"}
}

test_globex_budget_and_rate_limit if {
	d := decision with input as fx_tenant_call("globex", {"request": {"model": "gpt-4o-mini"}})
	d.budget == {"limits": {"minute": 50000, "hour": 500000, "day": 1000000, "month": 20000000}, "default_output_tokens": 16384}
	d.rate_limit == {"requests_per_minute": 30, "per": "tenant"}
}

test_budget_limits_filter_bad_entries if {
	budget_limits == {"day": 5} with input as fx_agent_call with data.sidecar.tenants as fx_tenants_set("/acme/budget/limits", {"day": 5, "week": 7, "hour": "10"})
	budget_limits == {} with input as fx_agent_call with data.sidecar.tenants as fx_tenants_set("/acme/budget/limits", [1])
}

test_default_output_tokens_per_model if {
	default_output_tokens == 32768 with input as fx_model_call("gpt-4.1-mini")
	default_output_tokens == 100000 with input as fx_model_call("o3-mini")
	default_output_tokens == 4096 with input as fx_model_call("some-other-model")
	default_output_tokens == 4096 with input as fx_call({"request": {"model": null}})
}

test_default_output_tokens_largest_match_wins if {
	defaults := {"gpt-4o*": 100, "gpt-4o-mini*": 300, "x*": 999}
	default_output_tokens == 300 with input as fx_model_call("gpt-4o-mini") with data.sidecar.tenants as fx_tenants_set("/acme/budget/default_output_tokens_by_model", defaults)
}

test_default_output_tokens_unset if {
	default_output_tokens == null with input as fx_model_call("unknown") with data.sidecar.defaults.budget.default_output_tokens as "4096"
	default_output_tokens == 4096 with input as fx_model_call("gpt-4o") with data.sidecar.tenants as fx_tenants_set("/acme/budget/default_output_tokens_by_model", [1])
}

test_rate_limit_per_subject if {
	rate_limit == {"requests_per_minute": 5, "per": "subject"} with input as fx_agent_call with data.sidecar.tenants as fx_tenants_set("/acme/rate_limit", {"requests_per_minute": 5, "per": "subject"})
	rate_limit == {"requests_per_minute": 5, "per": "tenant"} with input as fx_agent_call with data.sidecar.tenants as fx_tenants_set("/acme/rate_limit", {"requests_per_minute": 5, "per": "everyone"})
}

test_rate_limit_off if {
	rate_limit == null with input as fx_agent_call with data.sidecar.tenants as fx_tenants_set("/acme/rate_limit", null)
	rate_limit == null with input as fx_agent_call with data.sidecar.tenants as fx_tenants_set("/acme/rate_limit", {"requests_per_minute": "120"})
}

test_expensive_model_denied_when_day_budget_low if {
	d := decision with input as fx_call(fx_day_left(199999))
	d.allow == false
	d.reasons == ["model 'gpt-4o' is marked expensive and less than 10% of the day token budget of tenant 'acme' remains"]
}

test_expensive_model_allowed_at_threshold if {
	decision.allow with input as fx_call(fx_day_left(200000))
}

test_cheap_model_allowed_when_budget_low if {
	decision.allow with input as object.union(fx_model_call("gpt-4o-mini"), fx_day_left(0))
}

test_expensive_guard_other_windows if {
	inp := fx_tenant_call("globex", {"request": {"model": "gpt-4o"}, "budget": {"windows": {"month": {"limit": 100, "remaining": 20}}}})
	d := decision with input as inp with data.sidecar.tenants as fx_tenants_set("/globex/models/agent", ["gpt-4o"])
	d.reasons == ["model 'gpt-4o' is marked expensive and less than 25% of the month token budget of tenant 'globex' remains"]
}

test_expensive_guard_ignores_bad_budget_input if {
	decision.allow with input as fx_call({"budget": {"windows": {"day": {"limit": 0, "remaining": 0}}}})
	decision.allow with input as fx_call({"budget": {"windows": {"day": {"limit": "2000000", "remaining": 1}}}})
	decision.allow with input as fx_call({"budget": {"windows": {"day": {"limit": 2000000, "remaining": null}}}})
	decision.allow with input as fx_call({"budget": {"windows": []}})
}

test_expensive_guard_needs_config if {
	decision.allow with input as fx_call(fx_day_left(0)) with data.sidecar.defaults as fx_defaults_set("/budget/expensive_guard", null)
	decision.allow with input as fx_call(fx_day_left(0)) with data.sidecar.defaults as fx_defaults_set("/budget/expensive_guard", {"windows": ["day"], "min_remaining_percent": "10"})
	decision.allow with input as fx_call(fx_day_left(0)) with data.sidecar.defaults as fx_defaults_set("/budget/expensive_guard", {"windows": "day", "min_remaining_percent": 10})
	decision.allow with input as fx_call(fx_day_left(0)) with data.sidecar.defaults as fx_defaults_set("/budget/expensive_guard", {"windows": [1], "min_remaining_percent": 10})
	expensive_models == [] with data.sidecar.defaults as fx_defaults_set("/models/expensive", null) with input as fx_agent_call
}
