package sidecar

fx_risky_call(op, status) := fx_call({"request": {"operation": op, "model": null}, "approval": {"status": status}})

test_high_risk_operations_need_approval if {
	every op in [
		"fine_tuning.jobs.create", "batches.create", "files.content",
		"vector_stores.files.content", "vector_stores.file_batches.create", "uploads.create",
	] {
		d := decision with input as fx_risky_call(op, "none")
		d.allow == true
		d.require_approval == true
		d.approvers == ["group:ml-leads"]
		d.reasons == []
	}
}

test_fine_tuning_with_model_needs_approval if {
	d := decision with input as fx_call({"request": {"operation": "fine_tuning.jobs.create", "model": "gpt-4o-mini-2024-07-18"}})
	d.allow == true
	d.require_approval == true
}

test_pending_approval_still_required if {
	decision.require_approval with input as fx_risky_call("batches.create", "pending")
	decision.require_approval with input as fx_risky_call("batches.create", "denied")
}

test_approved_request_passes if {
	d := decision with input as fx_risky_call("files.content", "approved")
	d.allow == true
	d.require_approval == false
	d.approvers == ["group:ml-leads"]
}

test_low_risk_operations_need_no_approval if {
	d := decision with input as fx_risky_call("files.list", "none")
	d.require_approval == false
	d.approvers == []
	not high_risk with input as fx_agent_call
}

test_denied_call_never_asks_for_approval if {
	d := decision with input as fx_call({"request": {"operation": "batches.create", "model": null}, "subject": {"authenticated": false}})
	d.allow == false
	d.require_approval == false
}

test_tenant_approvers if {
	d := decision with input as fx_tenant_call("globex", {"request": {"operation": "files.content", "model": null}})
	d.require_approval == true
	d.approvers == ["group:globex-security"]
}

test_approval_list_from_data if {
	decision.require_approval with input as fx_risky_call("files.list", "none") with data.sidecar.tenants as fx_tenants_set("/acme/approval", {"operations": ["files.*"]})
	not decision.require_approval with input as fx_risky_call("batches.create", "none") with data.sidecar.tenants as fx_tenants_set("/acme/approval", {"operations": []})
	approval_operations == [] with data.sidecar.defaults as fx_defaults_set("/approval", {})
	approvers == [] with input as fx_risky_call("batches.create", "none") with data.sidecar.defaults as fx_defaults_set("/approval/approvers", null)
}
