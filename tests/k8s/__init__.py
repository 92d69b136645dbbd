"""Kubernetes test infrastructure: an API server emulator (a kmock subclass) as strict as kube-apiserver for
synthrec's resources, a fake kubelet plus Job controller that runs Jobs as local processes, and a small async
REST client.

- emulator.py: the API server (storage, watches, selectors, GC, discovery, OpenAPI v3, tables);
- crd_rules.py, cel_static.py: kube-apiserver's validation of CRDs (structural schemas, CEL compile and cost);
- schema_validation.py, custom_resources.py: custom resources (pruning, defaulting, fieldValidation,
  schema and CEL validation, status subresource, printer columns);
- apply.py: server-side apply and managedFields; admission.py: Job/Pod/Secret defaulting and validation;
- DIFFERENCES.md: what still differs from kube-apiserver, and why it does not matter.

The fixtures that put them together live in tests/harness/k8s.py.
"""
