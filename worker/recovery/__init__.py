"""Recovery apart from the stream worker: drain a partition, read the ledger, reconcile, restore."""
