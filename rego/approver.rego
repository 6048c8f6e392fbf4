# The approver check, queried at data.sidecar.approver when someone approves
# or denies an approval (sidecar approvals approve|deny, or the admin API).
# Input: {"action", "approver": {"sub", "tenant", "groups", "issuer"},
# "approval": {"id", "tenant", "sub", "operation", "approvers", ...}}.
#
# An approver may act when an entry of approval.approvers (named by the
# decision that asked for the approval) matches them:
#   "group:<name>"  one of the approver's groups
#   "user:<sub>"    the approver's sub
# and, unless approval.allow_self_approval is true in data, they did not make
# the request themselves. An approver who belongs to a tenant acts only on
# that tenant's approvals; approvers without a tenant (platform approvers)
# act on any tenant's.
package sidecar

default approver := {"allow": false, "reasons": ["the approver check could not decide"]}

approver := {"allow": count(approver_deny) == 0, "reasons": sort(approver_deny)} if {
	is_object(input.approver)
	is_object(input.approval)
}

approver_deny contains "the approval names no approvers" if {
	count(approval_approvers) == 0
}

approver_deny contains msg if {
	count(approval_approvers) > 0
	not approver_listed
	msg := sprintf("'%v' is not among the approvers %v", [input.approver.sub, approval_approvers])
}

approver_deny contains "approvers may not decide their own requests" if {
	input.approver.sub == input.approval.sub
	not self_approval_allowed
}

approver_deny contains msg if {
	is_string(input.approver.tenant)
	input.approver.tenant != ""
	input.approver.tenant != input.approval.tenant
	msg := sprintf("approvers of tenant '%v' cannot act on approvals of another tenant", [input.approver.tenant])
}

approval_approvers := [a | some a in input.approval.approvers; is_string(a)]

approver_listed if {
	some entry in approval_approvers
	approver_matches(entry)
}

approver_matches(entry) if {
	startswith(entry, "group:")
	some group in input.approver.groups
	group == substring(entry, 6, -1)
}

approver_matches(entry) if {
	startswith(entry, "user:")
	input.approver.sub == substring(entry, 5, -1)
}

self_approval_allowed if data.sidecar.defaults.approval.allow_self_approval == true
