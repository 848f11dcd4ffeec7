"""Kubernetes plumbing: the shared API client and informers."""
