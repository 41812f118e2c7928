"""The worker: drains the event streams into Postgres, idempotently, acknowledging only what is committed."""
