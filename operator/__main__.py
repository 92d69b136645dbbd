"""``python -m synthrec.operator`` runs the operator (same as ``synthrec operator``)."""

from synthrec.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["operator", *__import__("sys").argv[1:]]))
