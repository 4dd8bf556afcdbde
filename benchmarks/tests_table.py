"""docs/TESTS.md from the output of `bash .ci/run` (or `bash scripts/test.sh`): each tier's count and
time, and pytest's slowest phases (`--durations=30`).

    bash .ci/run 2>&1 | tee ci.log
    python benchmarks/tests_table.py ci.log --host "2-core AMD EPYC (AVX2)" --seconds 1450 [--write docs/TESTS.md]

`--seconds`: the whole run's wall time (setup included), as measured around it.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

DURATION = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+(\S+)")
SUMMARY = re.compile(r"^=* ?(\d+ passed.*?) in ([\d.]+)s", re.MULTILINE)

HEAD = """# What the tests cost

`bash scripts/test.sh` (what `.ci/run` calls) sets up `.venv`, runs the model-free tier first
(`pytest -m "not model and not interpreter"`: a broken core fails within a minute; Gemma-3-270M
tests stay opt-in, `-m slow`), then the rest,
and prints pytest's 30 slowest phases (`--durations=30`). Rendered by `python
benchmarks/tests_table.py LOG` from a fresh-clone run of `.ci/run`.
"""


def render(log: str, host: str, seconds: float | None) -> str:
    tiers = SUMMARY.findall(log.replace("\r", ""))
    rows = [m.groups() for m in map(DURATION.match, log.splitlines()) if m]
    out = [HEAD, f"On the {host} host, pip's cache and flashhead's ($FLASHHEAD_CACHE: converted models, "
           "SmolLM2's next-token table) warm"
           + (f", the whole run took {seconds / 60:.1f} minutes:" if seconds else ":")]
    names = ["model-free tier", "the rest"] if len(tiers) == 2 else [f"run {i + 1}" for i in range(len(tiers))]
    out += [f"- {n}: {counts}, {float(t) / 60:.1f} minutes" for n, (counts, t) in zip(names, tiers)]
    out += ["", "| seconds | phase | test |", "|---:|---|---|"]
    out += [f"| {float(s):.1f} | {phase} | `{test}` |" for s, phase, test in rows]
    out += ["", "A `setup` row is a fixture built once and shared (a SmolLM2 FlashHead directory, a vLLM "
            "engine, a built benchmark directory): its cost falls on the first test that asks for it. With "
            "flashhead's cache cold, SmolLM2's next-token table (`smollm2_next_dir`) adds about 4 minutes "
            "on the 2-core AVX2 host (252 s: docs/FIDELITY.md, \"Next clusters\").", ""]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("log")
    p.add_argument("--host", required=True)
    p.add_argument("--seconds", type=float)
    p.add_argument("--write", type=Path)
    a = p.parse_args()
    text = render(Path(a.log).read_text(errors="replace"), a.host, a.seconds)
    if a.write:
        a.write.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
