# Budgets and rate limits.
#
#   budget.limits           {"minute"|"hour"|"day"|"month": tokens}, charged to
#                           subject.tenant by the sidecar. A tenant's limits
#                           object replaces the default one as a whole.
#   budget.expensive_guard  {"windows": ["day"], "min_remaining_percent": 10}:
#                           models matching models.expensive are denied while
#                           less than that share of one of those windows
#                           remains (from input.budget.windows).
#   budget.default_output_tokens
#                           what a reservation counts for the output when
#                           neither the request nor max_output_tokens limits
#                           it: the largest value of the patterns in
#                           budget.default_output_tokens_by_model matching the
#                           model (largest, since a reservation must not be
#                           too small), else budget.default_output_tokens,
#                           else null (the sidecar then uses 4096).
#   rate_limit              {"requests_per_minute": n, "per": "tenant"|"subject"}
#                           or null for none. "per": "subject" counts each
#                           caller of the tenant apart (default: the tenant).
package sidecar

budget_windows := {"minute", "hour", "day", "month"}

budget_limits := {win: n |
	limits := setting2("budget", "limits")
	is_object(limits)
	some win, n in limits
	budget_windows[win]
	is_number(n)
}

model_output_defaults := [n |
	defaults := setting2("budget", "default_output_tokens_by_model")
	is_object(defaults)
	some pat, n in defaults
	is_number(n)
	pattern_match(pat, model)
]

default_output_tokens := max(model_output_defaults) if {
	count(model_output_defaults) > 0
} else := n if {
	n := setting2("budget", "default_output_tokens")
	is_number(n)
} else := null

rate_limit := {"requests_per_minute": n, "per": per} if {
	rl := setting("rate_limit")
	n := rl.requests_per_minute
	is_number(n)
	per := rate_limit_per(rl)
} else := null

rate_limit_per(rl) := rl.per if rl.per in {"tenant", "subject"}

else := "tenant"

expensive_models := string_list(val) if {
	val := setting2("models", "expensive")
} else := []

deny contains msg if {
	any_match(expensive_models, model)
	guard := setting2("budget", "expensive_guard")
	pct := guard.min_remaining_percent
	is_number(pct)
	some win in string_list(guard.windows)
	is_string(win)
	usage := input.budget.windows[win]
	remaining := usage.remaining
	limit := usage.limit
	is_number(remaining)
	is_number(limit)
	limit > 0
	remaining * 100 < limit * pct
	msg := sprintf("model '%s' is marked expensive and less than %v%% of the %s token budget of tenant '%s' remains", [model, pct, win, tenant_display])
}
