# Approvals: high-risk operations are allowed only after a human approved the
# identical request. The decision then says allow: true with
# require_approval: true and the sidecar holds the call (403
# approval_required) until an approver listed in `approvers` approves it;
# once input.approval.status == "approved", require_approval is false.
#
#   approval.operations  patterns of high-risk operations (fine-tuning jobs,
#                        batches, file and vector-store file downloads,
#                        vector-store file batches, uploads)
#   approval.approvers   who may approve, e.g. ["group:ml-leads"]
#
# A call that is denied anyway never asks for approval.
package sidecar

approval_operations := string_list(val) if {
	val := setting2("approval", "operations")
} else := []

high_risk if any_match(approval_operations, operation)

approved if input.approval.status == "approved"

default require_approval := false

require_approval if {
	high_risk
	not approved
	count(deny) == 0
}

approvers := string_list(val) if {
	high_risk
	val := setting2("approval", "approvers")
} else := []
