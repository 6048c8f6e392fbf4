"""Per-tenant token budgets and rate limits: the `BudgetStore` interface, in Redis or in process memory."""
