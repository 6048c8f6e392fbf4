package sidecar

test_pattern_exact if {
	pattern_match("gpt-4o-mini", "gpt-4o-mini")
	not pattern_match("gpt-4o-mini", "gpt-4o-mini-2024-07-18")
}

test_pattern_prefix if {
	pattern_match("gpt-4o*", "gpt-4o")
	pattern_match("gpt-4o*", "gpt-4o-mini")
	pattern_match("responses.*", "responses.input_items.list")
	not pattern_match("gpt-4o*", "gpt-4")
	not pattern_match("responses.*", "responses")
}

test_pattern_star_matches_everything if {
	pattern_match("*", "anything")
	pattern_match("*", "")
}

test_pattern_suffix if {
	pattern_match("*-mini", "gpt-4o-mini")
	not pattern_match("*-mini", "gpt-4o")
}

test_pattern_no_glob_semantics if {
	not pattern_match("gpt-?o", "gpt-4o")
	not pattern_match("gpt-*-mini", "gpt-4o-mini")
}

test_pattern_non_strings_never_match if {
	not pattern_match(1, "1")
	not pattern_match("*", 1)
	not pattern_match(null, null)
}

test_any_match if {
	any_match(["a", "b*"], "bc")
	not any_match(["a", "b*"], "c")
	not any_match([], "a")
	not any_match("b*", "bc")
	not any_match({"b*": true}, "bc")
}

test_string_list if {
	string_list(["a"]) == ["a"]
	string_list("a") == []
	string_list(null) == []
	string_list({"a": 1}) == []
}
