"""The Kakugo Kubernetes operator (Kopf). Import name `kakugo_operator`; the folder is
`operator/` in the repository, which must never be importable as the stdlib `operator`."""
