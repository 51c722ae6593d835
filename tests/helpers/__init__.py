"""Test helpers, importable as `tests.helpers.<module>`: tiny models, the scripted teacher
server, an S3 server, the packaging tools."""
