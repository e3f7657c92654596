"""The `edge-spec` command (also `python -m edge_spec`): Ctrl-C at any moment exits with status 130 and
one line, while the command's modules (numpy, llama.cpp) are still being imported too."""

import sys


def main() -> None:
    try:
        from edge_spec.cli import main as command
    except KeyboardInterrupt:
        print("edge-spec: interrupted", file=sys.stderr)
        sys.exit(130)
    command()


if __name__ == "__main__":
    main()
