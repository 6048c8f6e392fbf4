# Generic helpers shared by every concern of the sidecar policy.
#
# Portability note: this bundle is evaluated both by OPA and by the embedded
# engine regorus, and their decisions must be identical. Regorus raises an
# error where OPA makes an expression undefined (a builtin called with a wrong
# argument type, `some x in <not a collection>`), so every builtin call and
# every iteration over input or data is guarded by a type check first.
#
# Second rule: never negate a call whose arguments may be undefined, e.g.
# `not is_string(model)` when the rule `model` may have no value. OPA lifts
# the arguments out of the negation, so the whole body fails; regorus treats
# the negation as true. Negate a helper rule instead (`not model_given`).
package sidecar

# pattern_match(pattern, value) is true when the string value matches the
# pattern. Patterns are deliberately simple (no glob library, so both engines
# agree byte for byte):
#   "gpt-4o-mini"  exact match
#   "gpt-4o*"      prefix match ("*" alone matches everything)
#   "*-mini"       suffix match
pattern_match(pattern, value) if {
	is_string(pattern)
	is_string(value)
	_pm(pattern, value)
}

_pm(pattern, value) if pattern == value

else if {
	endswith(pattern, "*")
	startswith(value, trim_suffix(pattern, "*"))
} else if {
	startswith(pattern, "*")
	endswith(value, trim_prefix(pattern, "*"))
}

# any_match(patterns, value) is true when value matches one of the patterns
# (an array of pattern strings; anything else matches nothing). One body with
# an else-chain helper: regorus evaluates it about a third faster than three
# pattern_match bodies per pattern, with the same meaning.
any_match(patterns, value) if {
	is_array(patterns)
	is_string(value)
	some pat in patterns
	is_string(pat)
	_pm(pat, value)
}

# string_list(x) is x when it is an array, [] otherwise.
string_list(x) := x if {
	is_array(x)
} else := []
