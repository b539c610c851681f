"""Hand mutants of the cost model's accounting: each changes one constant or formula; the
fast accounting tests must fail on every one. Prints one line per mutant and the count caught.

    python benchmarks/mutants_costmodel.py

Each mutant is written into its file, the tests run, and the file restored right after."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
MUTANTS = [
    ("costmodel/optimizer.py", "ADAMW_FLOPS_PER_PARAM = 15", "ADAMW_FLOPS_PER_PARAM = 12"),
    ("costmodel/optimizer.py", "SGD_FLOPS_PER_PARAM = 2", "SGD_FLOPS_PER_PARAM = 1"),
    ("costmodel/optimizer.py", "ADAMW_TRANSCENDENTALS_PER_PARAM = 1", "ADAMW_TRANSCENDENTALS_PER_PARAM = 2"),
    ("costmodel/optimizer.py", '{"sgd": 0, "adamw": 2,', '{"sgd": 0, "adamw": 1,'),
    ("costmodel/optimizer.py", "        nbytes = nbytes + p * dtype_bytes(precision.compute_dtype)",
     "        nbytes = nbytes + 0 * p"),
    ("costmodel/optimizer.py", "elementwise_flops(p, 2), 0, elementwise_bytes(p, (p,), g), per_op))",
     "elementwise_flops(p, 1), 0, elementwise_bytes(p, (p,), g), per_op))"),
    ("costmodel/step_ends.py", "TOKEN_ID_BYTES = 4", "TOKEN_ID_BYTES = 8"),
    ("costmodel/step.py", "DEFAULT_MAX_SEQ = 4096", "DEFAULT_MAX_SEQ = 2048"),
    ("costmodel/memory.py", "trainable * dtype_bytes(prec.storage_dtype)",
     "trainable * dtype_bytes(prec.compute_dtype)"),
    ("costmodel/hardware.py", '"float16": 2, "float64": 8', '"float16": 4, "float64": 8'),
    ("costmodel/steptime.py", "UNFITTED = Efficiency(0.75, 0.8, 1.0,", "UNFITTED = Efficiency(0.7, 0.8, 1.0,"),
    ("costmodel/memory.py", "bool(self.need_bytes <= self.capacity_bytes)",
     "bool(self.need_bytes < self.capacity_bytes)"),
]
TESTS = ["tests/costmodel/test_accounting_constants.py", "tests/costmodel/test_fits.py",
         "tests/costmodel/test_model.py", "tests/costmodel/test_step_options.py",
         "tests/analysis/test_presets_defaults.py"]


def main() -> int:
    caught = 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    for path, old, new in MUTANTS:
        f = ROOT / path
        orig = f.read_text()
        assert orig.count(old) == 1, (path, old)
        try:
            f.write_text(orig.replace(old, new))
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p",
                                "no:cacheprovider", *TESTS], cwd=ROOT, capture_output=True, text=True, env=env)
        finally:
            f.write_text(orig)
        failed = r.returncode != 0
        caught += failed
        lines = r.stdout.strip().splitlines()
        first = next((line for line in lines if line.startswith("FAILED")), lines[-1] if lines else "")
        print(("CAUGHT   " if failed else "SURVIVED ") + f"{path}: {new.strip()[:60]!r} -> {first[:120]}",
              flush=True)
    print(f"{caught}/{len(MUTANTS)} mutants caught")
    return 0 if caught == len(MUTANTS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
