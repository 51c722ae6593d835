"""Kakugo pipeline: spec, language registry, artifact store, stages and the local runner.

Plain Python with no Kubernetes imports, so the same code runs in a Job, in `kakugo run`
and in tests.
"""
