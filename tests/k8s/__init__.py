"""Kubernetes test infrastructure: an API server emulator (a kmock subclass), a fake kubelet plus Job
controller that runs Jobs as local processes, and a small async REST client.

The fixtures that put them together live in tests/harness/k8s.py.
"""
