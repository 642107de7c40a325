"""Exit non-zero unless the full-size models have the expected parameter counts (takes ~2 s).

Usage: python tests/models/check_params.py
"""

import sys

from spheroid import check_params

if __name__ == "__main__":
    errors = check_params()
    if errors:
        sys.exit("parameter count check failed:\n  " + "\n  ".join(errors))
    print("all parameter counts match")
