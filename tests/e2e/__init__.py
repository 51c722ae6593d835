"""End-to-end tests on a real API server."""
