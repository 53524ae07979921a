"""The spec's walk through a run: every function in pipeline/ that receives the JobSpec (as an argument,
or as `self.spec` of the object it is called on), in the order the driver calls them, and how often
the walk climbs back up (the next function that receives the spec is shallower than the previous
one: the walk went back up past the previous one's caller).

    python -m tools.spec_walk SPEC [--set key=value ...]
    PYTHONPATH=/tmp/before python -m tools.spec_walk SPEC     # another checkout's pipeline

Runs `python -m pipeline run SPEC --fresh` in this process under a profiler hook (sys.setprofile) and
prints each stop as `depth module.function`, then the counts: stops, modules, climbs. Only the
driver's process is seen (the Ray workers' calls are not the driver's walk).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

def walk(argv: list[str]) -> list[tuple[int, str]]:
    import pipeline
    from pipeline.__main__ import main
    from pipeline.spec import JobSpec

    package = str(Path(pipeline.__file__).resolve().parent)  # whichever checkout is on the path
    stops: list[tuple[int, str]] = []
    depth = 0

    def holds_spec(frame) -> bool:
        code = frame.f_code
        if isinstance(frame.f_locals.get("self"), JobSpec):
            return False  # the spec's own methods are not stops of its walk
        for name in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]:
            value = frame.f_locals.get(name)
            if isinstance(value, JobSpec) or isinstance(getattr(value, "spec", None), JobSpec):
                return True
        return False

    def profile(frame, event, arg):
        nonlocal depth
        if event == "call":
            depth += 1
            if frame.f_code.co_filename.startswith(package) and holds_spec(frame):
                module = Path(frame.f_code.co_filename).stem
                stops.append((depth, f"{module}.{frame.f_code.co_qualname}"))
        elif event == "return":
            depth -= 1

    sys.setprofile(profile)
    try:
        main(["run", *argv, "--fresh"])
    finally:
        sys.setprofile(None)
    return stops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    stops = walk([args.spec, *(x for kv in args.set for x in ("--set", kv))])
    # Each function is a stop once, at its first call: a loop (over stage descriptions, over the
    # stream's batches) visits nothing new.
    seen: set[str] = set()
    stops = [s for s in stops if not (s[1] in seen or seen.add(s[1]))]
    base = min(d for d, _ in stops)
    # A climb: the next stop is shallower than the last, so the walk went back up past the last stop's
    # caller (a sibling call at the same depth, the flow handing on to its next room, is not one).
    climbs = sum(d1 < d0 for (d0, _), (d1, _) in zip(stops, stops[1:]))
    for depth, name in stops:
        print(f"{'  ' * (depth - base)}{name}", file=sys.stderr)
    modules = {name.split(".")[0] for _, name in stops}
    # The same counted between rooms: consecutive stops in one module are one visit, at its shallowest.
    visits: list[tuple[int, str]] = []
    for depth, name in stops:
        module = name.split(".")[0]
        if visits and visits[-1][1] == module:
            visits[-1] = (min(visits[-1][0], depth), module)
        else:
            visits.append((depth, module))
    room_climbs = sum(d1 < d0 for (d0, _), (d1, _) in zip(visits, visits[1:]))
    print(f"{len(stops)} stops in {len(modules)} modules; the walk climbs back up {climbs} times between "
          f"functions, {room_climbs} times between modules ({len(visits)} visits)", file=sys.stderr)


if __name__ == "__main__":
    main()
