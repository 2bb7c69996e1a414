import sys
from pathlib import Path

# The tests import their shared helpers (harness.py) by module name.
sys.path.insert(0, str(Path(__file__).parent))
