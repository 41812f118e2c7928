"""Scripts and their plumbing: the registry, the runner and its transport, the fence, the check against the
ledger, durability."""
