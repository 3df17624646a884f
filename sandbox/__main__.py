"""`python -m sandbox <command>`: serve, build-solution (the emulator of Microsoft's cloud; demo and bench are in tools/).

Owns only the command table; each command's `main` lives in the module the table names.
"""

import sys
from importlib import import_module

COMMANDS = {
    "serve": ("sandbox.http.server", "Serve Entra + Dataverse + Partner Center over HTTPS until interrupted"),
    "build-solution": ("sandbox.solution_zip", "Write a representative Lead Writer managed solution zip"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m sandbox <command> [options]\n\ncommands:", file=sys.stderr)
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:15} {text}", file=sys.stderr)
        return 2
    module = import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
