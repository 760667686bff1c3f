"""Create the virtual environment of the peer baselines (``plmkit bench --baselines optimum-ort,openvino``).

    python benchmarks/peers_env.py            # creates .peers-venv beside the repo's pyproject.toml
    python benchmarks/peers_env.py --venv DIR --recreate

The peers are optimum-onnx (ONNX Runtime dynamic INT8) and optimum-intel (OpenVINO INT8 with NNCF).
They live in a virtual environment of their own, never in plmkit's: optimum-intel pins
transformers to a 4.x release and brings OpenVINO and NNCF, none of which plmkit needs at run time.
``plmkit bench`` runs each peer row with this environment's python (``--peer-python``, default
``.peers-venv/bin/python`` in the current directory or beside the plmkit package). It feeds the peer
pre-encoded token ids, so plmkit itself need not be importable there.

torch is installed first, pinned (``torch==2.13.0``, the same release as plmkit's): an open range
would let pip pull a multi-GB CUDA build.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"
PEERS = ["optimum-onnx[onnxruntime]", "optimum-intel[openvino]", "openvino", "nncf"]


def pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=str(ROOT / ".peers-venv"), help="where to create it (default: %(default)s)")
    ap.add_argument("--recreate", action="store_true", help="delete an existing environment first")
    args = ap.parse_args()
    target = Path(args.venv)
    if args.recreate and target.exists():
        shutil.rmtree(target)
    python = target / "bin" / "python"
    if not python.is_file():
        print(f"creating {target}", flush=True)
        venv.EnvBuilder(with_pip=True).create(target)
    try:
        pip(python, TORCH)
        pip(python, *PEERS)
        subprocess.run([str(python), "-c", "import optimum.onnxruntime, optimum.intel, openvino, nncf, transformers; "
                        "print('peers ready: transformers', transformers.__version__, '| openvino', "
                        "openvino.__version__)"], check=True)
    except subprocess.CalledProcessError as e:
        print(f"error: {' '.join(map(str, e.cmd))[:200]} failed (exit {e.returncode})", file=sys.stderr)
        return 1
    print(f"plmkit bench --baselines hf,optimum-ort,openvino finds {python} when run from {ROOT}; "
          f"elsewhere pass --peer-python {python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
