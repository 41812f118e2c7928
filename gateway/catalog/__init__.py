"""Definitions: templates and activities, their store in Postgres, the operators' changes."""
