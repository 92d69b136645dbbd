"""The test harness: the helpers and fixtures tests and benchmarks share, loaded as a pytest plugin
(tests/conftest.py names this package; it names its fixture modules below). Test modules hold tests only.

- ``k8s``: the API emulator served over HTTP, a kubeconfig for it, ``wait_for`` (waits on a condition,
  never a fixed sleep), the operator running in-process;
- ``operator``: the synthrec operator against the emulator with the fake kubelet (``operator_harness``),
  resource bodies, fake workers that write typed summaries, the recorded API calls;
- ``s3``: a real S3 protocol server (moto) on 127.0.0.1 and a fault-injecting proxy (``s3proxy``);
- ``models``: the tiny random-weight models, built once per session;
- ``toyworld``: the toy world (trained tiny models and drawn data, ``synthrec.toyworld``), built once;
- ``stages``: a small drawn dataset and stages run in-process; ``fake_worker``: an instant stand-in for
  ``python -m synthrec.workers`` for the local runner's tests;
- ``pretraining``: drawn data for pre-training and transfer (a reduced dataset written by the real
  shard writer and reduce stage, an ImageFolder, a VOC folder);
- ``artifacts``: valid manifests and run metrics for tests that need them without the workers;
- ``chart``, ``pss``: the Helm chart rendered, and the "restricted" Pod Security Standard.
"""

pytest_plugins = [
    "tests.harness.s3",
    "tests.harness.k8s",
    "tests.harness.models",
    "tests.harness.operator",
    "tests.harness.toyworld",
]
