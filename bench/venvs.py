"""The peers' own virtual environments: bench/.venvs/<peer>, with bench/peers/<peer>/requirements.txt installed.

Created on first use with `python3 -m venv` and pip, reinstalled only when the requirements file changes; a peer
whose install fails is reported with why, never fatal (bench/serve.py, bench/optimize.py).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / "peers"
VENVS = BENCH / ".venvs"


def ensure_venv(peer: str, packages: list[str]) -> tuple[Path | None, str]:
    """(its python, "package version ..." of `packages`) or (None, why not)."""
    venv, req = VENVS / peer, PEERS / peer / "requirements.txt"
    python, stamp = venv / "bin" / "python", venv / ".bench-requirements-sha256"
    want = hashlib.sha256(req.read_bytes()).hexdigest()
    if not (python.exists() and stamp.exists() and stamp.read_text() == want):
        print(f"installing {peer} into {venv.relative_to(ROOT)} (pip, a few minutes the first time)", flush=True)
        log = VENVS / f"{peer}-install.log"
        VENVS.mkdir(parents=True, exist_ok=True)
        try:
            with log.open("w") as out:
                if not python.exists():
                    subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)], check=True,
                                   stdout=out, stderr=subprocess.STDOUT, timeout=300)
                subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(req)],
                               check=True, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if not ln.startswith("WARNING: Loc")]
            return None, f"install failed ({e}); {' | '.join(tail[-4:])} (full log: {log.relative_to(ROOT)})"
        stamp.write_text(want)
    code = "import importlib.metadata as m, sys; print(' '.join(p + ' ' + m.version(p) for p in sys.argv[1:]))"
    versions = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, timeout=120)
    if versions.returncode != 0:
        return None, f"its venv is broken: {versions.stderr.strip().splitlines()[-1:]}"
    return python, versions.stdout.strip()
