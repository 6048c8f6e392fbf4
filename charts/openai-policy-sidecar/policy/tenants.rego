# Tenant resolution and configuration lookup.
#
# Configuration lives in data.json under data.sidecar:
#   data.sidecar.defaults          settings every tenant inherits
#   data.sidecar.tenants[<name>]   per-tenant overrides (same shape as defaults)
#
# A setting is taken from the tenant when the tenant defines it (an explicit
# null counts as defined, e.g. "rate_limit": null switches rate limiting off
# for that tenant) and from defaults otherwise. Nested settings are merged one
# level deep: for "models", "operations", "approval", "tools", "budget" and
# "mask" each sub-key is looked up separately, so a tenant that only sets
# models.agent still inherits models.any, models.deny and models.expensive.
#
# Unknown tenants: a caller whose subject.tenant is not a key of
# data.sidecar.tenants is denied ("unknown tenant '<name>'"), unless
# data.sidecar.defaults.fallback_tenant names an existing tenant; then that
# tenant's configuration is used for the caller (the caller keeps its own
# tenant name for budgets and audit). The shipped data sets no fallback.
package sidecar

cfg_defaults := d if {
	d := data.sidecar.defaults
	is_object(d)
} else := {}

cfg_tenants := t if {
	t := data.sidecar.tenants
	is_object(t)
} else := {}

# The caller's tenant name ("" when the subject carries none).
tenant_name := t if {
	t := input.subject.tenant
	is_string(t)
} else := ""

# How the tenant is written in reasons.
tenant_display := tenant_name if {
	tenant_name != ""
} else := "<none>"

# The key of data.sidecar.tenants whose configuration applies (undefined when
# neither the caller's tenant nor a fallback tenant is configured).
tenant_key := tenant_name if {
	tenant_name != ""
	is_object(cfg_tenants[tenant_name])
} else := fb if {
	tenant_name != ""
	fb := cfg_defaults.fallback_tenant
	is_string(fb)
	is_object(cfg_tenants[fb])
}

tenant_known if tenant_key

# The configuration object of the tenant ({} when unknown).
tenant_cfg := cfg_tenants[tenant_key] if {
	tenant_key
} else := {}

# setting(key): tenant value, else defaults value; undefined when neither has it.
setting(key) := val if {
	val := tenant_cfg[key]
} else := val if {
	val := cfg_defaults[key]
}

# setting2(key, sub): the same for a second-level key such as ("models", "agent").
setting2(key, sub) := val if {
	val := tenant_cfg[key][sub]
} else := val if {
	val := cfg_defaults[key][sub]
}

deny contains "caller has no tenant" if {
	tenant_name == ""
}

deny contains msg if {
	tenant_name != ""
	not tenant_known
	msg := sprintf("unknown tenant '%s'", [tenant_name])
}
