"""One-time codes: their format and keyed hash, batches and redeems."""
