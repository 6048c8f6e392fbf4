package sidecar

fx_op_call(op) := fx_call({"request": {"operation": op, "model": null}})

test_common_operations_allowed if {
	every op in [
		"responses.retrieve", "responses.input_items", "responses.delete",
		"models.list", "models.retrieve", "files.create", "files.list",
		"files.retrieve", "files.delete", "uploads.parts.create", "traces.ingest",
		"vector_stores.create", "vector_stores.files.list", "conversations.create",
		"conversations.items.list", "fine_tuning.jobs.list", "fine_tuning.jobs.cancel",
		"batches.list", "batches.retrieve", "audio.speech.create", "images.generate",
	] {
		d := decision with input as fx_op_call(op)
		d.allow == true
		d.require_approval == false
	}
}

test_model_operations_allowed if {
	every op in ["responses.create", "chat.completions.create", "embeddings.create", "moderations.create"] {
		decision.allow with input as fx_call({"request": {"operation": op, "model": "gpt-4o-mini"}})
	}
}

test_unknown_operation_denied if {
	d := decision with input as fx_op_call("unknown")
	d.allow == false
	d.reasons == ["unrecognised operation: the method and path are not a known OpenAI API call"]
}

test_missing_or_bad_operation_is_unknown if {
	operation == "unknown" with input as {}
	operation == "unknown" with input as fx_call({"request": {"operation": ""}})
	operation == "unknown" with input as fx_call({"request": {"operation": ["responses.create"]}})
}

test_admin_operations_denied if {
	d := decision with input as fx_op_call("organization.users.list")
	d.allow == false
	d.reasons == ["operation 'organization.users.list' is an OpenAI admin API call; admin operations are never allowed through the sidecar"]
	decision.allow == false with input as fx_op_call("organization")
}

test_admin_denied_even_if_data_allows_it if {
	d := decision with input as fx_op_call("organization.api_keys.create") with data.sidecar.tenants as fx_tenants_set("/acme/operations", {"allowed": ["*"]})
	d.allow == false
	count(d.reasons) == 1
}

test_realtime_client_secrets_denied if {
	d := decision with input as fx_op_call("realtime.client_secrets.create")
	d.allow == false
	d.reasons == ["operation 'realtime.client_secrets.create' is not allowed: realtime sessions and client secrets connect to OpenAI directly and would bypass the sidecar"]
	decision.allow == false with input as fx_op_call("realtime.sessions.create") with data.sidecar.tenants as fx_tenants_set("/acme/operations", {"allowed": ["*"]})
	decision.allow == false with input as fx_op_call("realtime")
}

test_operation_not_in_allowlist_denied if {
	d := decision with input as fx_op_call("evals.create")
	d.allow == false
	d.reasons == ["operation 'evals.create' is not allowed for tenant 'acme'"]
	decision.allow == false with input as fx_op_call("models.delete")
}

test_tenant_allowlist_replaces_default if {
	decision.allow with input as fx_op_call("evals.create") with data.sidecar.tenants as fx_tenants_set("/acme/operations", {"allowed": ["evals.*"]})
	not decision.allow with input as fx_op_call("files.list") with data.sidecar.tenants as fx_tenants_set("/acme/operations", {"allowed": ["evals.*"]})
}

test_tenant_denied_operations if {
	d := decision with input as fx_tenant_call("globex", {"request": {"operation": "fine_tuning.jobs.create", "model": "gpt-4o-mini"}})
	d.allow == false
	d.reasons == ["operation 'fine_tuning.jobs.create' is disabled for tenant 'globex'"]
	d.require_approval == false
	decision.allow with input as fx_tenant_call("globex", {"request": {"operation": "files.list", "model": null}})
}

test_no_allowlist_in_data_denies_everything if {
	allowed_operations == [] with data.sidecar.defaults as fx_defaults_set("/operations", {})
	not decision.allow with input as fx_op_call("files.list") with data.sidecar.defaults as fx_defaults_set("/operations", {})
	tenant_denied_operations == [] with data.sidecar.defaults as fx_defaults_set("/operations", {})
}
