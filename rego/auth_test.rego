package sidecar

test_authenticated_subject_allowed if {
	authenticated with input as fx_agent_call
	decision.allow with input as fx_agent_call
}

test_unauthenticated_subject_denied if {
	d := decision with input as fx_call({"subject": {"authenticated": false}})
	d.allow == false
	d.reasons == ["caller is not authenticated"]
}

test_authenticated_must_be_true_not_truthy if {
	every val in ["true", 1, null, {}] {
		d := decision with input as fx_call({"subject": {"authenticated": val}})
		"caller is not authenticated" in d.reasons
	}
}

test_missing_subject_denied if {
	d := decision with input as object.remove(fx_agent_call, ["subject"])
	"caller is not authenticated" in d.reasons
}

test_tenant_header_mismatch_denied if {
	d := decision with input as fx_call({"request": {"headers": {"x-tenant-id": "globex"}}})
	d.allow == false
	d.reasons == ["x-tenant-id header 'globex' does not match the caller's tenant 'acme'"]
}

test_tenant_header_absent_is_fine if {
	decision.allow with input as fx_call({"request": {"headers": {}}})
}
