package sidecar

test_acme_mask_rules if {
	mask == {
		"request": {"entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON"], "operator": "placeholder"},
		"response": {"entities": ["CREDIT_CARD", "US_SSN", "IBAN_CODE"], "operator": "redact"},
		"restore": true,
	} with input as fx_agent_call
}

test_globex_mask_rules if {
	m := mask with input as fx_tenant_call("globex", {})
	m.request.operator == "replace"
	m.request.entities == ["EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON", "LOCATION", "IP_ADDRESS", "IBAN_CODE"]
	m.response.entities == ["EMAIL_ADDRESS", "PHONE_NUMBER", "PERSON", "CREDIT_CARD", "US_SSN"]
	m.restore == false
}

test_default_mask_rules if {
	mask == {
		"request": {"entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE"], "operator": "placeholder"},
		"response": {"entities": ["CREDIT_CARD", "US_SSN", "IBAN_CODE"], "operator": "redact"},
		"restore": true,
	} with input as {}
}

test_invalid_mask_data_falls_back if {
	m := mask with input as fx_agent_call with data.sidecar.tenants as fx_tenants_set("/acme/mask", {"request": {"entities": "EMAIL", "operator": "shred"}, "restore": "yes"})
	m.request == {"entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE"], "operator": "placeholder"}
	m.restore == true
}

test_mask_without_any_data if {
	mask == {
		"request": {"entities": [], "operator": "placeholder"},
		"response": {"entities": [], "operator": "redact"},
		"restore": true,
	} with input as fx_agent_call with data.sidecar.defaults as fx_defaults_set("/mask", null) with data.sidecar.tenants as fx_tenants_set("/acme/mask", null)
}

test_mask_operator_from_defaults if {
	mask_operator("response") == "hash" with input as fx_agent_call with data.sidecar.defaults as fx_defaults_set("/mask/response/operator", "hash")
}

test_credit_card_denied_by_default if {
	d := decision with input as fx_call({"pii": {"request": {"CREDIT_CARD": 1}}})
	d.allow == false
	d.code == "pii_violation"
	d.reasons == ["the request contains CREDIT_CARD, which tenant 'acme' does not allow to be sent"]
}

test_globex_denies_ssn if {
	d := decision with input as fx_tenant_call("globex", {"request": {"model": "gpt-4o-mini"}, "pii": {"request": {"US_SSN": 2, "CREDIT_CARD": 1}}})
	d.code == "pii_violation"
	d.reasons == [
		"the request contains CREDIT_CARD, which tenant 'globex' does not allow to be sent",
		"the request contains US_SSN, which tenant 'globex' does not allow to be sent",
	]
	decision.allow with input as fx_call({"pii": {"request": {"US_SSN": 2}}})
}

test_zero_or_bad_counts_do_not_deny if {
	decision.allow with input as fx_call({"pii": {"request": {"CREDIT_CARD": 0}}})
	decision.allow with input as fx_call({"pii": {"request": {"CREDIT_CARD": "1"}}})
	decision.allow with input as fx_call({"pii": {"request": ["CREDIT_CARD"]}})
}

test_tenant_can_allow_credit_cards if {
	decision.allow with input as fx_call({"pii": {"request": {"CREDIT_CARD": 3}}}) with data.sidecar.tenants as fx_tenants_set("/acme/deny_entities", [])
	deny_entities == [] with data.sidecar.defaults as fx_defaults_set("/deny_entities", "CREDIT_CARD") with input as fx_agent_call
	deny_entities == [] with data.sidecar.defaults as fx_defaults_set("/deny_entities", null) with input as {}
}

test_non_string_entity_in_data_ignored if {
	decision.allow with input as fx_call({"pii": {"request": {"CREDIT_CARD": 3}}}) with data.sidecar.tenants as fx_tenants_set("/acme/deny_entities", [1, null])
}
