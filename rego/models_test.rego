package sidecar

fx_model_call(m) := fx_call({"request": {"model": m}})

fx_user_call(m) := fx_call({"subject": {"user": fx_user}, "request": {"model": m}})

test_call_kind if {
	call_kind == "agent" with input as fx_agent_call
	call_kind == "agent" with input as object.remove(fx_agent_call, ["subject"])
	call_kind == "user" with input as fx_user_call("gpt-4-turbo")
	call_kind_label == "user-initiated" with input as fx_user_call("gpt-4-turbo")
}

test_acme_agent_models_allowed if {
	every m in ["gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "gpt-4.1", "gpt-4.1-mini", "text-embedding-3-small"] {
		decision.allow with input as fx_model_call(m)
	}
}

test_acme_denies_other_models_for_agents if {
	d := decision with input as fx_model_call("gpt-4-32k")
	d.allow == false
	d.code == "policy_violation"
	d.reasons == ["model 'gpt-4-32k' is not allowed for agent calls of tenant 'acme'"]
	not decision.allow with input as fx_model_call("gpt-4-turbo")
}

test_blocked_model_has_one_reason if {
	d := decision with input as fx_model_call("o1-pro")
	d.allow == false
	d.reasons == ["model 'o1-pro' is blocked for tenant 'acme'"]
}

test_user_initiated_calls_only_gpt_4_turbo if {
	decision.allow with input as fx_user_call("gpt-4-turbo")
	d := decision with input as fx_user_call("gpt-4o")
	d.allow == false
	d.reasons == ["model 'gpt-4o' is not allowed for user-initiated calls of tenant 'acme'"]
}

test_any_models_allowed_for_every_kind if {
	decision.allow with input as fx_call({"subject": {"user": fx_user}, "request": {"operation": "embeddings.create", "model": "text-embedding-3-large"}})
}

test_globex_only_gpt_4o_mini if {
	decision.allow with input as fx_tenant_call("globex", {"request": {"model": "gpt-4o-mini"}})
	d := decision with input as fx_tenant_call("globex", {"request": {"model": "gpt-4o"}})
	d.reasons == ["model 'gpt-4o' is not allowed for agent calls of tenant 'globex'"]
	not decision.allow with input as fx_tenant_call("globex", {"request": {"model": "gpt-4o-mini-2024-07-18"}})
}

test_unknown_tenant_uses_default_model_lists if {
	allowed_models == ["gpt-4o-mini*", "gpt-4.1-mini*", "gpt-4.1-nano*", "text-embedding-3-*", "omni-moderation-*"] with input as fx_tenant_call("initech", {})
}

test_no_model_lists_in_data_means_no_models if {
	allowed_models == [] with data.sidecar.defaults as fx_defaults_set("/models", {}) with data.sidecar.tenants as fx_tenants_set("/acme/models", {})
	denied_models == [] with data.sidecar.defaults as fx_defaults_set("/models", {}) with data.sidecar.tenants as fx_tenants_set("/acme/models", {})
}

test_model_required if {
	d := decision with input as fx_model_call(null)
	d.reasons == ["operation 'responses.create' requires a model"]
	not decision.allow with input as object.remove(fx_agent_call, ["request"])
}

test_model_not_required_for_files if {
	decision.allow with input as fx_call({"request": {"operation": "files.list", "model": null}})
}

test_model_must_be_a_string if {
	d := decision with input as fx_model_call(["gpt-4o"])
	d.reasons == [
		"operation 'responses.create' requires a model",
		"the request's model must be a string",
	]
}

test_model_exempt_operations if {
	decision.allow with input as fx_call({"request": {"operation": "models.retrieve", "model": "o1-pro"}})
	not decision.allow with input as fx_call({"request": {"operation": "files.create", "model": "o1-pro"}})
}

test_max_output_tokens_caps if {
	max_output_tokens == 4096 with input as fx_agent_call
	max_output_tokens == 8192 with input as fx_model_call("gpt-4o-mini")
	max_output_tokens == 4096 with input as fx_call({"request": {"operation": "chat.completions.create"}})
	max_output_tokens == 1024 with input as fx_tenant_call("globex", {"request": {"model": "gpt-4o-mini"}})
}

test_max_output_tokens_null_when_not_generating if {
	max_output_tokens == null with input as fx_call({"request": {"operation": "embeddings.create", "model": "text-embedding-3-small"}})
	max_output_tokens == null with input as fx_call({"request": {"operation": "files.list", "model": null}})
}

test_max_output_tokens_smallest_matching_model_cap if {
	max_output_tokens == 100 with input as fx_model_call("gpt-4o-mini") with data.sidecar.tenants as fx_tenants_set("/acme/max_output_tokens_by_model", {"gpt-4o*": 200, "gpt-4o-mini*": 100, "o3*": 50, "gpt-4o-m*": "x"})
}

test_max_output_tokens_null_or_bad_means_no_cap if {
	max_output_tokens == null with input as fx_agent_call with data.sidecar.tenants as fx_tenants_set("/acme/max_output_tokens", null)
	max_output_tokens == null with input as fx_agent_call with data.sidecar.tenants as fx_tenants_set("/acme/max_output_tokens", "lots")
	max_output_tokens == 4096 with input as fx_model_call("gpt-4o-mini") with data.sidecar.tenants as fx_tenants_set("/acme/max_output_tokens_by_model", [])
}
