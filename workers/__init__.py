"""Worker stages (prompts, generate, filter, reduce, train; pretrain and transfer in pretrain/): plain
functions with a thin CLI.

Run as ``python -m synthrec.workers STAGE --task TASK.json``. Workers never import the operator and
never call the Kubernetes API.
"""
