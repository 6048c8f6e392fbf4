# Authentication: the sidecar authenticates callers before it asks the
# policy, so these rules are defence in depth. Anything but
# input.subject.authenticated == true is denied, and an x-tenant-id header
# (if forwarded to the policy) must name the caller's own tenant.
package sidecar

authenticated if input.subject.authenticated == true

deny contains "caller is not authenticated" if {
	not authenticated
}

deny contains msg if {
	hdr := input.request.headers["x-tenant-id"]
	is_string(hdr)
	hdr != tenant_name
	msg := sprintf("x-tenant-id header '%s' does not match the caller's tenant '%s'", [hdr, tenant_display])
}
