"""The HTTP layer: create_app, auth, error rendering and routes by area."""
