package sidecar

fx_approval := {
	"id": "apr_1", "tenant": "acme", "sub": "support-bot", "operation": "batches.create",
	"approvers": ["group:ml-leads", "user:alice"],
}

fx_approver(sub, tenant, groups) := {"action": "approve", "approver": {"sub": sub, "tenant": tenant, "groups": groups}, "approval": fx_approval}

test_group_member_may_approve if {
	approver == {"allow": true, "reasons": []} with input as fx_approver("bob", "acme", ["ml-leads"])
}

test_named_user_may_approve if {
	approver.allow with input as fx_approver("alice", null, [])
}

test_unlisted_approver_refused if {
	d := approver with input as fx_approver("mallory", "acme", ["staff"])
	d.allow == false
	d.reasons == ["'mallory' is not among the approvers [\"group:ml-leads\", \"user:alice\"]"]
}

test_requester_cannot_approve_itself if {
	inp := object.union(fx_approver("support-bot", "acme", ["ml-leads"]), {})
	d := approver with input as inp
	d.reasons == ["approvers may not decide their own requests"]
	approver.allow with input as inp with data.sidecar.defaults.approval.allow_self_approval as true
}

test_other_tenant_refused if {
	d := approver with input as fx_approver("bob", "globex", ["ml-leads"])
	d.reasons == ["approvers of tenant 'globex' cannot act on approvals of another tenant"]
}

test_no_approvers_named if {
	inp := {"approver": {"sub": "bob", "groups": ["ml-leads"]}, "approval": {"sub": "x", "approvers": []}}
	d := approver with input as inp
	d.reasons == ["the approval names no approvers"]
}

test_malformed_input_refused if {
	approver.allow == false with input as {}
	approver.allow == false with input as {"approver": "bob", "approval": {}}
}
