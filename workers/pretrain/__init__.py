"""Pre-training on synthetic data and transfer (the paper's third study, method spec §3; DESIGN §9).

Two distributed stages, started as ``python -m synthrec.workers pretrain|transfer --task FILE``:

- ``task``: the task models (PretrainTask, TransferTask) until the API renders them;
- ``stage``: the entry: launcher (torchrun, exit codes, summary) or rank;
- ``distributed``: the torchrun command (local and multi-node Indexed Job) and the rank's process group;
- ``data``: the WebDataset shard stream (selection, size cap, rank/worker split, shuffle, resume);
- ``augment``: torchvision transforms v2 (supervised, MoCo v2, evaluation; device-side mixup/erasing);
- ``backbones``: timm models, initial weights (scratch, timm tag, hf://, s3://, file://), exports;
- ``recipes``: the standard recipes as defaults and the learning-rate schedule;
- ``moco``: MoCo v2;
- ``checkpoint``: checkpoints that survive preemption;
- ``pretrain``: the pre-training loop and its artifacts (card, backbone, metrics, curve);
- ``transfer``, ``classify``, ``detection``, ``voc``: fine-tuning, linear probe and VOC detection.
"""
