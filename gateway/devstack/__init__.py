"""Launchers for throwaway local Valkey and PostgreSQL servers (tests, load runs, local development)."""
