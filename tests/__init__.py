"""The test suites (a package, so that helpers import as `tests.helpers...`)."""
